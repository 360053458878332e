"""MedMNIST-style .npz files: their own splits, class names beside the file, grey images for every model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cmamil.cli import main
from cmamil.data.images import find_split_folders, open_image, read_split
from cmamil.errors import InputError

FAST = ["--epochs", "1", "--device", "cpu", "--num-workers", "0", "--no-progress", "--no-figures", "--explain", "0",
        "--embeddings", "0"]


def write_medmnist(path, *, rgb: bool = False, size: int = 28, counts=(12, 4, 6), seed: int = 0):
    """A two-class .npz in MedMNIST's layout: class 1 has a bright square in the top-left corner."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = np.arange(n) % 2
        images = rng.integers(0, 80, (n, size, size), dtype=np.uint8)
        images[labels == 1, : size // 2, : size // 2] += 150
        if rgb:
            images = np.stack([images, images // 2, images], axis=-1)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez_compressed(path, **arrays)
    return path


def test_an_npz_reads_as_its_own_splits_with_names_from_a_json_beside_it(tmp_path):
    file = write_medmnist(tmp_path / "organ.npz")
    (tmp_path / "organ.json").write_text(json.dumps({"label": {"0": "liver", "1": "kidney"}}))
    assert set(find_split_folders(file)) == {"train", "val", "test"}
    test = read_split(file, "testing")
    assert (len(test), test.class_names, test.channels) == (6, ("liver", "kidney"), 1)
    assert test.labels == (0, 1, 0, 1, 0, 1)
    pixels = np.load(file)["test_images"][3]
    image = open_image(test.paths[3])  # grey repeated to RGB
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[..., 2], pixels)
    (tmp_path / "organ.json").unlink()
    (tmp_path / "organ.csv").write_text("label,name\n1,kidney\n0,liver\n")
    assert read_split(file, "train").class_names == ("liver", "kidney")
    assert read_split(file, "train", ["a", "b"]).class_names == ("a", "b")
    with pytest.raises(InputError, match="has class 1 but there are 1 class names"):
        read_split(file, "train", ["only"])
    multi = tmp_path / "chest.npz"
    np.savez(multi, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 3)),
             test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.zeros((2, 3)))
    with pytest.raises(InputError, match="multi-label sets"):
        read_split(multi, "test")


@pytest.mark.parametrize("model, options, channels", [
    ("s4d", ["--recipe", "s4d_medmnist", "--model-option", "d_model=16", "--model-option", "n_layers=1",
             "--model-option", "d_state=8", "--model-option", "patch_size=4", "--batch-size", "8"], 1),
    ("timm:resnet10t", ["--input-px", "32", "--batch-size", "8", "--class-names", "healthy,lesion"], 3),
])
def test_an_npz_trains_s4d_on_one_channel_and_a_timm_cnn_on_three(model, options, channels, tmp_path):
    file = write_medmnist(tmp_path / "organ.npz")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--images", str(file), "--model", model, *options, *FAST,
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    repeated = "the images have 1 channel(s); they are repeated to 3 channels" in result.stderr
    assert repeated == (channels == 3)
    checkpoint = torch.load(out / "fold_0" / "checkpoint.pt", weights_only=False)
    names = ["healthy", "lesion"] if model.startswith("timm") else ["0", "1"]
    assert checkpoint["class_names"] == names
    if model == "s4d":
        assert checkpoint["model_options"]["in_chans"] == 1 and checkpoint["model_options"]["img_size"] == 28
    predictions = pd.read_csv(out / "fold_0" / "predictions.csv")
    assert list(predictions["id"]) == [f"{file}::test/{i}" for i in range(6)]
    assert list(predictions["label"].astype(str)) == [names[i % 2] for i in range(6)]
    splits = pd.read_csv(out / "splits" / "fold_0.csv")
    assert splits["split"].value_counts().to_dict() == {"train": 12, "test": 6, "val": 4}
    evaluated = CliRunner().invoke(main, ["evaluate", str(out), "--images", str(file), "--device", "cpu",
                                          "--num-workers", "0", "--no-benchmark", "--explain", "0", "--embeddings",
                                          "0", "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert "accuracy" in evaluated.stdout


def test_a_timm_model_built_on_one_channel_says_so_in_its_data_config():
    from cmamil.data.transforms import eval_transform
    from cmamil.models import create_model

    model = create_model("timm:resnet10t", num_classes=2, in_chans=1)
    assert model.data_config.input_size[0] == 1 and len(model.data_config.mean) == len(model.data_config.std) == 1
    from PIL import Image

    image = eval_transform(model.data_config, 32)(Image.new("RGB", (20, 20), (90, 60, 30)))
    assert image.shape == (1, 32, 32)  # RGB made grey: 0.299·90 + 0.587·60 + 0.114·30 = 65.55, 65 as uint8
    expected = (65 / 255 - model.data_config.mean[0]) / model.data_config.std[0]
    assert torch.allclose(image, torch.full_like(image, expected), atol=1e-3)
    assert model.eval()(image[None]).shape == (1, 2)
