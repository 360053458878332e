"""Linking other toolkits' per-magnification feature folders into nested bags, and the foreign-layout readers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cmamil.aggregators import create_aggregator
from cmamil.cli import main
from cmamil.errors import InputError
from cmamil.linking import LinkConfig, link_sets, parent_map
from cmamil.plugins.cma_mil import ancestors
from cmamil.store import read_bag, read_coords
from cmamil.store.foreign import read_tiles
from tests.conftest import SHARED_DATA

MOPADI = SHARED_DATA / "mopadi_tcga_features"
# a 40x scan (0.25 µm/px) tiled by TRIDENT at 256 px: level-0 tile edges per magnification
SIZE = {"5x": 2048, "10x": 1024, "20x": 512}


def write_trident(root, mag, slide, coords, features, encoder="enc"):
    """`<root>/<mag>_256px_0px_overlap/features_<encoder>/<slide>.h5` as TRIDENT writes it; returns the folder."""
    folder = root / f"{mag}_256px_0px_overlap" / f"features_{encoder}"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{slide}.h5", "w") as f:
        f["features"] = np.asarray(features, np.float32)
        node = f.create_dataset("coords", data=np.asarray(coords, np.int64))
        node.attrs.update(patch_size=256, patch_size_level0=SIZE[mag], level0_magnification=40,
                          target_magnification=int(mag[:-1]), overlap=0)
    return folder


def grid(step, count, offset=0):
    """Top-left corners of a count × count grid of `step`, starting at `offset`, in row-major order."""
    return np.array([[offset + step * i, offset + step * j] for j in range(count) for i in range(count)], np.int64)


def expected_parents(fine, fine_size, coarse, coarse_size):
    """Parent rows by the regular coarse grid: the coarse corner that floors the fine centre, -1 if absent."""
    rows = {tuple(c): r for r, c in enumerate(coarse.tolist())}
    corners = (fine + fine_size // 2) // coarse_size * coarse_size
    return np.array([rows.get(tuple(c), -1) for c in corners.tolist()], np.int64)


@pytest.fixture
def trident_sets(tmp_path):
    """Slide s1 at 5x/10x/20x: one 5x tile outside the tissue mask, one 10x tile missing, a 20x grid shifted by
    half a tile (so 33 of its tiles straddle two 10x tiles), rows shuffled; slide s2 lacks the 10x set."""
    rng = np.random.default_rng(0)
    coords = {"5x": grid(2048, 2)[:3], "10x": grid(1024, 4)[1:], "20x": grid(512, 7, offset=256)}
    coords = {mag: c[rng.permutation(len(c))] for mag, c in coords.items()}
    folders = {mag: write_trident(tmp_path / "trident", mag, "s1", c, rng.standard_normal((len(c), 6)))
               for mag, c in coords.items()}
    for mag in ("5x", "20x"):
        write_trident(tmp_path / "trident", mag, "s2", coords[mag], np.zeros((len(coords[mag]), 6)))
    return folders, coords


def test_link_gives_every_tile_its_parent_and_reports_orphans_straddlers_and_missing_slides(trident_sets, tmp_path):
    folders, coords = trident_sets
    out = tmp_path / "bags"
    args = ["link", *(f"--set={m}={f}" for m, f in folders.items()), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.strip() == (
        f"2 slides: 1 linked, 0 skipped (already linked), 1 missing from a set, 0 failed; tiles 5x: 3, 10x: 15, "
        f"20x: 49; without parent 10x: 4, 20x: 1; straddling 10x: 0, 20x: 33; report {out / 'link_report.csv'}"
    )
    assert result.stderr.strip() == "missing from 10x: s2"
    linked = read_coords(out / "s1.h5")
    assert list(linked) == ["5x", "10x", "20x"]
    for coarse, fine in (("5x", "10x"), ("10x", "20x")):
        np.testing.assert_array_equal(linked[fine][0], coords[fine])  # rows keep the source order
        want = expected_parents(coords[fine], SIZE[fine], coords[coarse], SIZE[coarse])
        np.testing.assert_array_equal(linked[fine][1], want)
    assert (linked["10x"][1] == -1).sum() == 4 and (linked["20x"][1] == -1).sum() == 1
    bag = read_bag(out / "s1.h5")
    with h5py.File(folders["20x"] / "s1.h5") as f:
        np.testing.assert_array_equal(bag.features["20x"].numpy(), f["features"][:])
    report = pd.read_csv(out / "link_report.csv").set_index("slide_id")
    assert report.loc["s1", ["orphans_10x", "orphans_20x", "straddling_20x"]].tolist() == [4, 1, 33]
    assert report.loc["s2", "status"] == "incomplete" and report.loc["s2", "missing"] == "10x"
    with h5py.File(out / "s1.h5") as f:
        assert f.attrs["encoder"] == "enc"
        assert json.loads(f.attrs["sources"])["10x"]["layout"] == "trident"
    rerun = CliRunner().invoke(main, args)
    assert "0 linked, 1 skipped (already linked)" in rerun.stdout


def test_cma_mil_local_attention_sees_the_linked_ancestors(trident_sets, tmp_path):
    folders, coords = trident_sets
    list(link_sets(LinkConfig.parse([f"{m}={f}" for m, f in folders.items()], out=tmp_path / "bags")))
    bag = read_bag(tmp_path / "bags" / "s1.h5")
    # the 5x ancestor of a 20x tile through its 10x parent: -1 where either link is missing
    via = expected_parents(coords["20x"], SIZE["20x"], coords["10x"], SIZE["10x"])
    want = np.where(via >= 0, expected_parents(coords["20x"], SIZE["20x"], coords["5x"], SIZE["5x"]), -1)
    np.testing.assert_array_equal(ancestors(bag, "20x", "5x").numpy(), want)
    assert (want == -1).sum() == 1 + 16  # the missing 10x tile's child, and the 4 × 4 under the missing 5x tile
    model = create_aggregator("cma_mil", in_dim=6, num_classes=2, magnifications=bag.magnifications, dim=8,
                              cross_attention="local")
    assert model(bag).logits.shape == (1, 2)


def planted_trident_cohort(root, n_slides, dim=8, shift=5.0, seed=0):
    """TRIDENT folders at 5x/10x/20x of `n_slides` slides (2 × 2 5x tiles, rows shuffled) and labels.csv; in a
    positive slide one 5x tile and 3 of the 20x tiles under it are shifted by `shift` along fixed directions
    (a signal planted on a parent and its children). Returns the set folders, labels.csv and the planted rows."""
    rng = np.random.default_rng(seed)
    direction = {m: d / np.linalg.norm(d) for m, d in (("5x", rng.standard_normal(dim)),
                                                       ("20x", rng.standard_normal(dim)))}
    coords = {"5x": grid(2048, 2), "10x": grid(1024, 4), "20x": grid(512, 8)}
    under = coords["20x"] // SIZE["5x"] @ np.array([1, 2])  # the 5x row (row-major 2 × 2) above each 20x tile
    folders, rows, planted = {}, [], {}
    for i in range(n_slides):
        slide, label = f"s{i:03d}", i % 2
        features = {m: rng.standard_normal((len(c), dim)) for m, c in coords.items()}
        if label:
            hot = int(rng.integers(4))
            children = rng.choice(np.flatnonzero(under == hot), 3, replace=False)
            features["5x"][hot] += shift * direction["5x"]
            features["20x"][children] += shift * direction["20x"]
            planted[slide] = (coords["5x"][hot], coords["20x"][children])
        for mag, c in coords.items():
            order = rng.permutation(len(c))
            folders[mag] = write_trident(root, mag, slide, c[order], features[mag][order])
        rows.append((slide, ("negative", "positive")[label]))
    labels = root / "labels.csv"
    pd.DataFrame(rows, columns=["slide_id", "label"]).to_csv(labels, index=False)
    return folders, labels, planted


@pytest.mark.slow
def test_linked_trident_bags_train_cma_mil_local_attention_on_a_parent_child_signal(tmp_path):
    folders, labels, planted = planted_trident_cohort(tmp_path / "trident", 40)
    bags = tmp_path / "bags"
    linked = CliRunner().invoke(main, ["link", *(f"--set={m}={f}" for m, f in folders.items()), "--out", str(bags)])
    assert linked.exit_code == 0, linked.output
    # the planted 20x tiles hang under the planted 5x tile once linked
    slide, (parent, children) = next(iter(planted.items()))
    bag = read_bag(bags / f"{slide}.h5")
    rows = [int(np.flatnonzero((bag.coords["20x"].numpy() == c).all(1))[0]) for c in children]
    top = ancestors(bag, "20x", "5x")[rows].tolist()
    assert [bag.coords["5x"][r].tolist() for r in top] == [parent.tolist()] * 3
    run = tmp_path / "run"
    args = ["train", "--features", str(bags), "--labels", str(labels), "--model", "cma_mil", "--folds", "2",
            "--epochs", "10", "--min-epochs", "10", "--lr", "3e-3", "--standardize", "--out", str(run),
            "--num-workers", "0", "--device", "cpu", "--no-figures", "--no-progress",
            *(f"--model-option={o}" for o in ("cross_attention=local", "attn_weighting=exp_raw", "bag_weight=1.0",
                                              "dim=16"))]
    trained = CliRunner().invoke(main, args)
    assert trained.exit_code == 0, trained.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mean_std"]["auc"]["mean"] >= 0.9, summary["mean_std"]["auc"]


def test_links_only_bags_reference_the_source_features(trident_sets, tmp_path):
    folders, _ = trident_sets
    out = tmp_path / "links"
    config = LinkConfig.parse([f"{m}={f}" for m, f in folders.items()], out=out, links_only=True)
    assert [r.status for r in link_sets(config)] == ["done", "incomplete"]
    with h5py.File(out / "s1.h5") as f:
        link = f["20x"].get("features", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.path == "features"
    with h5py.File(folders["20x"] / "s1.h5") as f:
        np.testing.assert_array_equal(read_bag(out / "s1.h5").features["20x"].numpy(), f["features"][:])
    with pytest.raises(InputError, match="^--links-only writes HDF5 external links; use --format h5$"):
        LinkConfig.parse([f"{m}={f}" for m, f in folders.items()], out=out, links_only=True, storage="zarr")


def test_parent_map_by_centre_with_overlapping_coarse_tiles_and_boundaries():
    coarse = np.array([[0, 0], [100, 0], [50, 0]], np.int64)  # the third overlaps both
    fine = np.array([[0, 0], [50, 0], [75, 0], [150, 0], [300, 0], [90, 90]], np.int64)
    parent, straddling = parent_map(coarse, 100, fine, 50)
    # centre x 25 → row 0; 75 → rows 0 and 2 at the same distance, the lower row; 100 → rows 1 and 2, row 2's
    # centre nearer; 175 → row 1; 325 → none; (115, 115) lies below every coarse square → none
    assert parent.tolist() == [0, 0, 2, 1, -1, -1]
    assert straddling.tolist() == [False, False, False, False, False, False]
    shifted = np.array([[80, 0]], np.int64)  # centre 105 in row 1's square only when row 2 is absent
    assert parent_map(coarse[:2], 100, shifted, 50)[0].tolist() == [1]
    assert parent_map(coarse[:2], 100, shifted, 50)[1].tolist() == [True]


def test_mismatched_feature_dimensions_fail_the_slide_with_one_line(tmp_path):
    five = write_trident(tmp_path, "5x", "s1", grid(2048, 1), np.zeros((1, 4)))
    ten = write_trident(tmp_path, "10x", "s1", grid(1024, 2), np.zeros((4, 8)))
    result = CliRunner().invoke(
        main, ["link", "--set", f"5x={five}", "--set", f"10x={ten}", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        "failed: s1: s1: feature dimensions differ across sets (5x: 4, 10x: 8); link one encoder's features")
    assert not (tmp_path / "out" / "s1.h5").exists()


def test_set_given_the_wrong_magnification_is_refused(tmp_path):
    five = write_trident(tmp_path, "5x", "s1", grid(2048, 1), np.zeros((1, 4)))
    ten = write_trident(tmp_path, "10x", "s1", grid(1024, 2), np.zeros((4, 4)))
    results = list(link_sets(LinkConfig.parse([f"5x={five}", f"20x={ten}"], out=tmp_path / "out")))
    assert results[0].error == f"{ten / 's1.h5'} is 10x by its attributes but was given as --set 20x"


def test_stamp_coords_in_micrometres_become_level0_pixels(tmp_path):
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as f:
        f["feats"] = np.ones((3, 4), np.float32)
        f["coords"] = np.array([[0.0, 0.0], [112.0, 224.0], [224.5, 56.1]])
        f.attrs.update(unit="um", tile_size_um=112.0, tile_size_px=224, extractor="ctranspath")
    tiles = read_tiles(path, mpp=0.25)
    # 112 µm / 0.25 µm/px = 448 px; 224.5 / 0.25 = 898; 56.1 / 0.25 = 224.4 → 224
    assert tiles.coords.tolist() == [[0, 0], [448, 896], [898, 224]]
    assert tiles.tile_size_level0 == 448 and tiles.layout == "stamp" and tiles.encoder == "ctranspath"
    assert tiles.mpp == 0.25
    with pytest.raises(InputError) as error:
        read_tiles(path)
    assert str(error.value) == (f"{path} has coords in µm (STAMP) and no slide_mpp attribute; pass --mpp, the "
                                "slides' level-0 µm/px")
    with h5py.File(path, "a") as f:
        f.attrs["slide_mpp"] = 0.5  # a file that states its slide's level-0 µm/px needs no --mpp
    stated = read_tiles(path)
    assert stated.coords.tolist() == [[0, 0], [224, 448], [449, 112]] and stated.tile_size_level0 == 224
    assert stated.mpp == 0.5 and read_tiles(path, mpp=0.25).tile_size_level0 == 448  # --mpp wins


def write_stamp(folder, slide, coords_um, tile_size_um, dim=4):
    """`<folder>/<slide>.h5` as STAMP writes it: `feats`, `coords` in µm, tile size in µm, no slide µm/px."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{slide}.h5", "w") as f:
        f["feats"] = np.zeros((len(coords_um), dim), np.float16)
        f["coords"] = np.asarray(coords_um, np.float32)
        f.attrs.update(unit="um", tile_size_um=tile_size_um, tile_size_px=224, extractor="uni2")
    return folder


def test_link_stamp_sets_needs_mpp_in_one_line_and_links_in_micrometres_with_it(tmp_path):
    # 512 µm tiles at the coarse set, 256 µm at the fine one (the fine grid offset by 128 µm)
    coarse = write_stamp(tmp_path / "c", "s1", [[0, 0], [512, 0]], 512.0)
    fine = write_stamp(tmp_path / "f", "s1", [[128, 128], [384, 0], [640, 256], [1100, 0]], 256.0)
    args = ["link", "--set", f"5x={coarse}", "--set", f"10x={fine}", "--out", str(tmp_path / "out")]
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code == 1
    assert failed.stderr.splitlines()[0] == (f"failed: s1: {coarse / 's1.h5'} has coords in µm (STAMP) and no "
                                             "slide_mpp attribute; pass --mpp, the slides' level-0 µm/px")
    linked = CliRunner().invoke(main, [*args, "--mpp", "0.5"])
    assert linked.exit_code == 0, linked.output
    coords = read_coords(tmp_path / "out" / "s1.h5")
    # µm / 0.5 µm/px: coarse tiles of 1024 px at x 0 and 1024; fine centres at x 512, 1024 (the boundary goes to
    # the right-hand tile), 1536 and 2456 (outside both)
    assert coords["10x"][0].tolist() == [[256, 256], [768, 0], [1280, 512], [2200, 0]]
    assert coords["10x"][1].tolist() == [0, 1, 1, -1]
    with h5py.File(tmp_path / "out" / "s1.h5") as f:
        assert f.attrs["mpp"] == 0.5 and f["10x/coords"].attrs["tile_size_level0"] == 512


def test_clam_h5_and_pt_files_give_level0_tile_sizes(tmp_path):
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    (tmp_path / "pt_files").mkdir()
    (tmp_path / "h5_files").mkdir()
    torch.save(features, tmp_path / "pt_files" / "s.pt")
    with h5py.File(tmp_path / "h5_files" / "s.h5", "w") as f:
        f["features"] = features.numpy()
        f.create_dataset("coords", data=grid(512, 2)[:3]).attrs.update(patch_size=256, patch_level=1,
                                                                       downsample=[2.0, 2.0])
    from_pt = read_tiles(tmp_path / "pt_files" / "s.pt")
    assert from_pt.tile_size_level0 == 512 and from_pt.layout == "clam (pt)" and from_pt.feature_shape == (3, 4)
    np.testing.assert_array_equal(np.concatenate(list(from_pt.feature_blocks(rows=2))), features.numpy())
    assert read_tiles(tmp_path / "h5_files" / "s.h5").coords.tolist() == [[0, 0], [512, 0], [0, 512]]
    with pytest.raises(InputError, match="has no coords file; put CLAM's h5_files/t.h5 beside pt_files/$"):
        torch.save(features, tmp_path / "pt_files" / "t.pt")
        read_tiles(tmp_path / "pt_files" / "t.pt")


def test_unknown_layout_names_the_datasets_found(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"], f["meta"] = np.zeros((2, 2)), np.zeros(2)
    line = (f"{path} has neither a cmamil layout nor a 'features'/'feats' dataset (it holds: embeddings, meta); "
            "see the readers table in docs/feature-files.md")
    for read in (read_tiles, read_bag):
        with pytest.raises(InputError) as error:
            read(path)
        assert str(error.value) == line


@pytest.mark.skipif(not MOPADI.is_dir(), reason="shared real data (mopadi_tcga_features) is absent")
def test_real_mopadi_files_through_the_readers_table():
    with_coords = MOPADI / "TCGA-AD-6964-01Z-00-DX1" / "features.h5"
    tiles = read_tiles(with_coords, tile_size_level0=512)
    assert tiles.feature_shape == (777, 512) and tiles.features_key == "feats" and tiles.tile_size_level0 == 512
    with h5py.File(with_coords) as f:
        np.testing.assert_array_equal(tiles.coords, f["coords"][:])
        np.testing.assert_array_equal(next(tiles.feature_blocks(rows=777)), f["feats"][:])
    names_only = MOPADI / "TCGA-3X-AAVA-01Z-00-DX1" / "features.h5"
    with pytest.raises(InputError) as error:
        read_tiles(names_only, tile_size_level0=512)
    assert str(error.value) == (f"{names_only} has no coords (it holds: features, metadata); tiles without "
                                "positions cannot be linked across magnifications")

