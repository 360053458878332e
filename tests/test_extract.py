"""Feature extraction: stored features against direct OpenSlide reads, h5 == zarr, CLAM-style reading, parents
from the tiling stage, resume after an interruption, failures recorded per bag, shards, image sets, the real
Aperio slide, and the allocator setting that keeps inference buffers mapped."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch
import zarr
from click.testing import CliRunner
from PIL import Image

from cmamil.cli import main
from cmamil.errors import InputError, PluginError
from cmamil.extract.encoder import CPU_SUB_BATCH_PIXELS, Encoder, cpu_computes_natively
from cmamil.extract.features import ExtractConfig, extract_slides
from cmamil.extract.grid import TilingConfig, plan_tiles
from cmamil.extract.loading import fixed_batches
from cmamil.extract.reader import OpenSlideReader, open_slide
from cmamil.synthetic import Region, SyntheticTissue, write_slide
from cmamil.models import create_model
from cmamil.store import BagWriter, bag_info, read_bag, read_coords

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMU = SHARED_DATA / "cmu1_small_region" / "CMU-1-Small-Region.svs"
TILING = TilingConfig("5,10,20", tile_px=32)


def manifest(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def small_slide(path: Path, seed: int = 0, size: tuple[int, int] = (512, 384), mpp: float | None = 0.5) -> Path:
    tissue = SyntheticTissue((Region(40, 40, size[0] - 120, size[1] - 100, "ellipse"),), mpp=0.5, seed=seed)
    return write_slide(path, tissue, size=size, mpp=mpp, smallest_level=256)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    """A 1536 x 1024 slide at 0.25 µm/px with levels 1, 2, 4, 8: 20x tiles are read from level 1."""
    tissue = SyntheticTissue((Region(100, 80, 1300, 820, "ellipse"),), mpp=0.25, nuclei_density=0.8)
    folder = tmp_path_factory.mktemp("pyramid")
    return write_slide(folder / "pyr.tiff", tissue, size=(1536, 1024), mpp=0.25, smallest_level=256)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A saved random example_cnn state dict, so extraction and the reference use the same weights."""
    path = tmp_path_factory.mktemp("weights") / "cnn.pth"
    torch.manual_seed(1)
    torch.save(create_model("example_cnn").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three small slides in one folder."""
    folder = tmp_path_factory.mktemp("cohort")
    for i, name in enumerate(("s1", "s2", "s3")):
        small_slide(folder / f"{name}.tiff", seed=i)
    return folder


def reference(model, path: Path, coords: np.ndarray, size: int, level: int, tile_px: int, input_px: int):
    """Features of tiles read one by one with OpenSlide at `level`, box-averaged to tile_px, resized, normalised."""
    slide = openslide.OpenSlide(str(path))
    scale = round(slide.level_downsamples[level])
    tiles = []
    for x, y in coords:
        region = slide.read_region((int(x), int(y)), level, (size // scale, size // scale)).convert("RGB")
        if region.width != tile_px:
            region = region.reduce(region.width // tile_px)
        if input_px != tile_px:
            region = region.resize((input_px, input_px), Image.Resampling.BICUBIC)
        tiles.append(np.asarray(region))
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(model.data_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.data_config.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.forward_features((x - mean) / std)


def test_features_equal_the_encoder_on_direct_openslide_reads(pyramid, weights, tmp_path):
    config = ExtractConfig(encoder="example_cnn", weights=str(weights), input_px=48, tiling=TILING, batch_size=16,
                           num_workers=1, device="cpu")
    [result] = extract_slides([pyramid], tmp_path, config)
    assert result.status == "done", result.error
    grid = plan_tiles(open_slide(pyramid), TILING)
    assert result.counts == grid.counts and grid["20x"].read_level == 1
    bag = read_bag(tmp_path / "pyr.h5")
    model = create_model("example_cnn", weights=str(weights)).eval()
    for tile_set in grid.tile_sets:
        mag = tile_set.magnification.name
        rows = np.linspace(0, len(tile_set) - 1, 5).astype(int)
        expected = reference(model, pyramid, tile_set.coords[rows], int(tile_set.tile_size_level0), 1, 32, 48)
        torch.testing.assert_close(bag.features[mag][rows], expected, rtol=1e-4, atol=1e-5)
        assert np.array_equal(bag.coords[mag].numpy(), tile_set.coords)
        assert np.array_equal(bag.parents[mag].numpy(), tile_set.parent)
    info = bag_info(tmp_path / "pyr.h5")
    attrs = info.attrs
    assert attrs["encoder"] == "example_cnn" and attrs["input_px"] == 48 and attrs["feature_dim"] == 64
    assert attrs["encoder_weights"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert attrs["mpp"] == pytest.approx(0.25) and attrs["mpp_source"] == "openslide.mpp" and attrs["tile_px"] == 32
    assert attrs["tiles_from"] == "planned" and attrs["versions"]["torch"] == torch.__version__
    assert info.coords_attrs["20x"]["tile_size_level0"] == pytest.approx(64.0)
    with h5py.File(tmp_path / "pyr.h5") as handle:  # a CLAM/TRIDENT-style loader reads the root links
        assert handle["features"].shape == (grid.counts["20x"], 64)
        assert np.array_equal(handle["coords"][:], grid["20x"].coords)
    assert manifest(tmp_path / "extract_manifest.csv")["pyr"]["tiles_20x"] == str(grid.counts["20x"])


def test_one_read_per_coarsest_tile_serves_every_magnification(cohort, monkeypatch, tmp_path):
    reads = []
    read = OpenSlideReader._read
    monkeypatch.setattr(OpenSlideReader, "_read", lambda self, *args: reads.append(args) or read(self, *args))
    config = ExtractConfig(encoder="example_cnn", tiling=TILING, num_workers=0)
    [result] = extract_slides([cohort / "s2.tiff"], tmp_path, config)
    tile_reads = [args for args in reads if args[2] == (128, 128)]  # 5x tiles at 20x resolution; + one thumbnail
    assert result.status == "done" and len(tile_reads) == result.counts["5x"] == len(reads) - 1
    assert sum(result.counts.values()) > 3 * result.counts["5x"]


def test_tile_then_extract_reuses_coordinates_and_h5_equals_zarr(cohort, weights, tmp_path):
    tiles, zarr_out = tmp_path / "tiles", tmp_path / "zarr"
    slide = str(cohort / "s1.tiff")
    assert CliRunner().invoke(main, ["tile", slide, "--out", str(tiles), "--tile-px", "32", "--no-qc"]).exit_code == 0
    planned = read_coords(tiles / "s1.h5")
    common = ["--encoder", "example_cnn", "--weights", str(weights), "--tile-px", "32", "--num-workers", "0"]
    result = CliRunner().invoke(main, ["extract", slide, "--out", str(tiles), *common])
    assert result.exit_code == 0, result.output
    assert "1 bags: 1 extracted" in result.output
    result = CliRunner().invoke(main, ["extract", slide, "--out", str(zarr_out), "--format", "zarr",
                                       "--coords", str(tiles), *common])
    assert result.exit_code == 0, result.output
    h5_info, zarr_info = bag_info(tiles / "s1.h5"), bag_info(zarr_out / "s1.zarr")
    assert h5_info.attrs["tiles_from"].endswith("s1.h5") and h5_info.has_features
    assert zarr_info.attrs["tiles_from"] == str(tiles / "s1.h5")
    root = zarr.open_group(zarr_out / "s1.zarr", mode="r")
    assert root.attrs["finest"] == "20x"
    with h5py.File(tiles / "s1.h5") as h5:
        for mag, (coords, parent) in planned.items():
            for name in ("features", "coords", "parent"):
                assert np.array_equal(h5[f"{mag}/{name}"][:], root[f"{mag}/{name}"][:]), (mag, name)
            assert np.array_equal(h5[f"{mag}/coords"][:], coords) and np.array_equal(h5[f"{mag}/parent"][:], parent)
    mismatch = CliRunner().invoke(main, ["extract", slide, "--out", str(tmp_path / "x"), "--coords", str(tiles),
                                         *common[:-4], "--tile-px", "64"])
    assert mismatch.exit_code == 1
    error = manifest(tmp_path / "x" / "extract_manifest.csv")["s1"]["error"]
    assert "was tiled with 32-px tiles, not 64; extract with the same options" in error


def test_interrupted_bag_leaves_nothing_finished_and_rerun_completes(cohort, weights, tmp_path, monkeypatch):
    config = ExtractConfig(encoder="example_cnn", weights=str(weights), tiling=TILING, batch_size=8, num_workers=0)
    append, calls = BagWriter.append_features, []

    def interrupted(self, mag, features):
        calls.append(mag)
        if len(calls) == 5:
            raise KeyboardInterrupt
        append(self, mag, features)

    monkeypatch.setattr(BagWriter, "append_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_slides([cohort / "s1.tiff", cohort / "s2.tiff"], tmp_path, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extract_manifest.csv"]  # no bag, no temporary file
    monkeypatch.setattr(BagWriter, "append_features", append)
    results = extract_slides([cohort / "s1.tiff", cohort / "s2.tiff"], tmp_path, config)
    assert [r.status for r in results] == ["done", "done"]
    first = (tmp_path / "s1.h5").stat().st_mtime_ns
    again = extract_slides([cohort / "s1.tiff", cohort / "s2.tiff"], tmp_path, config)
    assert [r.status for r in again] == ["skipped", "skipped"] and again[0].counts == results[0].counts
    assert (tmp_path / "s1.h5").stat().st_mtime_ns == first
    other = ExtractConfig(encoder="timm:resnet18", tiling=TILING, num_workers=0)
    with pytest.raises(InputError, match="holds features made with other settings .*encoder: example_cnn → timm"):
        extract_slides([cohort / "s1.tiff", cohort / "s2.tiff"], tmp_path, other)


def test_bad_inputs_are_recorded_and_the_rest_extracted(cohort, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "good.tiff").write_bytes((cohort / "s1.tiff").read_bytes())
    (folder / "broken.svs").write_text("not a slide")
    write_slide(folder / "blank.tiff", np.full((384, 512, 3), 250, np.uint8), mpp=0.5)
    small_slide(folder / "nompp.tiff", mpp=None)
    out = tmp_path / "out"
    args = ["extract", str(folder), "--out", str(out), "--encoder", "example_cnn", "--tile-px", "32",
            "--num-workers", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "4 bags: 1 extracted, 0 skipped (already extracted), 3 failed" in result.output
    assert "Error: 3 of 4 bags failed" in result.output
    assert re.search(r"extract: 3/4 bags \(good: done, 132 tiles in .+\), [\d.]+ (s/bag|bags/s), ", result.output)
    rows = manifest(out / "extract_manifest.csv")
    assert rows["good"]["status"] == "done" and (out / "good.h5").exists()
    assert "OpenSlide does not recognise broken.svs" in rows["broken"]["error"]
    assert "no tissue found in blank.tiff" in rows["blank"]["error"]
    assert "nompp.tiff has no resolution metadata" in rows["nompp"]["error"] and "--mpp" in rows["nompp"]["error"]
    assert {rows[k]["status"] for k in ("broken", "blank", "nompp")} == {"failed"}
    assert sorted(p.name for p in out.iterdir()) == ["extract_manifest.csv", "good.h5"]


def test_fixed_batches_regroup_chunks_in_order_and_raise_a_worker_error():
    chunks, start = [], 0
    for n in (21, 17, 30, 5):  # whole regions of a nested grid: sizes vary
        rows = torch.arange(start, start + n)
        chunks.append({"pixels": rows.to(torch.uint8).view(n, 1, 1, 1).expand(n, 2, 2, 3), "mag": rows % 3})
        start += n
    batches = list(fixed_batches(chunks, 16))
    assert [len(pixels) for pixels, _ in batches] == [16, 16, 16, 16, 9]
    assert torch.equal(torch.cat([pixels[:, 1, 1, 2] for pixels, _ in batches]), torch.arange(73, dtype=torch.uint8))
    assert torch.equal(torch.cat([mags for _, mags in batches]), torch.arange(73) % 3)
    with pytest.raises(InputError, match="bad read"):
        list(fixed_batches([chunks[0], {"error": "bad read"}], 16))


def test_shards_cover_every_bag_exactly_once(cohort, tmp_path, monkeypatch):
    out = tmp_path / "out"
    common = [str(cohort), "--out", str(out), "--encoder", "example_cnn", "--tile-px", "32", "--num-workers", "0"]
    for shard in ("0/2", "1/2"):
        result = CliRunner().invoke(main, ["extract", *common, "--shard", shard])
        assert result.exit_code == 0, result.output
    first, second = (manifest(out / f"extract_manifest.shard-{i}-of-2.csv") for i in (0, 1))
    assert set(first).isdisjoint(second) and set(first) | set(second) == {"s1", "s2", "s3"}
    assert {r["status"] for r in [*first.values(), *second.values()]} == {"done"}
    assert sorted(p.name for p in out.glob("*.h5")) == ["s1.h5", "s2.h5", "s3.h5"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = ExtractConfig(encoder="example_cnn", tiling=TILING, num_workers=0)
    assert [r.slide_id for r in extract_slides([cohort], out, config)] == list(second)
    assert CliRunner().invoke(main, ["extract", *common, "--shard", "2/2"]).exit_code != 0


def breakhis_tree(root: Path) -> dict[str, list[Path]]:
    """100X/ and 400X/ folders of PNGs named like BreakHis (patient id inside), two patients, sizes vary."""
    rng = np.random.default_rng(0)
    files: dict[str, list[Path]] = {}
    for mag, count in (("100", 2), ("400", 3)):
        folder = root / f"{mag}X"
        folder.mkdir(parents=True)
        for patient, tumour in (("14-22549AB", "A"), ("22-13200", "DC")):
            for i in range(count):
                kind = "B" if tumour == "A" else "M"
                path = folder / f"SOB_{kind}_{tumour}-{patient}-{mag}-{i + 1:03d}.png"
                Image.fromarray(rng.integers(0, 255, (46 + 10 * i, 70, 3), dtype=np.uint8)).save(path)
                files.setdefault(f"{mag}x", []).append(path)
    return files


def test_image_sets_make_one_file_per_patient_with_both_magnifications(weights, tmp_path):
    files = breakhis_tree(tmp_path / "breakhis")
    out = tmp_path / "out"
    regex = r"SOB_\w_\w+-(?P<patient>\d+-\w+)-"
    root = tmp_path / "breakhis"
    common = ["--images", f"100x={root / '100X'}", "--images", f"400X={root / '400X'}",
              "--encoder", "example_cnn", "--weights", str(weights), "--num-workers", "0"]
    result = CliRunner().invoke(main, ["extract", *common, "--out", str(out), "--bag-by", regex])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.h5")) == ["14-22549AB.h5", "22-13200.h5"]
    bag = read_bag(out / "22-13200.h5")
    assert {m: len(f) for m, f in bag.features.items()} == {"100x": 2, "400x": 3}
    assert all((p == -1).all() for p in bag.parents.values())
    info = bag_info(out / "22-13200.h5")
    assert info.coords_attrs["400x"]["images"] == [p.name for p in files["400x"] if "22-13200" in p.name]
    assert info.attrs["instance"] == "image" and info.attrs["mpp_source"] == "none"
    model = create_model("example_cnn", weights=str(weights)).eval()
    image = Image.open(files["400x"][5]).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    image = np.array(image)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.data_config.mean, model.data_config.std))
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.inference_mode():
        torch.testing.assert_close(bag.features["400x"][2:3], model.forward_features(x), rtol=1e-4, atol=1e-5)

    table = tmp_path / "bags.csv"
    table.write_text("image,bag_id\n" + "".join(f"{p.name},case-{p.name[4]}\n" for p in files["100x"][:3]))
    tiled = tmp_path / "tiled"
    result = CliRunner().invoke(main, ["extract", *common, "--out", str(tiled), "--bag-by", str(table), "--tile",
                                       "--tile-px", "32"])
    assert result.exit_code == 1  # the images the table does not list are recorded as failed
    rows = manifest(tiled / "extract_manifest.csv")
    assert rows["case-B"]["status"] == "done" and rows["case-M"]["status"] == "done"
    assert sum(r["status"] == "failed" for r in rows.values()) == 7
    tiles = read_bag(tiled / "case-B.h5")
    assert {m: len(f) for m, f in tiles.features.items()} == {"100x": 2 * 2, "400x": 0}  # 2 images of 2x1 tiles
    assert bag_info(tiled / "case-B.h5").coords_attrs["100x"]["image_rows"] == [0, 2, 4]
    assert tiles.coords["100x"].tolist() == [[0, 0], [32, 0], [0, 0], [32, 0]]


@pytest.mark.skipif(not CMU.exists(), reason="shared real data not present")
@pytest.mark.parametrize("encoder", ["deit_small", "timm:resnet18"])
def test_real_aperio_slide_at_5_10_20x(encoder, tmp_path):
    options = {"img_size": 32} if encoder == "deit_small" else {}
    tiling = TilingConfig("5,10,20", tile_px=128, min_tissue=0.5)
    config = ExtractConfig(encoder=encoder, model_options=options, input_px=32, tiling=tiling, num_workers=1)
    [result] = extract_slides([CMU], tmp_path, config)
    assert result.status == "done", result.error
    grid = plan_tiles(open_slide(CMU), tiling)
    bag = read_bag(tmp_path / "CMU-1-Small-Region.h5")
    dim = 384 if encoder == "deit_small" else 512
    assert {m: tuple(f.shape) for m, f in bag.features.items()} == {m: (n, dim) for m, n in grid.counts.items()}
    assert all(torch.isfinite(f).all() for f in bag.features.values())
    assert np.array_equal(bag.parents["20x"].numpy(), grid["20x"].parent)
    attrs = bag_info(tmp_path / "CMU-1-Small-Region.h5").attrs
    assert attrs["mpp"] == pytest.approx(0.499) and attrs["objective_power"] == 20
    assert attrs["encoder"] == encoder and attrs["encoder_weights"] == "random"


def test_a_cpu_batch_embedded_in_sub_batches_equals_its_tiles_embedded_one_by_one():
    encoder = Encoder("timm:resnet10t", input_px=224, device="cpu")
    rows = CPU_SUB_BATCH_PIXELS // 224**2
    generator = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (rows * 2 + 5, 224, 224, 3), dtype=torch.uint8, generator=generator)
    sizes = []  # rows of each call into the network
    stem = next(m for m in encoder.model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = stem.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    batch = encoder(tiles)
    hook.remove()
    assert sizes == [rows, rows, 5]
    one_by_one = torch.cat([encoder(tile[None]) for tile in tiles])
    assert batch.shape == (len(tiles), encoder.num_features)
    torch.testing.assert_close(batch, one_by_one, rtol=1e-4, atol=1e-5)


def test_encoder_errors_are_one_line():
    emulated = [p for p in ("bf16", "fp16") if not cpu_computes_natively(p)]
    for precision in emulated:  # an AVX512-BF16 CPU computes bf16 natively, so only fp16 is refused there
        with pytest.raises(InputError, match=f"--precision {precision} needs CUDA or a CPU that computes in"):
            Encoder("example_cnn", device="cpu", precision=precision)
    with pytest.raises(PluginError, match="encoder deit_small cannot embed 32-px tiles"):
        Encoder("deit_small", input_px=32, device="cpu")


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile needs a C++ compiler")
def test_a_compiled_encoder_embeds_like_the_eager_one_and_pads_a_short_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # compile for real, not from an earlier cache
    generator = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8, generator=generator)
    eager = Encoder("timm:resnet18", input_px=64, device="cpu")
    compiled = Encoder("timm:resnet18", input_px=64, device="cpu", compile=True)
    compiled.warm_up(8)
    sizes = []  # rows of each call into the compiled forward
    forward = compiled._forward
    monkeypatch.setattr(compiled, "_forward", lambda x: sizes.append(len(x)) or forward(x))
    features = compiled(tiles)
    assert sizes == [8] and features.shape == (5, eager.num_features)
    torch.testing.assert_close(features, eager(tiles), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not cpu_computes_natively("bf16"), reason="this CPU does not compute in bf16 natively")
def test_bf16_on_a_cpu_that_computes_in_it_stays_within_a_percent_of_fp32():
    generator = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (20, 224, 224, 3), dtype=torch.uint8, generator=generator)
    fp32, bf16 = (Encoder("timm:resnet18", device="cpu", precision=p)(tiles) for p in ("fp32", "bf16"))
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    relative = (bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)
    assert 0 < relative.max() < 0.03  # rounded (so autocast ran), but close


def test_cli_refuses_mixed_inputs(cohort, tmp_path):
    base = ["extract", "--out", str(tmp_path), "--encoder", "example_cnn"]
    result = CliRunner().invoke(main, [*base, str(cohort), "--images", f"100x={cohort}"])
    assert result.exit_code == 1 and "give SLIDES or --images" in result.output
    result = CliRunner().invoke(main, [*base, str(cohort), "--tile"])
    assert result.exit_code == 1 and "--bag-by and --tile apply to --images only" in result.output


FAULTS = """
import ctypes, resource
def faults():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        buffer = libc.malloc(1 << 26)  # 64 MiB, written, then freed: an activation buffer of one batch
        ctypes.memset(buffer, 1, 1 << 26)
        libc.free(ctypes.c_void_p(buffer))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""
ALLOCATE = FAULTS + """
import sys
from cmamil.extract.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
print(faults())
"""
LIBRARY_THEN_CLI = FAULTS + """
import sys
from click.testing import CliRunner
from cmamil.cli import main
from cmamil.extract.features import ExtractConfig, extract_slides
from cmamil.extract.grid import TilingConfig
slide, out = sys.argv[1], sys.argv[2]
config = ExtractConfig(encoder="example_cnn", tiling=TilingConfig("5,10", tile_px=32), num_workers=0, device="cpu")
[result] = extract_slides([slide], out + "/library", config)
print(result.status, faults())
args = ["extract", slide, "--out", out + "/cli", "--encoder", "example_cnn", "--magnifications", "5,10",
        "--tile-px", "32", "--num-workers", "0", "--device", "cpu"]
print(CliRunner().invoke(main, args).exit_code, faults())
"""


def test_tuned_malloc_reuses_large_buffers_instead_of_faulting_them_in_again():
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", ALLOCATE, mode], capture_output=True, text=True,
                                 check=True, env={"PATH": "/usr/bin:/bin"}).stdout)
        for mode in ("default", "tuned")
    }
    assert faults["default"] > 5 * 15_000  # 16,384 pages of 4 KiB per buffer, mapped afresh every time
    assert faults["tuned"] < 20_000  # the first buffer only


def test_the_library_leaves_malloc_alone_and_the_extract_command_tunes_it(cohort, tmp_path):
    out = subprocess.run([sys.executable, "-c", LIBRARY_THEN_CLI, str(cohort / "s1.tiff"), str(tmp_path)],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    (status, library_faults), (exit_code, cli_faults) = (line.split() for line in out.splitlines()[-2:])
    assert status == "done" and int(library_faults) > 5 * 15_000  # extract_slides changed no process setting
    assert exit_code == "0" and int(cli_faults) < 20_000  # `cmamil extract` keeps freed memory
