"""Slides: synthetic pyramidal TIFFs read back through OpenSlide, resolution sources, exact-magnification reads,
tissue detection on known areas, and readers that survive pickling and forking."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from cmamil.errors import InputError
from cmamil.extract.reader import ImageReader, OpenSlideReader, open_slide
from cmamil.extract.resolution import resolve_mpp
from cmamil.synthetic import Region, SyntheticTissue, write_slide
from cmamil.extract.tissue import TissueConfig, find_tissue


def stripes(mpp: float, period_um: float = 8.0):
    """A tile source of vertical black/white stripes `period_um` wide per pair, whatever the scan resolution."""

    def source(x: int, y: int, w: int, h: int) -> np.ndarray:
        phase = ((np.arange(x, x + w) + 0.5) * mpp / (period_um / 2)).astype(int) % 2
        row = np.where(phase[None, :, None] == 1, 0, 255).astype(np.uint8)
        return np.broadcast_to(row, (h, w, 3)).copy()

    return source


def mean_period(row: np.ndarray) -> float:
    """Mean stripe period (px) of a 1-D intensity profile, from its dark/light transitions."""
    dark = row < 128
    edges = np.flatnonzero(dark[1:] != dark[:-1])
    return 2 * (edges[-1] - edges[0]) / (len(edges) - 1)


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory):
    """A 2048 x 1536 slide at 0.5 µm/px with one rectangle and one ellipse of tissue (known areas)."""
    tissue = SyntheticTissue((Region(200, 300, 700, 500), Region(1200, 400, 600, 800, "ellipse")), mpp=0.5)
    path = write_slide(tmp_path_factory.mktemp("slides") / "tissue.tiff", tissue, size=(2048, 1536), mpp=0.5)
    return path, tissue


def test_written_slide_opens_in_openslide_with_mpp_levels_and_pixels(tissue_slide):
    path, tissue = tissue_slide
    slide = openslide.OpenSlide(str(path))
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    assert slide.level_dimensions == ((2048, 1536), (1024, 768))
    assert slide.level_downsamples == pytest.approx((1.0, 2.0))
    truth = tissue(0, 0, 2048, 1536).astype(np.float32)
    level0 = np.asarray(slide.read_region((0, 0), 0, (2048, 1536)))[..., :3].astype(np.float32)
    assert np.abs(level0 - truth).mean() < 4  # JPEG loss only
    level1 = np.asarray(slide.read_region((0, 0), 1, (1024, 768)))[..., :3].astype(np.float32)
    box = truth.reshape(768, 2, 1024, 2, 3).mean(axis=(1, 3))
    assert np.abs(level1 - box).mean() < 4


def test_array_source_with_aperio_metadata(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    path = write_slide(tmp_path / "a.svs", rgb, mpp=0.2528, objective_power=40, vendor="aperio", smallest_level=128)
    slide = openslide.OpenSlide(str(path))
    assert openslide.OpenSlide.detect_format(str(path)) == "aperio"
    assert slide.level_dimensions == ((500, 300), (250, 150), (125, 75))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.2528)
    assert slide.properties["openslide.objective-power"] == "40"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("options", "source", "mpp", "objective"),
    [
        ({"mpp": 0.25}, "openslide.mpp", 0.25, None),
        ({"mpp": None, "objective_power": 20, "vendor": "aperio"}, "objective-power", 0.5, 20),
        ({"mpp": 0.3, "objective_power": 20, "vendor": "aperio"}, "openslide.mpp", 0.3, 20),
    ],
)
def test_resolution_source_is_recorded(tmp_path, options, source, mpp, objective):
    path = write_slide(tmp_path / "s.tiff", np.full((64, 64, 3), 200, np.uint8), **options)
    resolution = resolve_mpp(open_slide(path))
    assert (resolution.source, resolution.mpp, resolution.objective_power) == (source, pytest.approx(mpp), objective)


def test_tiff_resolution_tags_of_a_plain_image(tmp_path):
    path = tmp_path / "micro.tif"
    per_cm = 1e4 / 0.65
    tifffile.imwrite(path, np.zeros((40, 60, 3), np.uint8), resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    reader = open_slide(path)
    assert isinstance(reader, ImageReader)
    resolution = resolve_mpp(reader)
    assert (resolution.source, resolution.mpp) == ("tiff.resolution", pytest.approx(0.65))


def test_missing_metadata_asks_for_mpp_and_user_value_wins(tmp_path):
    path = write_slide(tmp_path / "bare.tiff", np.full((64, 64, 3), 200, np.uint8), mpp=None)
    reader = open_slide(path)
    with pytest.raises(InputError, match=r"^bare.tiff has no resolution metadata .*; pass --mpp, e\.g\. --mpp 0\.25"):
        resolve_mpp(reader)
    assert resolve_mpp(reader, mpp=0.3).source == "user"
    png = tmp_path / "screen.png"
    Image.new("RGB", (32, 32)).save(png, dpi=(72, 72))  # 352.8 µm/px: a screen default, not a microscope
    with pytest.raises(InputError, match="pass --mpp"):
        resolve_mpp(open_slide(png))


@pytest.mark.parametrize("slide_mpp", [0.25, 0.265])
def test_exact_magnification_reads_keep_physical_size(tmp_path, slide_mpp):
    """8 µm stripe pairs are 16 px at 20x whatever the scan resolution: 0.265 µm/px is not treated as 0.25."""
    size = 1600
    path = write_slide(
        tmp_path / "stripes.tiff", stripes(slide_mpp), size=(size, size), mpp=slide_mpp, smallest_level=256
    )
    reader = open_slide(path)
    size_level0 = 224 * 0.5 / slide_mpp
    tile = reader.read_scaled((37, 50), size_level0, 224)
    assert tile.shape == (224, 224, 3)
    assert mean_period(tile[100, :, 0].astype(float)) == pytest.approx(16.0, abs=0.15)
    assert reader.best_level(size_level0 / 224) == (1 if slide_mpp == 0.25 else 0)


def test_tissue_area_matches_the_planted_regions(tissue_slide):
    path, tissue = tissue_slide
    reader = open_slide(path)
    mask = find_tissue(reader, 0.5, TissueConfig())
    found = mask.mask.sum() * mask.scale[0] * mask.scale[1]
    assert found == pytest.approx(tissue.area, rel=0.05)
    whole = find_tissue(reader, 0.5, TissueConfig(method="none"))
    assert whole.fraction == 1.0
    fractions = mask.fractions(np.array([200.0, 1500.0, 0.0]), np.array([300.0, 800.0, 1300.0]), 224.0)
    assert fractions[0] > 0.9 and fractions[1] > 0.9 and fractions[2] == 0.0


def test_fluorescence_tissue_on_dark_background(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 6, (1200, 1600, 3)).astype(np.uint8)
    region = rgb[200:900, 300:1100]
    nuclei = rng.random(region.shape[:2]) < 0.15
    region[..., 2] = np.where(nuclei, 220, 25)
    path = write_slide(tmp_path / "dapi.tiff", rgb, mpp=0.5)
    mask = find_tissue(open_slide(path), 0.5, TissueConfig(method="fluorescence"))
    found = mask.mask.sum() * mask.scale[0] * mask.scale[1]
    assert 700 * 800 <= found <= 1.2 * 700 * 800  # the local mean that joins sparse nuclei widens edges a little
    inside = mask.fractions(np.array([300.0]), np.array([200.0]), 700.0)
    margin = 2 * 40 / 0.5  # two smoothing widths (40 µm) away from the region
    outside = mask.fractions(np.array([0.0, 1100 + margin]), np.array([900 + margin, 0.0]), 150.0)
    assert inside[0] == 1.0 and outside.max() == 0.0


def test_blank_slide_is_a_one_line_no_tissue_error(tmp_path):
    rgb = np.clip(245 + np.random.default_rng(0).normal(0, 2, (800, 800, 3)), 0, 255).astype(np.uint8)
    path = write_slide(tmp_path / "glass.tiff", rgb, mpp=0.5)
    with pytest.raises(InputError, match=r"^no tissue found in glass.tiff .*--tissue none"):
        find_tissue(open_slide(path), 0.5, TissueConfig())


def test_readers_pickle_as_a_path_and_reopen_after_fork(tissue_slide):
    path, _ = tissue_slide
    reader = open_slide(path)
    assert isinstance(reader, OpenSlideReader)
    expected = reader.read_region((300, 400), 0, (64, 64))
    payload = pickle.dumps(reader)
    assert len(payload) < 500
    assert np.array_equal(pickle.loads(payload).read_region((300, 400), 0, (64, 64)), expected)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        forked = pool.apply(_read_in_worker, (reader,))
    assert np.array_equal(forked, expected)


def _read_in_worker(reader):
    return reader.read_region((300, 400), 0, (64, 64))


def test_image_reader_pads_outside_with_white(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    reader = open_slide(path)
    assert reader.dimensions == (30, 20) and reader.level_count == 1
    region = reader.read_region((20, 10), 0, (20, 20))
    assert (region[:10, :10] == 0).all() and (region[10:] == 255).all() and (region[:, 10:] == 255).all()
    assert reader.thumbnail(15).shape == (10, 15, 3)


def test_unreadable_inputs_give_one_line_errors(tmp_path):
    (tmp_path / "note.svs").write_text("not a slide")
    with pytest.raises(InputError, match="^OpenSlide does not recognise note.svs"):
        open_slide(tmp_path / "note.svs")
    with pytest.raises(InputError, match="^slide not found"):
        open_slide(tmp_path / "absent.svs")
    (tmp_path / "table.xyz").write_text("x")
    with pytest.raises(InputError, match="is not a supported file type"):
        open_slide(tmp_path / "table.xyz")
