"""Nested multi-magnification grids: invariants, hand-computed tile counts, exact sizes and file round trips."""

from __future__ import annotations

import numpy as np
import pytest

from cmamil.errors import InputError
from cmamil.extract.grid import TilingConfig, load_grid, plan_tiles
from cmamil.extract.reader import open_slide
from cmamil.synthetic import Region, SyntheticTissue, write_slide
from cmamil.extract.tissue import TissueConfig
from cmamil.store import bag_info


@pytest.fixture(scope="module")
def blocky(tmp_path_factory):
    """2100 x 1600 px at 0.5 µm/px. With 64-px tiles a 5x tile is 256 level-0 px, 10x 128, 20x 64: a grid of
    9 x 7 5x tiles whose last column and row extend past the slide.

    Tissue: a block of 3 x 2 whole 5x tiles, and a strip filling the left half (one 10x column) of three 5x tiles
    stacked vertically (64 x 384 µm, above the 20,000 µm² small-object limit).
    """
    regions = (Region(256, 256, 768, 512), Region(1536, 768, 128, 768))
    tissue = SyntheticTissue(regions, mpp=0.5)
    return write_slide(tmp_path_factory.mktemp("grid") / "blocky.tiff", tissue, size=(2100, 1600), mpp=0.5)


@pytest.fixture(scope="module")
def irregular(tmp_path_factory):
    """An odd-sized slide at 0.265 µm/px (non-integer tile sizes) with ellipses of tissue."""
    regions = (Region(150, 120, 1300, 900, "ellipse"), Region(1500, 700, 700, 1100, "ellipse"))
    tissue = SyntheticTissue(regions, mpp=0.265)
    return write_slide(tmp_path_factory.mktemp("grid") / "irregular.tiff", tissue, size=(2333, 1901), mpp=0.265)


def test_counts_match_a_hand_computation(blocky):
    reader = open_slide(blocky)
    grid = plan_tiles(reader, TilingConfig(tile_px=64, min_tissue=0.5))
    # block: 6 whole 5x tiles -> 24 10x -> 96 20x; strip: 3 x 2 10x and 3 x 8 20x tiles, and their three 5x
    # parents (kept as ancestors of kept tiles although only half of each is tissue)
    assert grid.counts == {"5x": 9, "10x": 30, "20x": 120}
    assert [t.tile_size_level0 for t in grid.tile_sets] == [256.0, 128.0, 64.0]
    assert sorted(map(tuple, grid["5x"].coords)) == sorted(
        [(x, y) for x in (256, 512, 768) for y in (256, 512)] + [(1536, y) for y in (768, 1024, 1280)]
    )
    strip_parent = next(i for i, c in enumerate(grid["5x"].coords) if tuple(c) == (1536, 1024))
    assert grid["5x"].tissue[strip_parent] == pytest.approx(0.5, abs=0.05)
    assert set(map(tuple, grid["10x"].coords[grid["10x"].parent == strip_parent])) == {(1536, 1024), (1536, 1152)}


def test_thresholds_per_magnification_and_whole_slide(blocky):
    reader = open_slide(blocky)
    everything = plan_tiles(reader, TilingConfig(tile_px=64, min_tissue=0.0))
    # every tile whose top-left lies inside the slide: x < 2100, y < 1600
    assert everything.counts == {"5x": 9 * 7, "10x": 17 * 13, "20x": 33 * 25}
    edge = everything["5x"].tissue[everything["5x"].coords[:, 0] == 2048]
    assert edge.max() == 0.0  # no tissue there, and the part outside the slide is background
    whole = plan_tiles(reader, TilingConfig(tile_px=64, min_tissue=0.0, tissue=TissueConfig(method="none")))
    assert whole.counts == everything.counts
    assert whole["5x"].tissue.min() == pytest.approx((2100 - 2048) * (1600 - 1536) / 256**2, abs=0.02)
    strict_coarse = plan_tiles(reader, TilingConfig(tile_px=64, min_tissue=(0.9, 0.5, 0.5)))
    assert strict_coarse.counts == {"5x": 9, "10x": 30, "20x": 120}  # half tiles survive through their children
    assert plan_tiles(reader, TilingConfig(tile_px=64, magnifications="5", min_tissue=0.6)).counts == {"5x": 6}
    assert plan_tiles(reader, TilingConfig(tile_px=64, magnifications="5", min_tissue=0.4)).counts == {"5x": 9}
    in_microns = plan_tiles(reader, TilingConfig(tile_px=64, min_tissue=0.5, magnifications="2um,1um,0.5um"))
    assert in_microns.names == ("2um", "1um", "0.5um")
    assert list(in_microns.counts.values()) == [9, 30, 120]


def test_nesting_invariants_on_irregular_tissue(irregular):
    reader = open_slide(irregular)
    grid = plan_tiles(reader, TilingConfig(tile_px=64, min_tissue=(0.1, 0.3, 0.5)))
    width, height = reader.dimensions
    assert grid.resolution.mpp == pytest.approx(0.265) and grid.resolution.source == "openslide.mpp"
    assert grid["5x"].tile_size_level0 == pytest.approx(64 * 2.0 / 0.265)  # 483.02: tiles are not whole pixels
    assert len(grid["5x"]) >= 8 and len(grid["20x"]) > len(grid["10x"]) > len(grid["5x"])
    assert (grid["5x"].parent == -1).all()
    for coarse, fine in zip(grid.tile_sets, grid.tile_sets[1:]):
        size = fine.tile_size_level0
        assert fine.tile_size_level0 * 2 == pytest.approx(coarse.tile_size_level0)
        assert (fine.coords >= 0).all()
        assert (fine.coords[:, 0] < width).all() and (fine.coords[:, 1] < height).all()
        assert fine.parent.min() >= 0 and fine.parent.max() < len(coarse)
        assert (np.diff(fine.parent) >= 0).all()  # children of one parent are contiguous
        parent_xy = coarse.coords[fine.parent]
        assert (fine.coords >= parent_xy).all()
        assert (fine.coords + size <= parent_xy + coarse.tile_size_level0 + 1).all()  # inside, to rounding
        assert np.bincount(fine.parent).max() <= 4
        # a kept tile passes its own threshold or is the parent of a kept finer tile
        has_child = np.isin(np.arange(len(coarse)), fine.parent)
        assert ((coarse.tissue >= coarse.min_tissue) | has_child).all()
    assert (grid["20x"].tissue >= 0.5).all()
    to_5x = grid["10x"].parent[grid["20x"].parent]
    assert np.bincount(to_5x).max() <= 16
    centres = grid["20x"].coords + grid["20x"].tile_size_level0 / 2
    assert len(np.unique(grid["20x"].coords, axis=0)) == len(grid["20x"])
    assert centres.max() < max(width, height)


def test_exact_tile_sizes_and_read_levels_follow_the_slide_resolution(tmp_path):
    rgb = np.full((2400, 3000, 3), 255, np.uint8)
    rgb[300:2100, 300:2700] = (200, 120, 180)
    grids = {}
    for mpp in (0.25, 0.265):
        reader = open_slide(write_slide(tmp_path / f"{mpp}.tiff", rgb, mpp=mpp, smallest_level=400))
        grids[mpp] = plan_tiles(reader, TilingConfig())
        assert reader.level_downsamples == pytest.approx((1, 2, 4, 8))
    sizes = {mpp: [t.tile_size_level0 for t in g.tile_sets] for mpp, g in grids.items()}
    assert sizes[0.25] == pytest.approx([1792.0, 896.0, 448.0])
    assert sizes[0.265] == pytest.approx([224 * m / 0.265 for m in (2.0, 1.0, 0.5)])
    assert sizes[0.25][2] / sizes[0.265][2] == pytest.approx(0.265 / 0.25)
    # the coarsest level with enough pixels: 0.25 needs downsamples 8/4/2, 0.265 needs 7.55/3.77/1.89
    assert [t.read_level for t in grids[0.25].tile_sets] == [3, 2, 1]
    assert [t.read_level for t in grids[0.265].tile_sets] == [2, 1, 0]
    assert grids[0.265]["20x"].attrs["tile_size_level0"] == pytest.approx(422.6415, abs=1e-4)


def test_impossible_plans_are_one_line_errors(blocky, tmp_path):
    reader = open_slide(blocky)
    with pytest.raises(InputError, match=r"40x \(0.25 µm/px\) would need upsampling"):
        plan_tiles(reader, TilingConfig(magnifications="10,20,40"))
    speck = np.full((1000, 1000, 3), 255, np.uint8)
    speck[100:400, 100:400] = (200, 120, 180)  # 150 µm square: 11 % of one 5x tile
    small = open_slide(write_slide(tmp_path / "speck.tiff", speck, mpp=0.5))
    with pytest.raises(InputError, match=r"^no 5x tile of speck.tiff reaches 50% tissue \(tissue covers 9"):
        plan_tiles(small, TilingConfig(magnifications="5", min_tissue=0.5))
    assert plan_tiles(small, TilingConfig(magnifications="5", min_tissue=0.1)).counts == {"5x": 1}
    with pytest.raises(InputError, match="one per magnification"):
        TilingConfig(min_tissue=(0.1, 0.2))
    with pytest.raises(InputError, match="tissue method 'otsu' is unknown"):
        TissueConfig(method="otsu")


@pytest.mark.parametrize("suffix", ["h5", "zarr"])
def test_coordinate_file_round_trip(blocky, tmp_path, suffix):
    grid = plan_tiles(open_slide(blocky), TilingConfig(tile_px=64, min_tissue=0.5))
    path = grid.save(tmp_path / f"blocky.{suffix}")
    info = bag_info(path)
    assert not info.has_features and info.counts == grid.counts
    assert info.attrs["mpp_source"] == "openslide.mpp" and info.attrs["source"]["vendor"] == "generic-tiff"
    assert info.coords_attrs["10x"]["tile_size_level0"] == 128.0
    loaded = load_grid(path)
    assert loaded.config == grid.config and loaded.resolution == grid.resolution
    for before, after in zip(grid.tile_sets, loaded.tile_sets):
        assert np.array_equal(before.coords, after.coords) and np.array_equal(before.parent, after.parent)
        assert before.attrs == after.attrs
