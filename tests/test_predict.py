"""cmamil predict and cmamil heatmap: slides == extract then feature files, the ensemble by hand, labels → metrics,
refusal of a mismatched bag, resume, a model without attention, and heatmaps of planted attention checked in the
HDF5, the QuPath GeoJSON (with shapely) and the PNG; the real CMU-1 small region slide when present."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cmamil.aggregators import forward_bag
from cmamil.cli import main
from cmamil.errors import InputError
from cmamil.evaluation.heatmaps import PANELS_KEY
from cmamil.evaluation.predict import PredictConfig, predict_run
from cmamil.evaluation.tile_maps import HeatmapConfig, normalize_values
from cmamil.extract.features import ExtractConfig, extract_slides
from cmamil.extract.grid import TilingConfig
from cmamil.models import create_model
from cmamil.store import bag_info, read_bag, read_coords
from cmamil.synthetic import Region, SyntheticTissue, write_slide
from cmamil.training import RunFolder, load_trained
from cmamil.training.config import BagTrainConfig
from cmamil.training.runner import run_training

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CMU = SHARED_DATA / "cmu1_small_region" / "CMU-1-Small-Region.svs"
TILING = TilingConfig("5,10,20", tile_px=32)


def slide(path: Path, seed: int) -> Path:
    tissue = SyntheticTissue((Region(40, 40, 392, 284, "ellipse"),), mpp=0.5, seed=seed)
    return write_slide(path, tissue, size=(512, 384), mpp=0.5, smallest_level=256)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """8 labelled slides embedded with saved example_cnn weights, a 2-fold example_planted run on them, 2 new
    slides, and the extraction settings used."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(1)
    weights = root / "cnn.pth"
    torch.save(create_model("example_cnn").state_dict(), weights)
    (root / "train").mkdir()
    (root / "new").mkdir()
    ids = [f"s{i}" for i in range(8)]
    for i, name in enumerate(ids):
        slide(root / "train" / f"{name}.tiff", seed=i)
    for i in range(2):
        slide(root / "new" / f"n{i}.tiff", seed=20 + i)
    extract = ExtractConfig(encoder="example_cnn", weights=str(weights), input_px=32, tiling=TILING, num_workers=0,
                            device="cpu")
    extract_slides([root / "train"], root / "features", extract)
    labels = root / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"{s},{'pos' if i % 2 else 'neg'}\n" for i, s in enumerate(ids)))
    run_training(BagTrainConfig(model="example_planted", features=root / "features", labels=labels,
                                out=root / "run", folds=2, epochs=2, min_epochs=0, val_fraction=0.5, device="cpu",
                                num_workers=0, standardize=True, figures=False))
    return root, extract


def test_predict_on_slides_equals_extract_then_predict_on_feature_files(trained, tmp_path):
    root, extract = trained
    from_slides = predict_run(PredictConfig(run=root / "run", inputs=(root / "new",), out=tmp_path / "a",
                                            device="cpu", num_workers=0))
    assert from_slides.done == 2 and not from_slides.refused
    extract_slides([root / "new"], tmp_path / "feats", extract)
    predict_run(PredictConfig(run=root / "run", inputs=(tmp_path / "feats",), out=tmp_path / "b",
                                           device="cpu"))
    a, b = pd.read_csv(tmp_path / "a" / "predictions.csv"), pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert list(a["id"]) == list(b["id"]) == ["n0", "n1"]
    columns = [c for c in a.columns if c.startswith("prob_")]
    assert columns == ["prob_neg", "prob_pos", "prob_neg_fold_0", "prob_pos_fold_0", "prob_neg_fold_1",
                       "prob_pos_fold_1"]
    np.testing.assert_array_equal(a[columns].to_numpy(), b[columns].to_numpy())
    for name in ("n0", "n1"):
        np.testing.assert_array_equal(read_bag(tmp_path / "a" / "features" / f"{name}.h5").features["20x"],
                                      read_bag(tmp_path / "feats" / f"{name}.h5").features["20x"])


def test_ensemble_is_the_mean_of_fold_probabilities_by_hand_and_labels_give_metrics(trained, tmp_path):
    root, _ = trained
    result = predict_run(PredictConfig(run=root / "run", inputs=(root / "features",), out=tmp_path,
                                       labels=root / "labels.csv", device="cpu"))
    assert result.done == 8
    frame = pd.read_csv(tmp_path / "predictions.csv", dtype={"id": str})
    run = RunFolder(root / "run")
    by_hand = {}
    for fold, checkpoint in run.checkpoints().items():
        model = load_trained(checkpoint)
        probs = []
        for bag_id in frame["id"]:
            bag = model.prepare(read_bag(root / "features" / f"{bag_id}.h5", ("5x", "10x", "20x")))
            with torch.no_grad():
                probs.append(torch.softmax(forward_bag(model.model, bag).logits, 1)[0].numpy())
        by_hand[fold] = np.stack(probs)
        np.testing.assert_allclose(frame[[f"prob_neg_fold_{fold}", f"prob_pos_fold_{fold}"]], by_hand[fold],
                                   atol=1e-6)
    mean = (by_hand[0] + by_hand[1]) / 2
    np.testing.assert_allclose(frame[["prob_neg", "prob_pos"]], mean, atol=1e-6)
    assert list(frame["prediction"]) == [("neg", "pos")[i] for i in mean.argmax(1)]
    truth = pd.read_csv(root / "labels.csv").set_index("slide_id").loc[frame["id"], "label"]
    assert list(frame["label"]) == list(truth)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    fold_test = json.loads((run.fold_dir(0) / "metrics.json").read_text())["test"]
    assert set(fold_test) <= set(metrics) and metrics["n"] == 8
    from sklearn.metrics import roc_auc_score

    assert metrics["auc"] == pytest.approx(roc_auc_score(list(truth == "pos"), mean[:, 1]))


def test_a_bag_of_another_encoder_is_refused_in_one_line_and_the_rest_predicted_and_reruns_skip(trained, tmp_path):
    root, _ = trained
    feats = tmp_path / "feats"
    shutil.copytree(root / "features", feats)
    with h5py.File(feats / "s3.h5", "r+") as handle:
        handle.attrs["encoder"] = "timm:resnet18"
    args = ["predict", str(root / "run"), str(feats), "--out", str(tmp_path / "out"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    refused = [line for line in result.output.splitlines() if line.startswith("refused:")]
    assert refused == ["refused: s3.h5: encoder timm:resnet18 but the run was trained on example_cnn; extract it "
                       "with the run's settings (or pass its slide)"]
    assert "7 bags predicted (7 new, 0 already done), 1 refused" in result.output
    ids = set(pd.read_csv(tmp_path / "out" / "predictions.csv")["id"])
    assert ids == {f"s{i}" for i in range(8)} - {"s3"}
    manifest = pd.read_csv(tmp_path / "out" / "predict_manifest.csv").set_index("slide_id")
    assert manifest.loc["s3", "status"] == "refused" and manifest.loc["s0", "status"] == "done"
    again = CliRunner().invoke(main, args)
    assert "7 bags predicted (0 new, 7 already done)" in again.output


def test_a_model_without_attention_still_predicts_and_its_heatmap_is_refused_per_bag(trained, tmp_path):
    root, _ = trained
    run = tmp_path / "bare"
    run_training(BagTrainConfig(model="example_bare_mean", features=root / "features", labels=root / "labels.csv",
                                out=run, folds=2, epochs=1, min_epochs=0, val_fraction=0.5, device="cpu",
                                num_workers=0, figures=False, splits=root / "run" / "splits"))
    result = predict_run(PredictConfig(run=run, inputs=(root / "features" / "s0.h5",), out=tmp_path / "out",
                                       device="cpu", heatmaps=HeatmapConfig()))
    assert result.done == 1
    assert result.refused == [("s0", "s0: the model gives no per-tile attention; use --what score or a model that "
                                     "gives it")]
    assert list(pd.read_csv(tmp_path / "out" / "predictions.csv")["id"]) == ["s0"]


def test_normalisation_rank_and_minmax_by_hand():
    np.testing.assert_allclose(normalize_values(np.array([3.0, 1.0, 2.0, 2.0]), "rank"), [1, 0, 0.5, 0.5])
    np.testing.assert_allclose(normalize_values(np.array([3.0, 1.0, 2.0]), "minmax"), [1, 0, 0.5])
    np.testing.assert_allclose(normalize_values(np.array([3.0, 1.0]), "raw"), [3, 1])


def test_heatmap_of_planted_attention_in_the_h5_geojson_and_png(trained, tmp_path):
    from cmamil_example_plugin.aggregators import planted_attention
    from shapely.geometry import shape

    root, _ = trained
    args = ["heatmap", str(root / "run"), str(root / "new" / "n0.tiff"), "--out", str(tmp_path), "--device", "cpu",
            "--num-workers", "0", "--top-k", "3", "--thumbnail-px", "256"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    coords = read_coords(tmp_path / "features" / "n0.h5")
    info = bag_info(tmp_path / "features" / "n0.h5")
    planted = {mag: planted_attention(torch.from_numpy(c)).float().numpy() for mag, (c, _) in coords.items()}
    with h5py.File(tmp_path / "tile_values.h5") as handle:  # links to heatmaps/n0.h5
        for mag, expected in planted.items():
            np.testing.assert_array_equal(handle[f"n0/{mag}/attention"][:], expected)
            assert handle[f"n0/{mag}/scores"].shape == (len(expected), 2)
            np.testing.assert_array_equal(handle[f"n0/{mag}/coords"][:], coords[mag][0])
    collection = json.loads((tmp_path / "heatmaps" / "n0.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == sum(len(c) for c, _ in coords.values())
    for feature in collection["features"]:
        props = feature["properties"]
        mag, row = props["magnification"], props["tile"]
        polygon = shape(feature["geometry"])
        size = float(info.coords_attrs[mag]["tile_size_level0"])
        x, y = coords[mag][0][row]
        assert polygon.is_valid and props["objectType"] == "tile"
        assert polygon.bounds == pytest.approx((x, y, x + size, y + size))
        assert props["measurements"]["attention"] == pytest.approx(planted[mag][row])
        if mag == "20x":
            parent_10x = props["measurements"]["parent 10x"]
            assert parent_10x == coords["20x"][1][row]
            assert props["measurements"]["parent 5x"] == coords["10x"][1][parent_10x]
    with Image.open(tmp_path / "heatmaps" / "n0.png") as image:
        assert image.width > 600 and image.height > 200
        boxes = json.loads(image.info[PANELS_KEY])
        pixels = np.asarray(image.convert("RGB"))
    x0, y0, x1, y1 = boxes["20x"]
    scale = (x1 - x0) / info.attrs["level0_width"]
    colours = []
    for row in (np.argmax(planted["20x"]), np.argmin(planted["20x"])):
        cx, cy = coords["20x"][0][row] + 16  # the tile's centre (20x tiles are 32 level-0 px)
        colours.append(pixels[int(y0 + cy * scale), int(x0 + cx * scale)].astype(int))
    assert np.abs(colours[0] - colours[1]).sum() > 60
    with Image.open(tmp_path / "heatmaps" / "n0_montage.png") as montage:
        assert montage.height > 3 * 96 and montage.width > 6 * 96
    assert "(0 new, 1 already done)" in CliRunner().invoke(main, args).output  # finished: skipped
    redone = CliRunner().invoke(main, [*args, "--normalize", "minmax"])  # other settings: redone
    assert "(1 new, 0 already done)" in redone.output
    with h5py.File(tmp_path / "heatmaps" / "n0.h5") as handle:
        shown = handle["n0/20x/shown"][:]
        assert shown.min() == 0 and shown.max() == 1 and handle["n0"].attrs["normalize"] == "minmax"
        np.testing.assert_allclose(shown, normalize_values(planted["20x"], "minmax"))


@pytest.mark.skipif(not CMU.is_file(), reason="CMU-1-Small-Region.svs not in ../shared/data")
def test_real_cmu1_small_region_goes_through_predict_and_heatmap(trained, tmp_path):
    root, _ = trained
    args = ["heatmap", str(root / "run"), str(CMU), "--out", str(tmp_path), "--device", "cpu",
            "--num-workers", "0", "--top-k", "2", "--thumbnail-px", "256", "--batch-size", "256"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "predictions.csv")
    assert list(frame["id"]) == ["CMU-1-Small-Region"]
    assert frame[["prob_neg", "prob_pos"]].sum(axis=1).iloc[0] == pytest.approx(1, abs=1e-5)
    for suffix in (".png", ".geojson", ".h5", "_montage.png"):
        assert (tmp_path / "heatmaps" / f"CMU-1-Small-Region{suffix}").is_file()


def test_features_of_random_encoder_weights_cannot_be_rebuilt_for_slides():
    recipe = {"encoder": "timm:resnet10t", "encoder_weights": "random", "tile_px": 64, "magnifications": ["5x"]}
    with pytest.raises(InputError, match=r"^the features were embedded with randomly initialised timm:resnet10t "
                                         r"weights, which cannot be rebuilt; extract the slides yourself"):
        ExtractConfig.from_recipe(recipe, device="cpu")
