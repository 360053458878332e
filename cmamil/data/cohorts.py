"""Cohort tables as STAMP and CLAM users hold them: a slide table (slide → patient) and a patient table
(patient → label), joined into one label row per slide; and one bag per patient (`--bag-by patient`).

Column names: `slide_id` (CLAM; STAMP's `FILENAME`, whose file extension is dropped) and `patient_id` (CLAM's
`case_id`, STAMP's `PATIENT`). With a slide table, labels.csv is either per slide (`slide_id,label`) or per patient
(`patient_id,label`); a patient's label then holds for each of their slides. Slides of patients without a label,
and labelled patients without slides, are left out with a notice (a clinical table often covers more patients than
were scanned, and the reverse).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cmamil.errors import InputError
from cmamil.notices import notice

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PATIENT_COLUMNS", "SLIDE_COLUMNS", "join_cohort", "read_slide_table", "read_table"]

SLIDE_COLUMNS = ("slide_id", "FILENAME")
PATIENT_COLUMNS = ("patient_id", "case_id", "PATIENT")


def _column(frame: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in frame.columns), None)


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV as strings (no NA guessing), column names stripped; unreadable: one line asking for `what`."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable CSV ({str(exc).strip()}); give {what}") from exc
    frame.columns = [c.strip() for c in frame.columns]
    return frame


def read_slide_table(path: str | Path) -> dict[str, str]:
    """The patient of every slide in a slide table (slide_id,patient_id; aliases above); bad rows all at once."""
    path = Path(path)
    frame = read_table(path, "slide_id,patient_id columns")
    slide, patient = _column(frame, SLIDE_COLUMNS), _column(frame, PATIENT_COLUMNS)
    if slide is None or patient is None:
        raise InputError(f"{path} needs a slide column ({' or '.join(SLIDE_COLUMNS)}) and a patient column "
                         f"({' or '.join(PATIENT_COLUMNS)}); it has {', '.join(frame.columns) or 'none'}")
    problems, patient_of, first = [], {}, {}
    for line, (name, owner) in enumerate(zip(frame[slide], frame[patient]), start=2):
        name, owner = name.strip(), owner.strip()
        if slide == "FILENAME":
            name = Path(name).stem
        if not name or not owner:
            problems.append(f"line {line}: blank {slide if not name else patient}")
        elif name in patient_of and patient_of[name] != owner:
            problems.append(f"line {line} ({name}): patient {owner}, but {patient_of[name]} on line {first[name]}")
        else:
            patient_of.setdefault(name, owner)
            first.setdefault(name, line)
    if problems:
        raise InputError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
    if not patient_of:
        raise InputError(f"{path} has no rows")
    return patient_of


def join_cohort(labels: str | Path, slide_table: str | Path) -> pd.DataFrame:
    """labels.csv (per slide or per patient) joined with the slide table: a frame slide_id,label,patient_id."""
    import pandas as pd

    labels, patient_of = Path(labels), read_slide_table(slide_table)
    frame = read_table(labels, "slide_id,label or patient_id,label columns")
    slide, patient = _column(frame, SLIDE_COLUMNS), _column(frame, PATIENT_COLUMNS)
    if "label" not in frame.columns or (slide is None and patient is None):
        raise InputError(f"{labels} needs a label column and a slide_id or patient_id column (with --slide-table); "
                         f"it has {', '.join(frame.columns) or 'none'}")
    if slide is not None:
        ids = [Path(s.strip()).stem if slide == "FILENAME" else s.strip() for s in frame[slide]]
        unknown = [s for s in ids if s and s not in patient_of]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise InputError(f"{labels}: {len(unknown)} slide(s) missing from {slide_table}: {shown}; add them to "
                             "the slide table")
        return pd.DataFrame({"slide_id": ids, "label": frame["label"],
                             "patient_id": [patient_of.get(s, "") for s in ids]})
    label_of: dict[str, str] = {}
    problems = []
    for line, (owner, label) in enumerate(zip(frame[patient], frame["label"]), start=2):
        owner, label = owner.strip(), label.strip()
        if owner in label_of:
            problems.append(f"line {line}: duplicate patient {owner}")
        label_of.setdefault(owner, label)
    if problems:
        raise InputError(f"{labels}: {len(problems)} problem(s): " + "; ".join(problems))
    unlabelled = sorted({p for p in patient_of.values() if p not in label_of})
    if unlabelled:
        notice(f"{len(unlabelled)} patient(s) of {slide_table} have no label in {labels} and are left out "
               f"({', '.join(unlabelled[:3])}{' …' if len(unlabelled) > 3 else ''})")
    scanned = set(patient_of.values())
    unscanned = sorted(p for p in label_of if p not in scanned)
    if unscanned:
        notice(f"{len(unscanned)} labelled patient(s) of {labels} have no slide in {slide_table} and are left out "
               f"({', '.join(unscanned[:3])}{' …' if len(unscanned) > 3 else ''})")
    rows = [(s, label_of[p], p) for s, p in patient_of.items() if p in label_of]
    return pd.DataFrame(rows, columns=["slide_id", "label", "patient_id"])
