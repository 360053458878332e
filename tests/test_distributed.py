"""Scale-out under real torchrun (2 processes, gloo on CPU): fold-parallel MIL training, DDP patch training and
sharded extraction each give what one process gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cmamil.cli import main
from cmamil.distributed import World, detect_world
from cmamil.environment import seed_everything
from cmamil.models import create_model
from cmamil.synthetic import Region, SyntheticTissue, write_patch_set, write_slide
from cmamil.training.checkpoint import load_checkpoint

CMAMIL = Path(sys.executable).with_name("cmamil")
pytestmark = pytest.mark.skipif(not CMAMIL.is_file(), reason="the cmamil console script is not installed")

MIL = ["--model", "abmil", "--model-option", "dim=8", "--model-option", "attn_dim=4", "--folds", "2", "--epochs", "2",
       "--val-fraction", "0.5", "--min-epochs", "0", "--device", "cpu", "--num-workers", "0", "--no-progress",
       "--no-figures"]
# a model without BatchNorm (DDP keeps per-rank batch statistics): a one-block ViT at 32 px; SGD, because Adam's
# first steps divide by the gradients' own size and so blow float rounding (~1e-8) up to ~1e-5
ARCH = "timm:vit_tiny_patch16_224"
VIT = ["--optimizer", "sgd", "--model", ARCH, "--model-option", "img_size=32", "--model-option", "patch_size=8",
       "--model-option", "embed_dim=32", "--model-option", "depth=1", "--model-option", "num_heads=2",
       "--epochs", "1", "--lr", "0.05", "--warmup-epochs", "0", "--augment", "none", "--device", "cpu",
       "--num-workers", "0", "--no-progress", "--no-figures", "--explain", "0", "--embeddings", "0"]


def torchrun_command(*args: str) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 cmamil ARGS`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(CMAMIL), *args]


def torchrun_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> None:
    """Run cmamil ARGS on 2 ranks under torchrun; fail with the workers' output."""
    done = subprocess.run(torchrun_command(*args), capture_output=True, text=True, timeout=300, env=torchrun_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def invoke(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_world_comes_from_torchrun_then_srun_then_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    assert detect_world() == World(0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")  # a batch script's own shell: not one of the step's tasks
    assert detect_world() == World(0, 1, 0)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert detect_world() == World(5, 8, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert detect_world() == World(3, 4, 3)


def test_fold_parallel_training_equals_sequential(planted_files, tmp_path):
    folder, labels = planted_files
    common = ["train", "--features", str(folder), "--labels", str(labels), *MIL]
    invoke(*common, "--out", str(tmp_path / "one"))
    torchrun(*common, "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert [row["fold"] for row in two["folds"]] == [0, 1]
    for a, b in zip(one["folds"], two["folds"]):
        assert a == pytest.approx(b, abs=1e-6)
    for key, stats in one["mean_std"].items():
        assert two["mean_std"][key] == pytest.approx(stats, abs=1e-6), key
    for k in (0, 1):  # the folds' test predictions, probability by probability
        a, b = (pd.read_csv(tmp_path / run / f"fold_{k}" / "predictions.csv") for run in ("one", "two"))
        assert list(a["id"]) == list(b["id"])
        np.testing.assert_allclose(b.filter(like="prob_").to_numpy(), a.filter(like="prob_").to_numpy(), atol=1e-6)
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["world_size"] == 2
    made = {k: json.loads((tmp_path / "two" / f"fold_{k}" / "metrics.json").read_text()) for k in (0, 1)}
    assert [(made[k]["rank"], made[k]["world_size"]) for k in (0, 1)] == [(0, 2), (1, 2)]
    # a rerun skips the finished folds (and rewrites only the summary)
    stamps = {k: (tmp_path / "two" / f"fold_{k}" / "metrics.json").stat().st_mtime_ns for k in (0, 1)}
    invoke(*common, "--out", str(tmp_path / "two"))
    assert stamps == {k: (tmp_path / "two" / f"fold_{k}" / "metrics.json").stat().st_mtime_ns for k in (0, 1)}


def test_ddp_epoch_equals_one_process_on_the_same_global_batches(tmp_path):
    # DistributedSampler gives rank r every 2nd image of the epoch's permutation from r: two ranks with 4 images
    # each see, step by step, the same 8 images as one process with 8 (its sampler draws the same permutation)
    images = write_patch_set(tmp_path / "images", sizes={"training": 16, "validation": 4, "testing": 4}, size=32)
    common = ["train", "--images", str(images), *VIT]
    invoke(*common, "--batch-size", "8", "--out", str(tmp_path / "one"))
    torchrun(*common, "--batch-size", "4", "--out", str(tmp_path / "two"))
    one, two = (load_checkpoint(tmp_path / run / "fold_0" / "checkpoint.pt") for run in ("one", "two"))
    assert one["state_dict"].keys() == two["state_dict"].keys()  # saved unwrapped (no DDP "module." prefix)
    for name, weight in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], weight, atol=1e-5, rtol=0, msg=name)
    seed_everything(0)  # the runner's seed for fold 0: the weights both runs started from
    start = create_model(ARCH, num_classes=2, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    moved = max((w - start.state_dict()[n]).abs().max().item() for n, w in one["state_dict"].items())
    assert moved > 1e-3  # the epoch did train
    # train metrics are gathered over both ranks; val and test predictions over both halves
    history = {run: (tmp_path / run / "fold_0" / "history.csv").read_text().splitlines() for run in ("one", "two")}
    header = history["one"][0].split(",")
    rows = {run: dict(zip(header, lines[1].split(","))) for run, lines in history.items()}
    for key in ("train_loss", "train_accuracy", "val_loss", "val_auc"):
        assert float(rows["two"][key]) == pytest.approx(float(rows["one"][key]), abs=1e-4), key
    metrics = {run: json.loads((tmp_path / run / "fold_0" / "metrics.json").read_text()) for run in ("one", "two")}
    assert metrics["two"]["test"]["n"] == 8 and (metrics["two"]["rank"], metrics["two"]["world_size"]) == (0, 2)
    assert metrics["two"]["test"]["loss"] == pytest.approx(metrics["one"]["test"]["loss"], abs=1e-5)
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["world_size"] == 2
    events = list((tmp_path / "two" / "fold_0").glob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # one process (rank 0) writes TensorBoard
    scalars = EventAccumulator(str(tmp_path / "two" / "fold_0")).Reload()
    assert [e.step for e in scalars.Scalars("train/loss")] == [1]


@pytest.mark.slow
def test_an_interrupted_ddp_run_resumes_to_the_uninterrupted_weights(tmp_path):
    images = write_patch_set(tmp_path / "images", sizes={"training": 16, "validation": 4, "testing": 4}, size=32)
    common = ["train", "--images", str(images), *VIT, "--epochs", "3"]
    invoke(*common, "--batch-size", "8", "--out", str(tmp_path / "one"))
    history = tmp_path / "two" / "fold_0" / "history.csv"
    launcher = subprocess.Popen(torchrun_command(*common, "--batch-size", "4", "--out", str(tmp_path / "two")),
                                env=torchrun_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 240
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):  # epoch 1 saved
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before epoch 1 was saved"
        time.sleep(0.02)
    os.killpg(launcher.pid, signal.SIGKILL)  # torchrun and both ranks, as a lost node would
    launcher.wait()
    assert not (tmp_path / "two" / "fold_0" / "metrics.json").exists(), "the run ended before it was interrupted"
    assert (tmp_path / "two" / "fold_0" / "last.pt").is_file()
    torchrun(*common, "--batch-size", "4", "--out", str(tmp_path / "two"))
    one, two = (load_checkpoint(tmp_path / run / "fold_0" / "checkpoint.pt") for run in ("one", "two"))
    assert one["epoch"] == two["epoch"]
    for name, weight in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], weight, atol=1e-5, rtol=0, msg=name)
    rows = (tmp_path / "two" / "fold_0" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]


def test_extraction_by_two_ranks_covers_every_bag_once_and_equals_one_process(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        tissue = SyntheticTissue((Region(40, 40, 392, 284, "ellipse"),), mpp=0.5, seed=i)
        write_slide(slides / f"s{i}.tiff", tissue, size=(512, 384), mpp=0.5, smallest_level=256)
    common = ["extract", str(slides), "--encoder", "example_cnn", "--tile-px", "32", "--magnifications", "5,10,20",
              "--num-workers", "0"]
    invoke(*common, "--out", str(tmp_path / "one"))
    torchrun(*common, "--out", str(tmp_path / "two"))
    shards = [(tmp_path / "two" / f"extract_manifest.shard-{r}-of-2.csv").read_text().splitlines()[1:]
              for r in (0, 1)]
    taken = [line.split(",")[0] for shard in shards for line in shard]
    assert sorted(taken) == ["s0", "s1", "s2"] and all(shards)
    for name in ("s0.h5", "s1.h5", "s2.h5"):
        with h5py.File(tmp_path / "one" / name) as a, h5py.File(tmp_path / "two" / name) as b:
            names = []
            a.visit(names.append)
            assert names and sorted(names) == sorted(_names(b))
            for key in names:
                if isinstance(a[key], h5py.Dataset):
                    np.testing.assert_allclose(b[key][()], a[key][()], atol=1e-6, err_msg=key)
            keep = set(a.attrs) - {"created"}
            assert {k: str(a.attrs[k]) for k in keep} == {k: str(b.attrs[k]) for k in keep}


def _names(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visit(names.append)
    return names
