"""The synthetic cohort: tissue and signal placement against the generator's own ground-truth map."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmamil.errors import InputError
from cmamil.data.labels import read_labels
from cmamil.synthetic import REGION_CODES, CohortConfig, make_cohort, render_slide

CONFIG = CohortConfig()


def enclosed_by_walls(regions: np.ndarray, code: int) -> bool:
    """True when every pixel of region `code` is cut off from the slide border by ring walls."""
    open_space, _ = ndimage.label(regions != REGION_CODES["wall"])
    outside = np.unique(np.concatenate([open_space[0], open_space[-1], open_space[:, 0], open_space[:, -1]]))
    return not np.isin(open_space[regions == code], outside).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_positive_slides_enclose_texture_and_negatives_never_do(seed):
    rng = np.random.default_rng(seed)
    _, positive = render_slide(CONFIG, True, rng)
    _, negative = render_slide(CONFIG, False, np.random.default_rng(seed))
    inside, outside = REGION_CODES["texture_inside"], REGION_CODES["texture_outside"]
    assert (positive == inside).any() and not (positive == outside).any()
    assert enclosed_by_walls(positive, inside)
    assert not (negative == inside).any()
    assert (negative == outside).any()
    assert not enclosed_by_walls(negative, outside)
    distance_um = ndimage.distance_transform_edt(negative != REGION_CODES["wall"]) * CONFIG.mpp
    assert distance_um[negative == outside].min() >= CONFIG.separation_um  # far from every wall
    distance_um = ndimage.distance_transform_edt(positive != REGION_CODES["wall"]) * CONFIG.mpp
    assert distance_um[positive == inside].min() == pytest.approx(CONFIG.gap_um, abs=2 * CONFIG.mpp)
    # both classes hold the same amount of wall and of texture: only its placement differs
    assert (positive == REGION_CODES["wall"]).sum() == pytest.approx((negative == REGION_CODES["wall"]).sum(), rel=0.02)
    texture = lambda r: ((r == inside) | (r == outside)).sum()  # noqa: E731
    assert texture(positive) == pytest.approx(texture(negative), rel=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_signal_the_classes_draw_the_same_slide(seed):
    """Rings and tissue follow one distribution in both classes: with the texture removed, a positive and a
    negative slide drawn from the same seed are the same pixels, so nothing but the texture's place tells them apart."""
    silent = CohortConfig(signal=0.0)
    positive, positive_regions = render_slide(silent, True, np.random.default_rng(seed))
    negative, negative_regions = render_slide(silent, False, np.random.default_rng(seed))
    np.testing.assert_array_equal(positive, negative)
    walls = REGION_CODES["wall"]
    np.testing.assert_array_equal(positive_regions == walls, negative_regions == walls)
    assert (positive_regions == REGION_CODES["texture_inside"]).any()
    assert (negative_regions == REGION_CODES["texture_outside"]).any()


def test_tissue_map_matches_pixels():
    rgb, regions = render_slide(CONFIG, True, np.random.default_rng(3))
    background = rgb[regions == REGION_CODES["background"]].astype(float)
    tissue = rgb[regions != REGION_CODES["background"]].astype(float)
    assert background.min(axis=1).mean() > 230  # near-white glass
    assert tissue[:, 1].mean() < 190  # stained: the green channel is absorbed
    assert 0.4 < (regions != REGION_CODES["background"]).mean() < 0.9


def test_texture_is_visible_at_20x_and_averages_away_at_5x():
    with_signal, regions = render_slide(CONFIG, True, np.random.default_rng(5))
    without, same_regions = render_slide(
        CohortConfig(signal=0.0), True, np.random.default_rng(5)
    )
    np.testing.assert_array_equal(regions, same_regions)
    disc = regions == REGION_CODES["texture_inside"]
    diff = with_signal.astype(float) - without.astype(float)
    assert np.abs(diff[disc]).mean() > 15  # level 0 (0.5 µm/px, 20×): strong stipple
    side = (diff.shape[0] // 4) * 4
    coarse = diff[:side, :side].reshape(side // 4, 4, side // 4, 4, 3).mean(axis=(1, 3))  # 2 µm/px (5×)
    coarse_disc = disc[:side, :side].reshape(side // 4, 4, side // 4, 4).all(axis=(1, 3))
    assert np.abs(coarse[coarse_disc]).mean() < 1.5


def test_config_validation():
    with pytest.raises(InputError, match="prevalence"):
        CohortConfig(prevalence=1.0)
    with pytest.raises(InputError, match="too small"):
        CohortConfig(ring_radius_um=10.0)


def test_cohort_labels_are_drawn_per_patient(tmp_path):
    config = CohortConfig(n_slides=4, size_um=900.0, sites_per_slide=1, separation_um=100.0, slides_per_patient=2)
    slides = make_cohort(tmp_path, config)
    table = read_labels(tmp_path / "labels.csv")
    assert table.slide_ids == ("slide_000", "slide_001", "slide_002", "slide_003")
    assert table.patients == ("patient_000", "patient_000", "patient_001", "patient_001")
    assert table.class_names == ("negative", "positive")
    assert table.labels[0] == table.labels[1] and table.labels[2] == table.labels[3] and sum(table.labels) == 2
    assert [s.label for s in slides] == [table.class_names[k] for k in table.labels]
    assert all(s.path.is_file() and s.truth_path.is_file() for s in slides)


def test_the_cohort_is_the_same_for_any_number_of_workers(tmp_path):
    import tifffile

    config = CohortConfig(n_slides=4, seed=7)
    serial = make_cohort(tmp_path / "one", config, workers=1)
    parallel = make_cohort(tmp_path / "two", config, workers=2)
    for a, b in zip(serial, parallel):
        assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
        np.testing.assert_array_equal(tifffile.imread(a.path), tifffile.imread(b.path))
    assert (tmp_path / "one" / "labels.csv").read_text() == (tmp_path / "two" / "labels.csv").read_text()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_20x_tile_holds_texture_and_wall(seed):
    """The single-scale cue is closed: texture lies farther from every wall than a 20x demo tile's diagonal."""
    tile_um = 64 * CONFIG.mpp  # the demo's 64-px tiles at 20x (0.5 µm/px)
    assert CONFIG.gap_um > tile_um * np.sqrt(2)
    _, positive = render_slide(CONFIG, True, np.random.default_rng(seed))
    texture = positive == REGION_CODES["texture_inside"]
    distance_um = ndimage.distance_transform_edt(positive != REGION_CODES["wall"]) * CONFIG.mpp
    assert distance_um[texture].min() > tile_um * np.sqrt(2)
    side = 64
    both = [
        (texture[y:y + side, x:x + side].any() and (positive[y:y + side, x:x + side] == REGION_CODES["wall"]).any())
        for y in range(0, positive.shape[0], side // 2) for x in range(0, positive.shape[1], side // 2)
    ]
    assert not any(both)
