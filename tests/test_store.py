"""Per-bag feature files: round trips in HDF5 and zarr, streaming, atomic commit, foreign files, errors."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cmamil.errors import InputError
from cmamil.store import (
    FORMAT,
    BagWriter,
    bag_id_from_path,
    bag_info,
    bag_path,
    is_complete,
    list_bags,
    read_bag,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOPADI = DATA / "mopadi_tcga_features"
DIM = 24


def nested_bag(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A 5x/10x/20x bag: 3 coarse tiles of 448 px level-0, each holding 2×2 10x tiles and 4×4 20x tiles."""
    rng = np.random.default_rng(seed)
    coarse = np.array([[0, 0], [448, 0], [0, 448]], np.int64)
    levels: dict[str, dict[str, np.ndarray]] = {}
    parent_coords, step = coarse, 448
    for mag in ("5x", "10x", "20x"):
        if mag == "5x":
            coords, parent = coarse, np.full(len(coarse), -1, np.int64)
        else:
            step //= 2
            offsets = np.array([[0, 0], [step, 0], [0, step], [step, step]], np.int64)
            coords = (parent_coords[:, None, :] + offsets[None]).reshape(-1, 2)
            parent = np.repeat(np.arange(len(parent_coords)), 4)
        features = rng.standard_normal((len(coords), DIM)).astype(np.float32)
        levels[mag] = {"coords": coords, "parent": parent, "features": features}
        parent_coords = coords
    return levels


def write_bag(path: Path, levels: dict, batch: int | None = None, **options) -> Path:
    """Write `levels` with BagWriter, features in batches of `batch` rows (all at once when None)."""
    with BagWriter(path, attrs={"encoder": "test", "tissue": {"threshold": 0.5}}, **options) as writer:
        for mag, level in levels.items():
            writer.add_magnification(mag, level["coords"], level["parent"], {"mpp": 10 / float(mag[:-1])})
        for mag, level in levels.items():
            step = batch or len(level["features"])
            for start in range(0, len(level["features"]), step):
                writer.append_features(mag, level["features"][start : start + step])
    return path


def test_h5_and_zarr_round_trips_are_identical(tmp_path):
    levels = nested_bag()
    bags = {fmt: read_bag(write_bag(bag_path(tmp_path, "slide1", fmt), levels)) for fmt in ("h5", "zarr")}
    for bag in bags.values():
        assert bag.bag_id == "slide1"
        assert bag.magnifications == ("5x", "10x", "20x")
        for mag, level in levels.items():
            np.testing.assert_array_equal(bag.features[mag].numpy(), level["features"])
            np.testing.assert_array_equal(bag.coords[mag].numpy(), level["coords"])
            np.testing.assert_array_equal(bag.parents[mag].numpy(), level["parent"])
            assert bag.features[mag].dtype == torch.float32 and bag.coords[mag].dtype == torch.int64
    infos = [bag_info(bag_path(tmp_path, "slide1", fmt)) for fmt in ("h5", "zarr")]
    for info in infos:
        assert info.native and info.counts == {"5x": 3, "10x": 12, "20x": 48}
        assert info.feature_dim == DIM and info.features_dtype == "float32"
        assert info.attrs["format"] == FORMAT and info.attrs["finest"] == "20x"
        assert info.attrs["tissue"] == {"threshold": 0.5} and info.attrs["encoder"] == "test"
        assert info.coords_attrs["10x"] == {"magnification": "10x", "mpp": 1.0}
    # the two files were written moments apart: everything but the creation time is identical
    assert {k: v for k, v in infos[0].attrs.items() if k != "created"} == {
        k: v for k, v in infos[1].attrs.items() if k != "created"}


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_streamed_batches_equal_one_write(tmp_path, fmt):
    levels = nested_bag(seed=1)
    whole = write_bag(bag_path(tmp_path / "whole", "b", fmt), levels)
    streamed = write_bag(bag_path(tmp_path / "streamed", "b", fmt), levels, batch=5)
    a, b = read_bag(whole), read_bag(streamed)
    for mag in levels:
        assert torch.equal(a.features[mag], b.features[mag])


def test_streaming_spans_many_chunks(tmp_path, monkeypatch):
    import cmamil.store.writer as writer

    monkeypatch.setattr(writer, "_CHUNK_BYTES", 7 * DIM * 4)  # 7-row chunks: batches of 5 straddle chunk edges
    levels = nested_bag(seed=2)
    path = write_bag(bag_path(tmp_path, "b", "zarr"), levels, batch=5)
    np.testing.assert_array_equal(read_bag(path).features["20x"].numpy(), levels["20x"]["features"])


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_streaming_memory_does_not_grow_with_bag_size(tmp_path, fmt):
    import tracemalloc

    write_bag(bag_path(tmp_path, "warm", fmt), nested_bag())  # first-use imports are not part of the measure
    rows, dim = 160_000, 64  # 40 MiB of float32 features, written 1,000 rows at a time
    batch = np.ones((1000, dim), np.float32)
    tracemalloc.start()
    with BagWriter(bag_path(tmp_path, "big", fmt)) as writer:
        writer.add_magnification("20x", np.zeros((rows, 2), np.int64))
        tracemalloc.reset_peak()
        for _ in range(rows // 1000):
            writer.append_features("20x", batch)
        peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20  # a few 1 MiB chunks in flight, not the 40 MiB bag
    assert bag_info(bag_path(tmp_path, "big", fmt)).counts == {"20x": rows}


def test_soft_links_give_a_clam_style_read(tmp_path):
    levels = nested_bag()
    path = write_bag(bag_path(tmp_path, "slide1"), levels)
    with h5py.File(path, "r") as f:
        assert f.get("features", getlink=True).path == "/20x/features"
        assert f.get("coords", getlink=True).path == "/20x/coords"
        np.testing.assert_array_equal(f["features"][:], levels["20x"]["features"])
        np.testing.assert_array_equal(f["coords"][:], levels["20x"]["coords"])


def test_exception_leaves_no_final_and_no_temp_file(tmp_path):
    levels = nested_bag()
    for fmt in ("h5", "zarr"):
        path = bag_path(tmp_path, "broken", fmt)
        with pytest.raises(RuntimeError, match="encoder crashed"):
            with BagWriter(path) as writer:
                writer.add_magnification("20x", levels["20x"]["coords"])
                writer.append_features("20x", levels["20x"]["features"][:10])
                assert len(list(tmp_path.iterdir())) == 1  # the hidden temporary file
                raise RuntimeError("encoder crashed")
        assert not path.exists() and not is_complete(path)
    assert list(tmp_path.iterdir()) == []


def test_missing_rows_fail_the_commit(tmp_path):
    levels = nested_bag()
    path = bag_path(tmp_path, "short")
    with pytest.raises(ValueError, match="20x has 10 of 48 feature rows"):
        with BagWriter(path) as writer:
            writer.add_magnification("20x", levels["20x"]["coords"])
            writer.append_features("20x", levels["20x"]["features"][:10])
    assert list(tmp_path.iterdir()) == []


def test_parent_out_of_range_fails_the_commit(tmp_path):
    levels = nested_bag()
    levels["10x"]["parent"][0] = 3  # the 5x group has only 3 rows
    with pytest.raises(ValueError, match="10x parent index 3 >= 3 rows of 5x"):
        write_bag(bag_path(tmp_path, "bad"), levels)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_in_one_folder_use_distinct_temp_names(tmp_path):
    levels = nested_bag()
    a, b = BagWriter(bag_path(tmp_path, "a")), BagWriter(bag_path(tmp_path, "a"))
    with a, b:
        for writer in (a, b):
            writer.add_magnification("20x", levels["20x"]["coords"])
            writer.append_features("20x", levels["20x"]["features"])
        temps = sorted(p.name for p in tmp_path.iterdir())
        assert len(temps) == 2 and all(n.startswith(f".a.h5.{os.getpid()}-") for n in temps)
    assert list_bags(tmp_path) == [tmp_path / "a.h5"]


def test_existing_file_needs_overwrite(tmp_path):
    levels = nested_bag()
    for fmt in ("h5", "zarr"):
        path = write_bag(bag_path(tmp_path, "b", fmt), levels)
        with pytest.raises(InputError, match="already exists"):
            write_bag(path, levels)
        write_bag(path, nested_bag(seed=3), overwrite=True)
        np.testing.assert_array_equal(read_bag(path).features["5x"].numpy(), nested_bag(seed=3)["5x"]["features"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.h5", "b.zarr"]


def test_bag_info_follows_a_rewritten_file_and_hands_out_copies(tmp_path):
    for fmt in ("h5", "zarr"):
        path = write_bag(bag_path(tmp_path, "b", fmt), nested_bag())
        first = bag_info(path)
        first.attrs["encoder"] = "changed by the caller"
        first.counts.clear()
        again = bag_info(path)
        assert again.attrs["encoder"] == "test" and again.counts == {"5x": 3, "10x": 12, "20x": 48}
        write_bag(path, {m: level for m, level in nested_bag().items() if m != "20x"}, overwrite=True)
        assert bag_info(path).magnifications == ("5x", "10x")


def test_truncated_h5_gives_one_line_error(tmp_path):
    path = write_bag(bag_path(tmp_path, "cut"), nested_bag())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = f"{path} is not a readable feature file (truncated?); delete it and re-run extraction"
    for call in (read_bag, bag_info, is_complete):
        with pytest.raises(InputError) as err:
            call(path)
        assert str(err.value) == message


def test_float16_storage(tmp_path):
    levels = nested_bag()
    path = write_bag(bag_path(tmp_path, "half"), levels, features_dtype="float16")
    with h5py.File(path, "r") as f:
        assert f["20x/features"].dtype == np.float16
    assert bag_info(path).features_dtype == "float16"
    assert read_bag(path, dtype=None).features["20x"].dtype == torch.float16
    bag = read_bag(path)
    assert bag.features["20x"].dtype == torch.float32
    expected = levels["20x"]["features"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(bag.features["20x"].numpy(), expected)


def test_torch_batches_are_accepted(tmp_path):
    levels = nested_bag()
    path = bag_path(tmp_path, "t")
    with BagWriter(path) as writer:
        writer.add_magnification("20x", levels["20x"]["coords"])
        writer.append_features("20x", torch.from_numpy(levels["20x"]["features"]).to(torch.bfloat16))
    expected = torch.from_numpy(levels["20x"]["features"]).to(torch.bfloat16).float()
    assert torch.equal(read_bag(path).features["20x"], expected)


def test_subset_of_magnifications_composes_parent_links(tmp_path):
    levels = nested_bag()
    path = write_bag(bag_path(tmp_path, "b"), levels)
    bag = read_bag(path, ["20x", "5x"])
    assert bag.magnifications == ("5x", "20x")
    expected = levels["10x"]["parent"][levels["20x"]["parent"]]  # 20x → 10x → 5x
    np.testing.assert_array_equal(bag.parents["20x"].numpy(), expected)
    assert bag.parents["20x"].tolist()[:16] == [0] * 16
    only_fine = read_bag(path, ["20x"])
    assert only_fine.parents["20x"].tolist() == [-1] * 48
    with pytest.raises(InputError, match="has no magnification 40x; it has 5x, 10x, 20x"):
        read_bag(path, ["40x"])


def test_coordinate_only_file(tmp_path):
    levels = nested_bag()
    path = bag_path(tmp_path, "tiles")
    with BagWriter(path, coords_only=True, attrs={"tile_px": 224}) as writer:
        for mag, level in levels.items():
            writer.add_magnification(mag, level["coords"], level["parent"])
    info = bag_info(path)
    assert not info.has_features and info.counts["20x"] == 48 and info.attrs["tile_px"] == 224
    assert is_complete(path, with_features=False) and not is_complete(path)
    with h5py.File(path, "r") as f:
        assert "features" not in f
        np.testing.assert_array_equal(f["coords"][:], levels["20x"]["coords"])
    with pytest.raises(InputError, match="coordinates only"):
        read_bag(path)


def test_list_bags_ignores_temporary_files(tmp_path):
    write_bag(bag_path(tmp_path, "b"), nested_bag())
    write_bag(bag_path(tmp_path, "a", "zarr"), nested_bag())
    (tmp_path / ".c.h5.123-abcd.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    assert list_bags(tmp_path) == [tmp_path / "a.zarr", tmp_path / "b.h5"]
    assert is_complete(tmp_path / "b.h5") and not is_complete(tmp_path / "c.h5")


def test_list_bags_finds_bags_kept_in_folders_of_their_own(tmp_path):
    write_bag(bag_path(tmp_path, "b"), nested_bag())
    write_bag(tmp_path / "c.hdf5", nested_bag())
    write_bag(tmp_path / "a" / "features.h5", nested_bag())
    write_bag(tmp_path / "d" / "features.zarr", nested_bag())
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "features.txt").write_text("x")
    (tmp_path / "e" / ".features.h5.123-abcd.tmp").write_bytes(b"partial")
    (tmp_path / ".f").mkdir()
    write_bag(tmp_path / ".f" / "features.h5", nested_bag())
    bags = list_bags(tmp_path)
    expected = [tmp_path / "a" / "features.h5", tmp_path / "b.h5", tmp_path / "c.hdf5", tmp_path / "d" / "features.zarr"]
    assert bags == expected
    assert [bag_id_from_path(p) for p in bags] == ["a", "b", "c", "d"]
    assert [bag_info(p).bag_id for p in bags] == ["a", "b", "c", "d"]


def test_magnification_names_must_be_canonical(tmp_path):
    with BagWriter(bag_path(tmp_path, "a"), coords_only=True) as writer:
        bad_names = {"20": "name the group '20x'", "0.5mpp": "name the group '0.5um'", "all": "neither"}
        for bad, message in bad_names.items():
            with pytest.raises(InputError, match=message):
                writer.add_magnification(bad, [[0, 0]])
        writer.add_magnification("0.5um", [[0, 0]])
    assert bag_info(tmp_path / "a.h5").magnifications == ("0.5um",)


def test_clam_style_foreign_file(tmp_path):
    rng = np.random.default_rng(0)
    features, coords = rng.standard_normal((7, 5)).astype(np.float32), rng.integers(0, 999, (7, 2))
    path = tmp_path / "TCGA-XX.h5"
    with h5py.File(path, "w") as f:
        f["features"] = features
        f.create_dataset("coords", data=coords).attrs["target_magnification"] = 20
    bag = read_bag(path)
    assert bag.bag_id == "TCGA-XX" and bag.magnifications == ("20x",)
    np.testing.assert_array_equal(bag.features["20x"].numpy(), features)
    np.testing.assert_array_equal(bag.coords["20x"].numpy(), coords)
    assert bag.parents["20x"].tolist() == [-1] * 7
    assert read_bag(path, foreign_magnification="40x").magnifications == ("40x",)
    assert not bag_info(path).native


def test_file_without_features_is_rejected(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["embeddings"] = np.zeros((2, 2))
    with pytest.raises(InputError, match="neither a cmamil layout nor a 'features'/'feats' dataset"):
        read_bag(path)
    with pytest.raises(InputError, match="does not exist"):
        read_bag(tmp_path / "missing.h5")


@pytest.mark.skipif(not MOPADI.is_dir(), reason="shared/data/mopadi_tcga_features is absent")
def test_real_mopadi_files_load_as_bags():
    stamp = read_bag(MOPADI / "TCGA-AD-6964-01Z-00-DX1" / "features.h5")  # `feats` + `coords`
    assert stamp.bag_id == "TCGA-AD-6964-01Z-00-DX1" and stamp.magnifications == ("all",)
    assert stamp.features["all"].shape == (777, 512) and stamp.coords["all"].shape == (777, 2)
    with h5py.File(MOPADI / "TCGA-AD-6964-01Z-00-DX1" / "features.h5", "r") as f:
        np.testing.assert_array_equal(stamp.features["all"].numpy(), f["feats"][:])
        assert stamp.coords["all"][:, 0].tolist() == f["coords"][:, 0].tolist()
    bare = read_bag(MOPADI / "TCGA-3X-AAVA-01Z-00-DX1" / "features.h5", foreign_magnification="20x")
    assert bare.features["20x"].shape == (180, 512) and bare.coords == {}
    assert bag_info(MOPADI / "TCGA-3X-AAVA-01Z-00-DX1" / "features.h5").counts == {"all": 180}
