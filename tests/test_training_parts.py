"""General training parts: splits, early stopping, checkpoints, image folders, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cmamil.training.checkpoint import load_checkpoint, save_checkpoint
from cmamil.training.early_stopping import EarlyStopping
from cmamil.errors import InputError
from cmamil.data.images import find_split_folders, patient_groups, read_class_folders, read_split
from cmamil.models import DataConfig
from cmamil.data.transforms import BatchMixer, eval_transform, train_transform
from cmamil.training.splits import assign_folds, holdout_mask


def test_folds_partition_stratify_and_keep_groups_together():
    labels = np.repeat([0, 1, 2], 20)
    groups = [f"p{i // 4}" for i in range(60)]  # 15 patients of 4 images, each patient one class
    folds = assign_folds(labels, 5, groups=groups, seed=1)
    assert set(folds) == set(range(5))
    for patient in set(groups):
        assert len({folds[i] for i, g in enumerate(groups) if g == patient}) == 1
    for k in range(5):
        assert set(labels[folds == k]) == {0, 1, 2}
    assert (assign_folds(labels, 5, groups=groups, seed=1) == folds).all()
    plain = assign_folds(labels, 4, seed=0)
    assert [np.bincount(labels[plain == k]).tolist() for k in range(4)] == [[5, 5, 5]] * 4
    with pytest.raises(InputError, match="cannot make 20 folds from 15 patients"):
        assign_folds(labels, 20, groups=groups)


def test_holdout_takes_a_stratified_grouped_share():
    labels = np.repeat([0, 1], 50)
    groups = [f"p{i // 5}" for i in range(100)]
    held = holdout_mask(labels, 0.2, groups=groups, seed=3)
    assert held.sum() == 20 and np.bincount(labels[held]).tolist() == [10, 10]
    held_patients = {g for g, h in zip(groups, held) if h}
    assert held_patients.isdisjoint({g for g, h in zip(groups, held) if not h})


def test_early_stopping_tie_break_patience_and_state():
    stop = EarlyStopping("f1_macro", patience=2, min_epochs=5, tie_break="accuracy")
    assert stop.step(1, {"f1_macro": 0.5, "accuracy": 0.6})
    assert not stop.step(2, {"f1_macro": 0.5, "accuracy": 0.6})
    assert stop.step(3, {"f1_macro": 0.5, "accuracy": 0.7})  # same F1, better accuracy
    assert not stop.step(4, {"f1_macro": float("nan"), "accuracy": 0.9})
    assert not stop.step(5, {"f1_macro": 0.4, "accuracy": 0.9})
    assert stop.best_epoch == 3 and stop.should_stop(5)
    early = EarlyStopping("f1_macro", patience=1, min_epochs=10)
    early.step(1, {"f1_macro": 0.5})
    early.step(2, {"f1_macro": 0.4})
    assert not early.should_stop(2)  # patience spent, but min_epochs not reached
    loss = EarlyStopping("loss", patience=3, tie_break=None)
    loss.step(1, {"loss": 1.0})
    assert loss.step(2, {"loss": 0.5}) and not loss.step(3, {"loss": 0.7})
    restored = EarlyStopping()
    restored.load_state_dict(loss.state_dict())
    assert restored == loss


def test_checkpoint_round_trip_and_refusals(tmp_path):
    state = {"epoch": 3, "weights": torch.arange(4.0), "names": ["a", "b"], "nested": {"x": 1.5}}
    save_checkpoint(tmp_path / "best.pt", state)
    back = load_checkpoint(tmp_path / "best.pt")
    assert back["epoch"] == 3 and back["names"] == ["a", "b"] and torch.equal(back["weights"], state["weights"])
    torch.save({"code": DataConfig()}, tmp_path / "pickled.pt")  # a class instance: refused by weights_only
    with pytest.raises(InputError, match="pickled.pt' holds pickled objects, not only weights") as refused:
        load_checkpoint(tmp_path / "pickled.pt")
    assert "weights_only" not in str(refused.value) and "GLOBAL cmamil.models.DataConfig" in str(refused.value)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "best.pt").read_bytes()[:100])
    with pytest.raises(InputError, match="delete it and retrain"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "cut.pt", "pickled.pt"]


def _image(path, size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


def test_image_folders_layouts_aliases_and_skips(tmp_path):
    for split in ("train", "val", "test"):
        _image(tmp_path / split / "tumour" / "patient1" / "a.png")
        _image(tmp_path / split / "normal" / "b.tif")
    _image(tmp_path / "train" / "normal" / ".hidden.png")
    (tmp_path / "train" / "normal" / "notes.txt").write_text("ignored")
    (tmp_path / "train" / "normal" / "bad.jpg").write_bytes(b"garbage")
    folders = find_split_folders(tmp_path)
    assert {k: v.name for k, v in folders.items()} == {"train": "train", "val": "val", "test": "test"}
    images = read_class_folders(folders["train"])
    assert images.class_names == ("normal", "tumour") and images.labels == (0, 1)
    assert [p.name for p in images.paths] == ["b.tif", "a.png"]
    assert [p.split("/")[-1] for p, _ in images.skipped] == ["bad.jpg"]
    assert read_split(tmp_path, "testing", images.class_names).counts() == {"normal": 1, "tumour": 1}
    assert find_split_folders(tmp_path / "train") is None
    with pytest.raises(InputError, match="has no split folder 'holdout'"):
        read_split(tmp_path, "holdout")
    (tmp_path / "test").rename(tmp_path / "final")
    with pytest.raises(InputError, match="needs both training/ and testing/"):
        find_split_folders(tmp_path)
    assert find_split_folders(tmp_path, ("train", "val", "final"))["test"].name == "final"
    assert patient_groups([tmp_path / "SOB_B_A-14-22549AB-100-001.png"], r"SOB_[BM]_[A-Z]+-([^-]+-[^-]+)-") == [
        "14-22549AB"
    ]
    with pytest.raises(InputError, match="does not match the file name 'x.png'"):
        patient_groups([tmp_path / "x.png"], r"(\d+)")


def test_preprocessing_resizes_normalises_and_mixes():
    config = DataConfig(input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    image = Image.new("RGB", (70, 46), (255, 128, 0))
    x = eval_transform(config)(image)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert x[0].mean().item() == pytest.approx((1 - 0.5) / 0.25, abs=1e-3)
    assert eval_transform(config, size=16)(image).shape == (3, 16, 16)
    torch.manual_seed(0)
    assert train_transform(config, "strong")(image).shape == (3, 24, 24)
    mixer = BatchMixer(num_classes=3, mixup=0.4, cutmix=1.0)
    images, targets = mixer(torch.rand(4, 3, 24, 24), torch.tensor([0, 1, 2, 0]))
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))
    off = BatchMixer(num_classes=3)
    assert not off.active and off(images, torch.tensor([1]))[1].tolist() == [1]
