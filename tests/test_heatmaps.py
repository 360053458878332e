"""Heatmaps painted on the tile grid, tile overlap with a region map, and the localisation AUC, by hand."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from cmamil.evaluation.heatmaps import localisation_auc, paint_tiles, save_panels, tile_overlap


def test_tiles_are_painted_at_their_level0_squares():
    coords = np.array([[0, 0], [64, 0], [64, 64]])
    heat = paint_tiles(coords, 64.0, np.array([0.1, 0.5, 0.9]), (4, 4), downsample=32.0)
    expected = np.full((4, 4), np.nan, dtype=np.float32)
    expected[0:2, 0:2], expected[0:2, 2:4], expected[2:4, 2:4] = 0.1, 0.5, 0.9
    np.testing.assert_array_equal(heat, expected)


def test_tile_overlap_and_localisation_auc_by_hand(tmp_path):
    region = np.zeros((128, 128), bool)
    region[0:32, 0:64] = True  # half of tile 0, nothing of the others
    coords = np.array([[0, 0], [64, 0], [0, 64], [64, 64]])
    overlap = tile_overlap(coords, 64.0, region)
    np.testing.assert_allclose(overlap, [0.5, 0.0, 0.0, 0.0])
    inside = overlap > 0
    assert localisation_auc(inside.astype(float), inside) == 1.0  # attention equal to the truth map
    assert localisation_auc(-inside.astype(float), inside) == 0.0
    assert localisation_auc([0.4, 0.1, 0.4, 0.2], inside) == (1 + 1 + 0.5) / 3  # ties count half
    assert math.isnan(localisation_auc([0.1, 0.2, 0.3, 0.4], [False] * 4))
    thumbnail = np.full((4, 4, 3), 200, np.uint8)
    path = save_panels(tmp_path / "h.png", thumbnail, {"20x": paint_tiles(coords, 64.0, overlap, (4, 4), 32.0)}, "t")
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100
