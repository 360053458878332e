"""Reliability of tiling and extraction under real faults: a full disk (RLIMIT_FSIZE in a child process),
SIGTERM/SIGINT to a real `cmamil extract`, two real processes on one output folder, reruns with changed
settings, manifests merged by slide id, bad output places and weights files, per-slide mpp, leftovers."""

from __future__ import annotations

import csv
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cmamil.cli import main
from cmamil.errors import InputError
from cmamil.locks import lock_owner, try_lock
from cmamil.store import bag_info, read_bag
from cmamil.synthetic import Region, SyntheticTissue, write_slide

CMAMIL = [str(Path(sys.executable).with_name("cmamil"))]  # the installed console script
FAST = ["--encoder", "example_cnn", "--tile-px", "32", "--num-workers", "0"]


def slide(path: Path, size: tuple[int, int] = (512, 384), seed: int = 0, mpp: float | None = 0.5) -> Path:
    tissue = SyntheticTissue((Region(40, 40, size[0] - 120, size[1] - 100, "ellipse"),), mpp=0.5, seed=seed)
    return write_slide(path, tissue, size=size, mpp=mpp, smallest_level=256)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four small slides; 'big' has four times the area of the others."""
    folder = tmp_path_factory.mktemp("cohort")
    for i, name in enumerate(("a", "b", "c")):
        slide(folder / f"{name}.tiff", seed=i)
    slide(folder / "big.tiff", size=(1024, 768), seed=3)
    return folder


def manifest(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".lock")))


def limit_file_size(limit: int):
    """A child's pre-exec: files may grow to `limit` bytes; past it writes fail with EFBIG (SIGXFSZ ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("storage", ["h5", "zarr"])
def test_full_disk_fails_the_bag_in_one_line_and_the_batch_goes_on(cohort, tmp_path, storage):
    sizes = {}
    for name in ("a", "big"):
        out = tmp_path / f"probe_{name}"
        assert CliRunner().invoke(main, ["extract", str(cohort / f"{name}.tiff"), "--out", str(out), *FAST,
                                         "--format", storage]).exit_code == 0
        files = [p for p in (out / f"{name}.{storage}").rglob("*") if p.is_file()] or [out / f"{name}.{storage}"]
        sizes[name] = max(p.stat().st_size for p in files)
    limit = (sizes["a"] + sizes["big"]) // 2  # the largest file of 'a' fits, that of 'big' does not
    out = tmp_path / "out"
    args = ["extract", str(cohort / "big.tiff"), str(cohort / "a.tiff"), "--out", str(out), *FAST,
            "--format", storage]
    child = subprocess.run([*CMAMIL, *args], capture_output=True, text=True, timeout=300,
                           preexec_fn=limit_file_size(limit))
    assert child.returncode == 1, child.stderr  # not 139 (a segfault)
    assert "Traceback" not in child.stderr
    failures = [line for line in child.stderr.splitlines() if line.startswith("failed: ")]
    assert failures == [f"failed: big: cannot write {out / f'big.{storage}'}: File too large; the file-size limit "
                        "(ulimit -f) was reached; raise it and rerun (finished work is kept)"]
    rows = manifest(out / "extract_manifest.csv")
    assert rows["big"]["status"] == "failed" and rows["a"]["status"] == "done"
    assert sorted(p.name for p in out.iterdir()) == ["a." + storage, "extract_manifest.csv"]  # no temporary file
    again = CliRunner().invoke(main, args)  # space freed: the rerun extracts the failed bag, skips the other
    assert again.exit_code == 0, again.output
    assert "2 bags: 1 extracted, 1 skipped" in again.stdout
    assert manifest(out / "extract_manifest.csv")["a"]["seconds"] == rows["a"]["seconds"]


def test_random_weights_are_seeded_and_reruns_with_other_settings_are_refused(cohort, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        result = CliRunner().invoke(main, ["extract", str(cohort / "a.tiff"), "--out", str(out), *FAST])
        assert result.exit_code == 0, result.output
    assert result.stderr.count("note: encoder example_cnn runs with random weights (seed 0); pass --weights") == 1
    bags = [read_bag(out / "a.h5") for out in (first, second)]
    for mag in ("5x", "10x", "20x"):
        assert np.array_equal(bags[0].features[mag].numpy(), bags[1].features[mag].numpy())
    attrs = bag_info(first / "a.h5").attrs
    assert attrs["encoder_seed"] == 0 and attrs["extract_settings"]["encoder_seed"] == 0
    assert len(attrs["fingerprint"]) == 64

    weights = tmp_path / "cnn.pth"
    import torch

    from cmamil.models import create_model

    torch.save(create_model("example_cnn").state_dict(), weights)
    changes = {
        ("--seed", "1"): "encoder_seed: 0 → 1",
        ("--weights", str(weights)): "encoder_weights: random → ",
        ("--features-dtype", "float16"): "features_dtype: float32 → float16",
        ("--input-px", "48"): "input_px: null → 48",
        ("--magnifications", "10,20"): "magnifications: ",
        ("--tissue", "fluorescence"): "tissue.method: saturation → fluorescence",
        ("--mpp", "0.4"): "mpp: null → 0.4",
    }
    for change, said in changes.items():
        refused = CliRunner().invoke(main, ["extract", str(cohort / "b.tiff"), "--out", str(first), *FAST, *change])
        assert refused.exit_code == 1, change
        assert refused.stderr.startswith(f"Error: {first} holds features made with other settings ({said}"), \
            refused.stderr
        assert refused.stderr.strip().endswith("extract into another --out, or pass --overwrite to redo the bags")
        assert not (first / "b.h5").exists()
    redo = CliRunner().invoke(main, ["extract", str(cohort / "a.tiff"), "--out", str(first), *FAST, "--seed", "1",
                                     "--overwrite"])
    assert redo.exit_code == 0, redo.output
    assert bag_info(first / "a.h5").attrs["encoder_seed"] == 1
    assert not np.array_equal(read_bag(first / "a.h5").features["20x"].numpy(), bags[0].features["20x"].numpy())


def test_a_rerun_of_one_slide_keeps_the_other_rows_and_the_earlier_timing(cohort, tmp_path):
    out = tmp_path / "out"
    inputs = [str(cohort / f"{name}.tiff") for name in ("a", "b", "c")]
    assert CliRunner().invoke(main, ["extract", *inputs, "--out", str(out), *FAST]).exit_code == 0
    before = manifest(out / "extract_manifest.csv")
    (out / "c.h5").unlink()
    result = CliRunner().invoke(main, ["extract", inputs[0], inputs[2], "--out", str(out), *FAST])
    assert result.exit_code == 0 and "2 bags: 1 extracted, 1 skipped" in result.output
    after = manifest(out / "extract_manifest.csv")
    assert list(after) == ["a", "b", "c"]
    assert after["a"] == before["a"] and after["b"] == before["b"]  # skipped and untouched rows keep their timing
    assert after["c"]["status"] == "done" and after["c"]["tiles_20x"] == before["c"]["tiles_20x"]


def test_locks_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    path = tmp_path / ".x.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cmamil.locks import try_lock; lock = try_lock(sys.argv[1]); "
        "print('held' if lock else 'busy', flush=True); time.sleep(60)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        owner = lock_owner(path)
        assert owner.pid == holder.pid and owner.host == os.uname().nodename
        assert try_lock(path) is None  # a live owner keeps it
    finally:
        holder.kill()
        holder.wait()
    lock = try_lock(path)  # its owner died on this host: taken over at once
    assert lock is not None and lock_owner(path).pid == os.getpid()
    lock.release()
    assert not path.exists()

    path.write_text('{"pid": 1, "host": "another-host", "time": 0}')
    assert try_lock(path) is None  # another host's owner is presumed alive while the lock is fresh
    old = time.time() - 3600
    os.utime(path, (old, old))
    with try_lock(path, stale_after=1800) as taken:
        assert lock_owner(path) == taken.owner
    racers = [subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cmamil.locks import try_lock; time.sleep(float(sys.argv[2]) - time.time()); "
        "lock = try_lock(sys.argv[1]); print(int(lock is not None), flush=True); time.sleep(3)"),
        str(tmp_path / ".race.lock"), str(time.time() + 3)], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    wins = [int(p.communicate(timeout=60)[0]) for p in racers]
    assert sum(wins) == 1  # of processes trying at the same moment, exactly one holds the lock


def test_two_processes_on_one_folder_share_the_bags_and_equal_one_process(cohort, tmp_path):
    alone = tmp_path / "alone"
    assert CliRunner().invoke(main, ["extract", str(cohort), "--out", str(alone), *FAST]).exit_code == 0
    shared = tmp_path / "shared"
    args = [*CMAMIL, "extract", str(cohort), "--out", str(shared), *FAST]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    extracted = [int(out.split(" bags: ")[1].split(" extracted")[0]) for out, _ in outputs]
    assert sum(extracted) == 4  # every bag extracted once, by one of the two
    rows = manifest(shared / "extract_manifest.csv")
    assert sorted(rows) == ["a", "b", "big", "c"] and {r["status"] for r in rows.values()} == {"done"}
    for name in rows:
        one, two = read_bag(alone / f"{name}.h5"), read_bag(shared / f"{name}.h5")
        for mag in one.features:
            assert np.array_equal(one.features[mag].numpy(), two.features[mag].numpy())
    assert leftovers(shared) == []


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_clean_up_and_write_the_manifest(cohort, tmp_path, signum, code):
    out = tmp_path / "out"
    args = [*CMAMIL, "extract", str(cohort / "a.tiff"), str(cohort / "big.tiff"), "--out", str(out), *FAST,
            "--batch-size", "1", "--input-px", "96"]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob(".big.h5.*.tmp")) and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "extraction ended before it could be interrupted"
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert child.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == (f"Error: interrupted by {name}; finished work is kept, rerun the "
                                               "command to resume")
    assert leftovers(out) == []  # temporary file and lock removed
    rows = manifest(out / "extract_manifest.csv")
    assert rows["a"]["status"] == "done"
    assert rows["big"]["status"] == "failed" and rows["big"]["error"].startswith(f"interrupted by {name}")


def test_leftover_temporary_files_of_a_killed_run_are_removed(cohort, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.h5.99999-0badf00d.tmp").write_bytes(b"partial")
    (out / ".extract_manifest.csv.99999.tmp").write_text("slide_id,path")
    (out / ".a.h5.lock").write_text('{"pid": 999999, "host": "%s", "time": 0}' % os.uname().nodename)
    result = CliRunner().invoke(main, ["extract", str(cohort / "a.tiff"), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert leftovers(out) == [] and (out / "a.h5").exists()


@pytest.mark.parametrize("command", ["tile", "extract"])
def test_unusable_output_places_are_one_line(cohort, tmp_path, command):
    (tmp_path / "file").write_text("")
    extra = FAST if command == "extract" else ["--tile-px", "32"]
    for out, reason in ((tmp_path / "file" / "out", "Not a directory"), (Path("/proc/cmamil-out"), "")):
        result = CliRunner().invoke(main, [command, str(cohort / "a.tiff"), "--out", str(out), *extra])
        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: cannot write {out}: {reason}") and len(result.stderr.splitlines()) == 1


def test_corrupt_weights_file_is_one_line(cohort, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    result = CliRunner().invoke(main, ["extract", str(cohort / "a.tiff"), "--out", str(tmp_path / "out"),
                                       "--encoder", "timm:resnet18", "--weights", str(bad), "--tile-px", "32",
                                       "--num-workers", "0"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: weights file '{bad}' cannot be read (SafetensorError: ")
    assert len(result.stderr.splitlines()) == 1


def test_slide_table_mpp_is_honoured_and_ids_are_checked(cohort, tmp_path):
    bare = slide(tmp_path / "bare.tiff", mpp=None)
    table = tmp_path / "slides.csv"
    table.write_text(f"path,slide_id,mpp\n{bare},bare,0.5\n{cohort / 'a.tiff'},../evil,\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(table), "--out", str(out), *FAST])
    assert result.exit_code == 1
    rows = manifest(out / "extract_manifest.csv")
    assert rows["bare"]["status"] == "done"
    attrs = bag_info(out / "bare.h5").attrs
    assert attrs["mpp"] == 0.5 and attrs["mpp_source"] == "user" and attrs["extract_settings"]["slide_mpp"] == 0.5
    assert rows["../evil"]["error"].startswith("invalid slide id '../evil'")
    tiles = tmp_path / "tiles"
    assert CliRunner().invoke(main, ["tile", str(table), "--out", str(tiles), "--tile-px", "32"]).exit_code == 1
    assert bag_info(tiles / "bare.h5").attrs["mpp_source"] == "user"
    table.write_text(f"path,mpp\n{bare},abc\n")
    with pytest.raises(InputError, match="line 2: mpp 'abc' is not a positive number"):
        from cmamil.extract.batch import collect_slides

        collect_slides([table])


def test_tissue_changes_are_refused_for_tile_and_extract_with_coords(cohort, tmp_path):
    tiles = tmp_path / "tiles"
    first = CliRunner().invoke(main, ["tile", str(cohort / "a.tiff"), "--out", str(tiles), "--tile-px", "32"])
    assert first.exit_code == 0
    again = CliRunner().invoke(main, ["tile", str(cohort / "a.tiff"), "--out", str(tiles), "--tile-px", "32",
                                      "--tissue", "fluorescence"])
    assert again.exit_code == 1
    expected = "tissue settings method 'saturation'; tile with --overwrite to re-tile"
    assert expected in manifest(tiles / "tile_manifest.csv")["a"]["error"]
    assert again.stderr.startswith(f"failed: a: {tiles / 'a.h5'} was tiled with tissue settings")
    out = tmp_path / "feats"
    refused = CliRunner().invoke(main, ["extract", str(cohort / "a.tiff"), "--out", str(out), "--coords", str(tiles),
                                        *FAST, "--tissue", "fluorescence"])
    assert refused.exit_code == 1
    assert "was tiled with tissue settings method 'saturation'; extract with the same options" in \
        manifest(out / "extract_manifest.csv")["a"]["error"]


def test_a_label_row_with_a_path_for_an_id_is_an_invalid_slide_id(tmp_path):
    from cmamil.data.labels import read_labels

    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n../s1,a\ns2,b\ns3,a\n")
    with pytest.raises(InputError, match=r"line 2 \(../s1\): invalid slide id '../s1'"):
        read_labels(labels)


def test_a_fold_locked_by_a_live_process_is_left_to_it_and_taken_over_once_it_dies(planted_files, tmp_path, notices):
    from cmamil.training.config import BagTrainConfig
    from cmamil.training.runner import run_training

    folder, labels = planted_files
    run = tmp_path / "run"
    config = BagTrainConfig(model="abmil", features=folder, labels=labels, out=run, folds=2, epochs=1,
                            val_fraction=0.5, min_epochs=0, model_options={"dim": 8, "attn_dim": 4}, device="cpu",
                            num_workers=0, progress=False, figures=False)
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cmamil.locks import try_lock; lock = try_lock(sys.argv[1]); "
        "print('held' if lock else 'busy', flush=True); time.sleep(60)"), str(run / ".fold_0.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        summary = run_training(config)
        assert [f["fold"] for f in summary["folds"]] == [1]  # fold 0 is the other process's
        assert "fold 0 is being trained by another process; skipping it here" in notices.text
        assert not (run / "fold_0" / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = run_training(config)  # its owner died: the lock is taken over and fold 0 trained
    assert [f["fold"] for f in summary["folds"]] == [0, 1] and leftovers(run) == []


def test_tile_interrupted_by_sigterm_records_the_slide_and_exits_143(cohort, tmp_path, monkeypatch):
    import cmamil.extract.tiling as tiling

    write_qc = tiling.write_qc

    def signalled(*args, **kwargs):  # a real SIGTERM, delivered while the second slide is being tiled
        write_qc(*args, **kwargs)
        if args[0].stem == "b":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)

    monkeypatch.setattr(tiling, "write_qc", signalled)
    out = tmp_path / "tiles"
    result = CliRunner().invoke(main, ["tile", str(cohort / "a.tiff"), str(cohort / "b.tiff"), str(cohort / "c.tiff"),
                                       "--out", str(out), "--tile-px", "32"])
    assert result.exit_code == 143
    assert result.stderr.splitlines()[-1].startswith("Error: interrupted by SIGTERM")
    rows = manifest(out / "tile_manifest.csv")
    assert rows["a"]["status"] == "done" and rows["b"]["error"] == "interrupted by SIGTERM; rerun to tile it"
    assert "c" not in rows and leftovers(out) == [] and not (out / "b.h5").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the command put the default handler back
