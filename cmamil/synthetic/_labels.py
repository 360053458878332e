"""labels.csv of a synthetic cohort: one row per slide, consecutive slides sharing a patient."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cmamil.atomic import write_text

__all__ = ["patient_ids", "write_labels"]


def patient_ids(n_slides: int, slides_per_patient: int) -> list[str]:
    """The patient of each slide: `patient_000` for the first `slides_per_patient` slides, and so on."""
    return [f"patient_{i // slides_per_patient:03d}" for i in range(n_slides)]


def write_labels(path: Path, slide_ids: Sequence[str], labels: Sequence[str], patients: Sequence[str]) -> Path:
    """Write labels.csv (slide_id, label, patient_id) atomically, the table `cmamil train --labels` reads."""
    rows = ["slide_id,label,patient_id"] + [",".join(row) for row in zip(slide_ids, labels, patients)]
    write_text(path, "\n".join(rows) + "\n")
    return path
