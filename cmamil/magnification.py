"""Magnifications: parsing every spelling, µm/px ↔ objective power, coarse-to-fine order and nesting.

The microscope convention holds throughout: mpp = 10 / power, so 20× = 0.5 µm/px and 1 µm/px = 10×. A
magnification is written as a power ('20', '20x', '20X') or as µm/px ('0.5um', '0.5µm', '0.5mpp',
'0.5µm/px'); its canonical name, the group name in feature files, is '<power>x' or '<mpp>um' ('20x', '0.5um').
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cmamil.errors import InputError

__all__ = [
    "Magnification",
    "magnification_names",
    "magnification_order",
    "mpp_to_power",
    "parse_magnifications",
    "power_to_mpp",
]

# µm/px at 1× objective power: 20× = 10 / 20 = 0.5 µm/px
_MPP_AT_1X = 10.0
_UNITS = {"x": "x", "": "x", "um": "um", "µm": "um", "um/px": "um", "µm/px": "um", "mpp": "um"}
_SPELLING = re.compile(r"^\s*(\d*\.?\d+)\s*([a-zµ/]*)\s*$", re.IGNORECASE)


def power_to_mpp(power: float) -> float:
    """µm/px of objective power `power` (20 → 0.5)."""
    if not power > 0:
        raise InputError(f"objective power {power} is not positive; give e.g. 20 for 0.5 µm/px")
    return _MPP_AT_1X / power


def mpp_to_power(mpp: float) -> float:
    """Objective power of `mpp` µm/px (0.5 → 20)."""
    if not mpp > 0:
        raise InputError(f"resolution {mpp} µm/px is not positive; give e.g. 0.5 for 20x")
    return _MPP_AT_1X / mpp


@dataclass(frozen=True)
class Magnification:
    """A target resolution: its canonical name ('20x', '0.5um') and its µm/px."""

    name: str
    mpp: float

    @property
    def power(self) -> float:
        """Objective power (0.5 µm/px → 20)."""
        return mpp_to_power(self.mpp)

    @classmethod
    def parse(cls, text: str) -> Magnification:
        """'20', '20x', '20X' (objective power) or '0.5um', '0.5µm', '0.5mpp', '0.5µm/px' (µm/px)."""
        match = _SPELLING.match(str(text))
        unit = _UNITS.get(match.group(2).lower()) if match else None
        value = float(match.group(1)) if match else 0.0
        if unit is None or value <= 0:
            raise InputError(f"magnification '{text}' is neither a power like 20 or 20x nor µm/px like 0.5um")
        if unit == "x":
            return cls(f"{value:g}x", power_to_mpp(value))
        return cls(f"{value:g}um", value)


def magnification_order(mags: Iterable[str]) -> tuple[str, ...]:
    """Names sorted coarse to fine by µm/px whatever their spelling ('5x' before '1um'); a lone name of any form,
    such as a foreign file's 'all', passes as it is."""
    names = tuple(mags)
    if len(names) == 1:
        return names
    return tuple(sorted(names, key=lambda name: -Magnification.parse(name).mpp))


def magnification_names(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical feature-file group names, coarse to fine, of a list in any spelling ('5,10x,2um' → 2um, 5x, 10x)."""
    mags = _parse_all(spec)
    seen: dict[float, str] = {}
    for mag in mags:
        key = round(mag.mpp, 9)
        if key in seen:
            raise InputError(
                f"magnifications {seen[key]} and {mag.name} are both {mag.mpp:g} µm/px; name each magnification once"
            )
        seen[key] = mag.name
    return magnification_order(m.name for m in mags)


def parse_magnifications(spec: str | Iterable[str]) -> tuple[Magnification, ...]:
    """Parse '5,10,20' or '2um,1um,0.5um' into nested magnifications, coarse to fine.

    Each finer magnification must divide the coarser one's µm/px an integer number of times (5→10→20, or
    5→20), so that every fine tile lies inside exactly one coarse tile.
    """
    mags = sorted(_parse_all(spec), key=lambda m: -m.mpp)
    for coarse, fine in zip(mags, mags[1:]):
        ratio = coarse.mpp / fine.mpp
        if abs(ratio - round(ratio)) > 1e-6 * ratio or round(ratio) < 2:
            raise InputError(
                f"magnifications {coarse.name} and {fine.name} do not nest: a finer magnification must be an "
                f"integer multiple (2, 4 …) of the coarser one, e.g. 5,10,20"
            )
    return tuple(mags)


def _parse_all(spec: str | Iterable[str]) -> list[Magnification]:
    """Every magnification of a comma-separated string or a list, blanks skipped; at least one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    mags = [Magnification.parse(item) for item in items if str(item).strip()]
    if not mags:
        raise InputError("no magnification given; pass e.g. --magnifications 5,10,20")
    return mags
