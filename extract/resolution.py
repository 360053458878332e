"""Level-0 resolution (µm/px) of a slide and the metadata it came from.

Target magnifications (`cmamil.magnification`) are exact against it: a 0.265 µm/px slide tiled at 20× reads
0.5 / 0.265 = 1.887 level-0 px per output px, never "about 2".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cmamil.errors import InputError
from cmamil.extract.reader import SlideReader
from cmamil.magnification import power_to_mpp

__all__ = ["MPP_RANGE", "Resolution", "resolve_mpp"]

log = logging.getLogger(__name__)

# plausible level-0 µm/px of a slide or microscope image; values outside (e.g. 72 dpi defaults) are ignored
MPP_RANGE = (0.02, 20.0)


@dataclass(frozen=True)
class Resolution:
    """A slide's level-0 µm/px, the metadata it came from, and its objective power when recorded."""

    mpp_x: float
    mpp_y: float
    source: str
    objective_power: float | None = None

    def __post_init__(self) -> None:
        if not (self.mpp_x > 0 and self.mpp_y > 0):
            raise InputError(f"resolution must be positive, got {self.mpp_x} x {self.mpp_y} µm/px")

    @property
    def mpp(self) -> float:
        """Level-0 µm/px (mean of x and y)."""
        return (self.mpp_x + self.mpp_y) / 2


def resolve_mpp(reader: SlideReader, mpp: float | None = None) -> Resolution:
    """Level-0 µm/px from, in order: `mpp` (the user's --mpp), openslide.mpp-x/y, TIFF resolution, objective power."""
    props = reader.properties
    objective = _number(props.get("openslide.objective-power"))
    found = _from_openslide(props) or _from_tiff(props)
    if objective and not found:
        found = (power_to_mpp(objective), power_to_mpp(objective), "objective-power")
    if mpp is not None:
        if not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
            raise InputError(f"--mpp {mpp} is outside the plausible range {MPP_RANGE[0]}–{MPP_RANGE[1]} µm/px")
        if found and abs(found[0] - mpp) > 0.1 * mpp:
            log.warning("%s: metadata says %.4g µm/px (%s); using --mpp %g", reader.path.name, found[0], found[2], mpp)
        return Resolution(mpp, mpp, "user", objective)
    if not found:
        raise InputError(
            f"{reader.path.name} has no resolution metadata (openslide.mpp-x, TIFF resolution or objective power); "
            f"pass --mpp, e.g. --mpp 0.25 for a 40x scan or --mpp 0.5 for 20x"
        )
    return Resolution(found[0], found[1], found[2], objective)


def _from_openslide(props: dict[str, str]) -> tuple[float, float, str] | None:
    """openslide.mpp-x/y when both are present and plausible."""
    x, y = _number(props.get("openslide.mpp-x")), _number(props.get("openslide.mpp-y"))
    if x and y and _plausible(x) and _plausible(y):
        return x, y, "openslide.mpp"
    return None


def _from_tiff(props: dict[str, str]) -> tuple[float, float, str] | None:
    """TIFF XResolution/YResolution in pixels per centimetre or inch, when plausible for a microscope."""
    per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(props.get("tiff.ResolutionUnit", "").lower())
    x, y = _number(props.get("tiff.XResolution")), _number(props.get("tiff.YResolution"))
    if per_unit and x and y and _plausible(per_unit / x) and _plausible(per_unit / y):
        return per_unit / x, per_unit / y, "tiff.resolution"
    return None


def _plausible(mpp: float) -> bool:
    return MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _number(text: str | None) -> float | None:
    """A positive float from a metadata string, else None."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value and value > 0 else None
