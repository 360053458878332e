"""Training under real faults: changed inputs on rerun, failed starts, NaN features, truncated images, places
where nothing can be written, and a full disk (RLIMIT_FSIZE in a child process)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cmamil.cli import main
from cmamil.data.images import check_images
from cmamil.synthetic import PlantedSignal, write_patch_set, write_planted_cohort

BAGS = ["--model", "abmil", "--folds", "2", "--epochs", "1", "--val-fraction", "0.5", "--min-epochs", "0",
        "--model-option", "dim=8", "--model-option", "attn_dim=4", "--device", "cpu", "--num-workers", "0",
        "--no-figures"]
PATCHES = ["--model", "example_cnn", "--model-option", "img_size=32", "--epochs", "1", "--batch-size", "4",
           "--device", "cpu", "--num-workers", "0", "--explain", "0", "--embeddings", "0", "--no-figures"]


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _ok(*args):
    result = _cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _error(result) -> str:
    """The one line a failed command printed (asserting that it is one line and the exit code 1)."""
    assert result.exit_code == 1, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and not any("Traceback" in line for line in lines), result.stderr
    return lines[-1]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def test_a_rerun_on_swapped_labels_or_other_features_is_refused_and_overwrite_retrains(planted_files, tmp_path,
                                                                                       monkeypatch):
    folder, labels = planted_files
    monkeypatch.chdir(tmp_path)
    _ok("train", "--features", "feats", "--labels", "feats/labels.csv", "--out", "runs/A", *BAGS)
    run = tmp_path / "runs" / "A"
    stamp = (run / "fold_0" / "metrics.json").stat().st_mtime_ns
    # the same run given by absolute paths from another folder: resumed (nothing redone), not refused
    monkeypatch.chdir(folder)
    _ok("train", "--features", folder, "--labels", labels, "--out", run, *BAGS)
    assert (run / "fold_0" / "metrics.json").stat().st_mtime_ns == stamp
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["config"]["features"] == str(folder.resolve())
    assert saved["fingerprint"]["inputs"]["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    # two labels swapped
    before = _sha(labels)
    table = pd.read_csv(labels)
    table.loc[[0, 1], "label"] = table.loc[[1, 0], "label"].to_numpy()
    table.to_csv(labels, index=False)
    assert _error(_cli("train", "--features", folder, "--labels", labels, "--out", run, *BAGS)) == (
        f"Error: {run} was trained on other inputs: the labels file's content changed (sha256 {before}… → "
        f"{_sha(labels)}…); use another --out, or --overwrite to retrain on these")
    _ok("train", "--features", folder, "--labels", labels, "--out", run, "--overwrite", *BAGS)
    predicted = pd.concat(pd.read_csv(run / f"fold_{k}" / "predictions.csv") for k in (0, 1)).set_index("id")
    assert predicted.loc[table.slide_id, "label"].tolist() == table.label.tolist()  # the new labels
    # one feature file replaced by another extraction of that slide
    other = tmp_path / "other"
    write_planted_cohort(other, 12, slides_per_patient=2, dim=8, n_coarse=2,
                         signal=PlantedSignal("20x", tiles=2, shift=5.0), seed=7)
    shutil.copy(other / "bag_004.h5", folder / "bag_004.h5")
    line = _error(_cli("train", "--features", folder, "--labels", labels, "--out", run, *BAGS))
    assert line.startswith(f"Error: {run} was trained on other inputs: the feature files (their fingerprint) "
                           "changed (sha256 ")
    assert line.endswith("; use another --out, or --overwrite to retrain on these")


def test_a_failed_start_leaves_no_run_folder_and_nan_features_are_named(planted_files, tmp_path):
    folder, labels = planted_files
    run = tmp_path / "run"
    line = _error(_cli("train", "--features", folder, "--labels", labels, "--out", run, *BAGS,
                       "--model-option", "no_such_option=1"))
    assert "no_such_option" in line and not run.exists()
    bad = folder / "bag_003.h5"
    with h5py.File(bad, "r+") as f:
        f["10x/features"][1, 2] = np.nan
        f["10x/features"][0, 0] = np.inf
    # read in a DataLoader worker process: the worker's error still reaches the user as one line
    args = ["train", "--features", folder, "--labels", labels, "--out", run, *BAGS, "--num-workers", "1"]
    assert _error(_cli(*args)) == (f"Error: bag bag_003: its 10x features hold 2 NaN/Inf value(s) ({bad}); "
                                   "re-extract this slide, or leave it out of the labels")
    with h5py.File(bad, "r+") as f:  # the slide re-extracted (here: repaired), and the same command again
        f["10x/features"][1, 2] = 0.0
        f["10x/features"][0, 0] = 0.0
    _ok(*args)
    assert len(json.loads((run / "summary.json").read_text())["folds"]) == 2


def test_truncated_and_foreign_images_are_skipped_before_training_and_listed(tmp_path):
    root = write_patch_set(tmp_path / "set", sizes={"training": 6, "validation": 2, "testing": 2}, size=16)
    png = sorted((root / "training" / "benign").iterdir())[1]
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    jpeg = root / "training" / "malignant" / "SOB_M_A-15-tr9-100-900.jpg"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(jpeg)
    whole = jpeg.read_bytes()
    jpeg.write_bytes(whole[: len(whole) - 40])
    text = root / "testing" / "benign" / "SOB_B_A-14-te9-100-901.png"
    text.write_text("not an image")
    good = sorted((root / "training" / "benign").iterdir())[0]
    checked = check_images([png, jpeg, text, good])
    assert [bool(reason) for reason, _ in checked] == [True, True, True, False]
    assert checked[3][1] == hashlib.sha256(good.read_bytes()).hexdigest()
    out = tmp_path / "run"
    result = _ok("train", "--images", root, "--out", out, *PATCHES)
    for path in (png, jpeg, text):
        assert f"skipping {path}: " in result.stderr
    skipped = yaml.safe_load((out / "config.yaml").read_text())["data"]["skipped_images"]
    assert sorted(path for path, _ in skipped) == sorted(map(str, (png, jpeg, text)))
    assert "truncated" in dict(skipped)[str(jpeg)].lower()
    assert dict(skipped)[str(text)] == "not an image Pillow can read"
    tested = pd.read_csv(out / "fold_0" / "predictions.csv")
    assert len(tested) == 4 and str(text) not in set(tested["id"])


def test_moving_an_image_to_another_class_refuses_a_rerun(tmp_path):
    root = write_patch_set(tmp_path / "set", sizes={"training": 4, "validation": 2, "testing": 2}, size=16)
    out = tmp_path / "run"
    _ok("train", "--images", root, "--out", out, *PATCHES)
    moved = sorted((root / "training" / "benign").iterdir())[0]
    moved.rename(root / "training" / "malignant" / moved.name)
    line = _error(_cli("train", "--images", root, "--out", out, *PATCHES))
    assert line.startswith(f"Error: {out} was trained on other inputs: the image files changed (sha256 ")


def test_out_where_nothing_can_be_written_is_one_line_for_train_and_report(planted_files, tmp_path):
    folder, labels = planted_files
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = _error(_cli("train", "--features", folder, "--labels", labels, "--out", blocker / "run", *BAGS))
    assert line == (f"Error: cannot create the run folder {blocker / 'run'}: Not a directory ({blocker / 'run'}); "
                    "pass --out a writable folder")
    line = _error(_cli("train", "--features", folder, "--labels", labels, "--out", "/proc/cmamil_run", *BAGS))
    assert line.startswith("Error: cannot create the run folder /proc/cmamil_run: ")
    run = tmp_path / "run"
    _ok("train", "--features", folder, "--labels", labels, "--out", run, *BAGS)
    (run / "figures").write_text("a file where the figures folder goes")
    line = _error(_cli("report", run))
    assert line.startswith(f"Error: cannot write {run / 'figures'}") and line.endswith(
        "; free space, or make the run folder writable")


@pytest.mark.parametrize("limit, fails", [(6000, "last.pt"), (20000, "events.out.tfevents")])
def test_a_full_disk_while_training_is_one_line_in_a_real_child_process(limit, fails, planted_files, tmp_path):
    """6000 bytes: config.yaml (~2 kB) and the best checkpoint (~5 kB) are written, the resume point last.pt fails;
    20000: checkpoints (< 10 kB) are written, TensorBoard's events file (~40 kB with the fold's figures) fails in
    its writer thread."""
    folder, labels = planted_files
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from cmamil.cli import main
        main({["train", "--features", str(folder), "--labels", str(labels), "--out", str(run), *BAGS]!r})
    """)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert child.returncode == 1, child.stderr
    lines = [line for line in child.stderr.splitlines() if not line.startswith(("note: ", "fold "))]  # notes, epochs
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot write {run}/") and lines[0].endswith(
        "and rerun (finished work is kept)"), child.stderr
    assert fails in lines[0] and ("File too large" in lines[0] or "the disk may be full" in lines[0])
    assert not list(run.glob("**/.*.tmp"))  # no temporary file left behind
    _ok("train", "--features", folder, "--labels", labels, "--out", run, *BAGS)  # space freed: the rerun completes
    assert len(json.loads((run / "summary.json").read_text())["folds"]) == 2
