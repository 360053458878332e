"""Patients: read from item names when no table gives them, and checked never to sit on two sides of a split.

Known name patterns, used when labels.csv has no `patient_id` column and no `--group-by` regex is given:

    BreakHis image files   SOB_B_A-14-22549AB-100-001.png   patient 14-22549AB
    TCGA slide barcodes    TCGA-A1-A0SB-01Z-00-DX1          patient TCGA-A1-A0SB

A pattern applies only when it matches every name. A patient found in two parts of a split (train and test,
or one magnification set's training images and another's test images) is an error naming the patients and items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cmamil.errors import InputError

__all__ = ["KNOWN_PATTERNS", "Grouping", "check_patients_apart", "image_grouping", "known_patients"]

# name -> regex whose group 'patient' is the patient id in an item name (a file name or a slide id)
KNOWN_PATTERNS: dict[str, str] = {
    "BreakHis": r"^SOB_[BM]_[A-Z]+-(?P<patient>[^-]+-[^-]+)-\d+-\d+",
    "TCGA": r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(?:-|$)",
}


@dataclass(frozen=True)
class Grouping:
    """The patient of every item (None: each item is its own), where they came from (or why there are none), and
    what an item is (slide, image)."""

    patients: tuple[str, ...] | None
    source: str
    item: str = "slide"

    def describe(self) -> str:
        """One line for the user and config.yaml: how splits group the items."""
        if self.patients is None:
            return f"splits are per {self.item}: {self.source}"
        return (f"splits keep each patient's {self.item}s together ({len(set(self.patients))} patients, "
                f"{len(self.patients)} {self.item}s; patients from {self.source})")


def known_patients(names: Sequence[str]) -> tuple[str, tuple[str, ...]] | None:
    """The first known pattern matching every name and the patient of each name, or None when none does."""
    for pattern_name, pattern in KNOWN_PATTERNS.items():
        regex = re.compile(pattern)
        matches = [regex.search(Path(name).name) for name in names]
        if names and all(matches):
            return pattern_name, tuple(m.group("patient") for m in matches)
    return None


def image_grouping(paths: Sequence[Path], group_by: str | None = None, no_group: bool = False) -> Grouping:
    """Patients of image files: from the `group_by` regex, else a known file-name pattern unless `no_group`."""
    from cmamil.data.images import patient_groups

    if group_by is not None:
        return Grouping(tuple(patient_groups(paths, group_by)), f"--group-by {group_by!r}", "image")
    if no_group:
        return Grouping(None, "--no-group says the images are independent", "image")
    found = known_patients([str(p) for p in paths])
    if found is not None:
        return Grouping(found[1], f"{found[0]} file names; pass --no-group to split by image", "image")
    return Grouping(None, f"the file names match no known patient pattern ({', '.join(KNOWN_PATTERNS)}); pass "
                          "--group-by REGEX to keep a patient's images together, or --no-group to say they are "
                          "independent", "image")


def check_patients_apart(parts: Mapping[str, Sequence[str]], patient_of: Mapping[str, str], where: str) -> None:
    """Raise an InputError naming every patient whose items lie in more than one of `parts` (name -> item ids)."""
    found: dict[str, dict[str, list[str]]] = {}
    for part, items in parts.items():
        for item in items:
            found.setdefault(patient_of[item], {}).setdefault(part, []).append(item)
    leaks = {patient: sides for patient, sides in found.items() if len(sides) > 1}
    if not leaks:
        return
    shown = "; ".join(
        f"{patient} in " + " and ".join(f"{part} ({_names(items)})" for part, items in sides.items())
        for patient, sides in sorted(leaks.items())[:3]
    )
    more = f" and {len(leaks) - 3} more" if len(leaks) > 3 else ""
    raise InputError(f"{where}: {len(leaks)} patient(s) on more than one side: {shown}{more}; "
                     "move each patient's items to one side")


def _names(items: Sequence[str]) -> str:
    """The first two item names (file names without folders) and how many more there are."""
    names = [Path(item).name for item in items[:2]]
    return ", ".join(names) + (f" … {len(items)} in all" if len(items) > 2 else "")
