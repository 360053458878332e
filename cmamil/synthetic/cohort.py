"""A synthetic slide cohort whose label is read by relating fine texture to its coarse context.

Every slide is H&E-like tissue (pink stroma, scattered nuclei) holding the same number of gland-like
**rings** (about 150 µm across with a dark wall: an architecture that a 5× tile shows whole and a 20× tile
shows only as a piece of wall) and the same number of discs of **fine texture** (a stipple of 2 µm period:
plain at 20×, averaged away at 5×, and zero-mean so it does not change the colour a coarse tile sees).

- In a *positive* slide every texture disc fills the **inside** of a ring, `gap_um` from its wall. The
  default gap (46 µm) is longer than the diagonal of a 20× demo tile (32 µm square, 45 µm diagonal), so no
  20× tile holds texture and wall together: a 20×-only model has no tile that tells the classes apart.
- In a *negative* slide every texture disc lies **far** from every ring (`separation_um` beyond the wall,
  more than a 5× tile), so no coarse tile holds both.

Both classes contain the same amount of ring wall and of texture; what differs is whether texture sits
inside the architecture. A 5× model cannot see the texture; a 20× model sees texture in both classes and
never texture beside a wall; a model that looks at each 20× tile together with its 5× parent sees both at
once. `signal` scales the texture contrast (0
removes the signal), `prevalence` is the share of positive patients, and each slide has a ground-truth map
of its regions (REGION_CODES).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cmamil.atomic import atomic_path
from cmamil.errors import InputError
from cmamil.synthetic._labels import patient_ids, write_labels
from cmamil.synthetic.slides import write_slide

__all__ = ["REGION_CODES", "CohortConfig", "CohortSlide", "make_cohort", "render_slide"]

REGION_CODES = {"background": 0, "tissue": 1, "wall": 2, "texture_inside": 3, "texture_outside": 4}
STROMA = np.array([222.0, 160.0, 196.0])
WALL = np.array([135.0, 75.0, 150.0])
NUCLEUS = np.array([95.0, 60.0, 135.0])
BACKGROUND = np.array([243.0, 242.0, 240.0])
LAYOUT_ATTEMPTS = 50
_CANDIDATES = 5000  # uniform draws of circle centres per placement


@dataclass(frozen=True)
class CohortConfig:
    """Size and difficulty of a synthetic cohort; lengths in µm at level 0 resolution `mpp`."""

    n_slides: int = 144
    size_um: float = 500.0
    mpp: float = 0.5
    prevalence: float = 0.5
    signal: float = 1.0
    sites_per_slide: int = 1
    ring_radius_um: float = 95.0
    wall_um: float = 14.0
    gap_um: float = 46.0
    separation_um: float = 140.0
    texture_period_um: float = 2.0
    slides_per_patient: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_slides < 2:
            raise InputError(f"a cohort needs at least 2 slides, got {self.n_slides}; raise n_slides")
        if not 0.0 < self.prevalence < 1.0:
            raise InputError(f"prevalence must lie strictly between 0 and 1, got {self.prevalence:g}")
        if self.signal < 0:
            raise InputError(f"signal must be ≥ 0 (0 removes it), got {self.signal:g}")
        if self.texture_radius_um <= 0:
            raise InputError("ring_radius_um is too small for wall_um and gap_um; raise it or narrow the wall and gap")
        if self.size_um < 4 * self.ring_radius_um * self.sites_per_slide**0.5:
            raise InputError("size_um is too small for sites_per_slide rings; raise size_um or lower sites_per_slide")

    @property
    def texture_radius_um(self) -> float:
        """Radius of a texture disc: it fills a ring's lumen up to `gap_um` from the wall."""
        return self.ring_radius_um - self.wall_um / 2 - self.gap_um


@dataclass(frozen=True)
class CohortSlide:
    """One generated slide: its files, label and patient."""

    slide_id: str
    path: Path
    truth_path: Path
    label: str
    patient_id: str


def render_slide(config: CohortConfig, positive: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one slide at level 0: (H, W, 3) uint8 RGB and the (H, W) uint8 region map (REGION_CODES)."""
    side = int(round(config.size_um / config.mpp))
    for attempt in range(LAYOUT_ATTEMPTS):  # rings and discs that do not fit this blob: draw both again
        tissue = _tissue_mask(side, rng)
        try:
            rings, discs, inside = _layout(config, tissue, positive, rng)
            break
        except InputError:
            if attempt == LAYOUT_ATTEMPTS - 1:
                raise
    mottle = _smooth_field(rng.standard_normal((side // 64 + 2, side // 64 + 2)), side)
    rgb = STROMA.astype(np.float32) + np.float32(6.0) * mottle[..., None]
    regions = np.where(tissue, REGION_CODES["tissue"], REGION_CODES["background"]).astype(np.uint8)
    r, w, rt = config.ring_radius_um, config.wall_um, config.texture_radius_um
    for cy, cx in rings:
        window, dist = _window(side, config.mpp, cy, cx, r + w)
        wall = np.abs(dist - r) <= w / 2
        rgb[window][wall] = WALL
        regions[window][wall] = REGION_CODES["wall"]
    texture = np.zeros((side, side), bool)
    for (cy, cx), enclosed in zip(discs, inside):
        window, dist = _window(side, config.mpp, cy, cx, rt)
        disc = dist <= rt
        texture[window] |= disc
        regions[window][disc] = REGION_CODES["texture_inside" if enclosed else "texture_outside"]

    _draw_nuclei(rgb, tissue, config, rng)
    if config.signal > 0 and texture.any():
        ys, xs = np.nonzero(texture)
        k = 2 * np.pi * config.mpp / config.texture_period_um
        stipple = np.sin(k * xs + np.pi / 4) * np.sin(k * ys + np.pi / 4)
        rgb[ys, xs] += (40.0 * config.signal * stipple)[:, None].astype(np.float32)
    rgb[~tissue] = BACKGROUND
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(2.0)
    return np.clip(rgb, 0, 255).astype(np.uint8), regions


def _layout(
    config: CohortConfig, tissue: np.ndarray, positive: bool, rng: np.random.Generator
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[bool]]:
    """Ring centres, disc centres (µm) and which discs sit inside a ring; raises InputError when they don't fit.

    Both classes place the far discs, so the rings (and the tissue they fit in) follow one distribution: a
    ring's position says nothing of the label, only whether texture sits inside it does."""
    n = config.sites_per_slide
    r, w, rt = config.ring_radius_um, config.wall_um, config.texture_radius_um
    rings = _place(config, tissue, rng, n, r + w, [])
    far = r + w / 2 + config.separation_um + rt
    outside = _place(config, tissue, rng, n, rt, [(c, far) for c in rings], spacing=2 * rt + config.gap_um)
    return rings, list(rings if positive else outside), [positive] * n


def _window(side: int, mpp: float, cy: float, cx: float, radius: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixel window around a centre and each window pixel's distance to it, in µm at `mpp` (px with mpp=1)."""
    y0, x0 = (max(int((c - radius) / mpp) - 1, 0) for c in (cy, cx))
    y1, x1 = (min(int((c + radius) / mpp) + 2, side) for c in (cy, cx))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) * np.float32(mpp)
    return (slice(y0, y1), slice(x0, x1)), np.hypot(yy - cy, xx - cx)


def _smooth_field(coarse: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upsampling of a small random field to (side, side) float32."""
    from PIL import Image

    return np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR))


def _tissue_mask(side: int, rng: np.random.Generator) -> np.ndarray:
    """A large irregular blob covering most of the slide, with a wobbly smooth border."""
    coarse = ndimage.gaussian_filter(rng.normal(0, 1, (32, 32)), 3)
    noise = _smooth_field(coarse / (np.abs(coarse).max() + 1e-9), side)
    y, x = (axis / np.float32(side) - np.float32(0.5) for axis in np.ogrid[0:side, 0:side])
    return np.hypot(y / 0.46, x / 0.44) + 0.12 * noise < 1.0


def _place(
    config: CohortConfig,
    tissue: np.ndarray,
    rng: np.random.Generator,
    count: int,
    radius: float,
    avoid: list[tuple[tuple[float, float], float]],
    spacing: float | None = None,
) -> list[tuple[float, float]]:
    """`count` centres (µm) of circles of `radius` lying in tissue, `spacing` apart (default 2·radius +
    separation) and at least the given distance from each (centre, distance) in `avoid`: the first that fit
    among `_CANDIDATES` uniform draws, which are checked against tissue and `avoid` all at once."""
    spacing = spacing if spacing is not None else 2 * radius + config.separation_um
    centres = rng.uniform(radius, config.size_um - radius, size=(_CANDIDATES, 2))
    fits = np.ones(_CANDIDATES, bool)
    for (y, x), distance in avoid:
        fits &= np.hypot(centres[:, 0] - y, centres[:, 1] - x) >= distance
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    offsets = np.vstack([[0.0, 0.0], radius * np.stack([np.sin(angles), np.cos(angles)], axis=1)])  # centre, border
    points = np.clip(((centres[:, None, :] + offsets[None]) / config.mpp).astype(int), 0,
                     np.array(tissue.shape) - 1)
    fits &= tissue[points[..., 0], points[..., 1]].all(axis=1)
    placed: list[tuple[float, float]] = []
    for cy, cx in centres[fits]:
        if all(np.hypot(cy - y, cx - x) >= spacing for y, x in placed):
            placed.append((float(cy), float(cx)))
            if len(placed) == count:
                return placed
    raise InputError(
        f"could not place {count} circles of {radius:g} µm on a {config.size_um:g} µm slide; "
        "raise size_um or lower sites_per_slide"
    )


def _draw_nuclei(rgb: np.ndarray, tissue: np.ndarray, config: CohortConfig, rng: np.random.Generator) -> None:
    """Scatter small dark nuclei (3–4 µm radius) over the tissue, 600 per mm²."""
    side = rgb.shape[0]
    count = int(600 * (config.size_um / 1000.0) ** 2)
    for cy, cx in rng.uniform(0, side, size=(count, 2)):
        radius = rng.uniform(3.0, 4.0) / config.mpp
        window, dist = _window(side, 1.0, cy, cx, radius)
        rgb[window][(dist <= radius) & tissue[window]] = NUCLEUS


def make_cohort(out: str | Path, config: CohortConfig | None = None, workers: int | None = None) -> list[CohortSlide]:
    """Write the cohort's slides (pyramidal TIFF), region maps (PNG) and `labels.csv`; skip finished slides.

    Labels are drawn per patient (`slides_per_patient` slides each), so a patient's slides share a label. Slides
    are rendered in `workers` processes (default: one per CPU); each slide's random draws depend only on the
    seed and its index, so the cohort is the same for any number of workers.
    """
    config = config or CohortConfig()
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(exist_ok=True)
    n_patients = -(-config.n_slides // config.slides_per_patient)
    patient_labels = np.zeros(n_patients, int)
    patient_labels[: int(round(config.prevalence * n_patients))] = 1
    np.random.default_rng(config.seed).shuffle(patient_labels)
    patients = patient_ids(config.n_slides, config.slides_per_patient)
    slides, todo = [], []
    for i in range(config.n_slides):
        label = patient_labels[i // config.slides_per_patient]
        slide_id = f"slide_{i:03d}"
        slide = CohortSlide(slide_id, out / "slides" / f"{slide_id}.tiff", out / "truth" / f"{slide_id}.png",
                            "positive" if label else "negative", patients[i])
        slides.append(slide)
        if not (slide.path.exists() and slide.truth_path.exists()):
            todo.append((config, i, bool(label), slide.path, slide.truth_path))
    workers = min(workers or os.cpu_count() or 1, len(todo))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_slide, *zip(*todo)))
    else:
        for job in todo:
            _write_slide(*job)
    write_labels(out / "labels.csv", [s.slide_id for s in slides], [s.label for s in slides], patients)
    return slides


def _write_slide(config: CohortConfig, index: int, positive: bool, path: Path, truth_path: Path) -> None:
    """Render slide `index` and write its region map and pyramidal TIFF, each atomically."""
    from PIL import Image

    rgb, regions = render_slide(config, positive, np.random.default_rng([config.seed, index]))
    with atomic_path(truth_path) as tmp:
        Image.fromarray(regions).save(tmp, format="PNG")
    write_slide(path, rgb, mpp=config.mpp)
