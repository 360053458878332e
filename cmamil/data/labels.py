"""Labelled slide bags: labels.csv matched to feature files, checked before any training starts.

labels.csv has the columns `slide_id,label` and optionally `patient_id` (slides of one patient never straddle
folds); without it, patients are read from TCGA barcodes in the slide ids (`cmamil.data.patients`), else each slide
is its own patient (as with `--no-group`, which states it). With a slide table (`cmamil.data.cohorts`), labels.csv
may be a patient table instead; `LabelTable.by_patient` makes one bag of all a patient's slides. Class names are the
distinct labels, sorted (numerically when every label is an integer); class k is the k-th name. Every problem is
reported at once: a blank or duplicate id, a blank label, a missing or unreadable feature file, a bag lacking a
requested magnification, a feature size that differs from the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmamil.data.cohorts import join_cohort, read_table
from cmamil.data.patients import Grouping, known_patients
from cmamil.errors import InputError
from cmamil.magnification import magnification_order
from cmamil.notices import notice

__all__ = ["LabelTable", "load_labelled_bags", "read_labels"]


@dataclass(frozen=True)
class LabelTable:
    """Slides with their class, patient and feature file; `magnifications` and `in_dim` hold for every bag."""

    slide_ids: tuple[str, ...]
    labels: tuple[int, ...]
    patients: tuple[str, ...]
    class_names: tuple[str, ...]
    paths: tuple[Path, ...] = ()
    magnifications: tuple[str, ...] = ()
    in_dim: int = 0
    patient_source: str = "the patient_id column"
    item: str = "slide"

    def __post_init__(self) -> None:
        n = len(self.slide_ids)
        if len(self.labels) != n or len(self.patients) != n or (self.paths and len(self.paths) != n):
            raise ValueError("a label table needs one label, patient (and path) per slide")

    @property
    def has_patients(self) -> bool:
        """Whether patients group slides (otherwise each slide is its own patient)."""
        return self.patients != self.slide_ids

    @property
    def grouping(self) -> Grouping:
        """How splits group the slides: by patient (and where patients came from), or per slide."""
        return Grouping(self.patients if self.has_patients else None, self.patient_source, self.item)

    def by_patient(self) -> LabelTable:
        """One item per patient, its feature files all its slides (in table order); one label per patient."""
        rows: dict[str, list[int]] = {}
        for row, patient in enumerate(self.patients):
            rows.setdefault(patient, []).append(row)
        mixed = [f"{p} ({', '.join(f'{self.slide_ids[r]}: {self.class_names[self.labels[r]]}' for r in rs)})"
                 for p, rs in rows.items() if len({self.labels[r] for r in rs}) > 1]
        if mixed:
            raise InputError(f"--bag-by patient needs one label per patient; {len(mixed)} patient(s) have slides of "
                             f"different labels: {'; '.join(mixed[:3])}")
        if not self.has_patients:
            notice(f"--bag-by patient: {self.patient_source}; each slide is its own bag")
        ids = tuple(rows)
        return LabelTable(
            ids, tuple(self.labels[rs[0]] for rs in rows.values()), ids, self.class_names,
            tuple(tuple(self.paths[r] for r in rs) for rs in rows.values()) if self.paths else (),
            self.magnifications, self.in_dim,
            f"--bag-by patient: one bag of each patient's slides ({len(self.slide_ids)} slides)", "patient",
        )

    def index(self) -> dict[str, int]:
        """Row of each slide id."""
        return {s: i for i, s in enumerate(self.slide_ids)}


def _class_order(names: set[str]) -> tuple[str, ...]:
    """Sorted class names: numerically when all are integers, else alphabetically."""
    if all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def read_labels(
    path: str | Path, class_names: tuple[str, ...] | None = None, slide_table: str | Path | None = None,
    no_group: bool = False,
) -> LabelTable:
    """Read labels.csv (slide_id, label[, patient_id]) into a LabelTable without feature files; every bad row at once.

    With `class_names` (e.g. those of a run being resumed) a label outside them is an error; otherwise the
    classes are the distinct labels. With `slide_table`, patients come from it (and labels may be per patient).
    `no_group` makes every slide its own patient (TCGA barcodes not read)."""
    table, problems = _parse_labels(Path(path), class_names, slide_table, no_group)
    _raise_problems(Path(path), problems)
    return table


def _parse_labels(
    path: Path, class_names: tuple[str, ...] | None, slide_table: str | Path | None = None, no_group: bool = False
) -> tuple[LabelTable, list[str]]:
    """The table of the well-formed rows, and one message per problem row."""
    if slide_table is not None:
        frame = join_cohort(path, slide_table)
    else:
        frame = read_table(path, "slide_id,label[,patient_id] columns")
    missing = [c for c in ("slide_id", "label") if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}; it has {', '.join(frame.columns) or 'none'} "
            "(expected slide_id,label[,patient_id])"
        )
    if frame.empty:
        raise InputError(f"{path} has no rows")
    has_patients = "patient_id" in frame.columns
    if has_patients and no_group:
        raise InputError(f"{path} has a patient_id column but --no-group says the slides are independent; drop "
                         "--no-group (splits then keep each patient's slides together) or the column")
    problems: list[str] = []
    seen: dict[str, int] = {}
    rows: list[tuple[str, str, str]] = []
    for line, record in enumerate(frame.itertuples(index=False), start=2):
        slide, label = str(record.slide_id).strip(), str(record.label).strip()
        patient = str(record.patient_id).strip() if has_patients else slide
        where = f"line {line}" + (f" ({slide})" if slide else "")
        bad = [
            "blank slide_id" if not slide else "",
            f"invalid slide id '{slide}' (an id names a file: no '/', no leading '.')"
            if slide.startswith(".") or "/" in slide or "\\" in slide else "",
            f"duplicate slide_id (first on line {seen[slide]})" if slide in seen else "",
            "blank label" if not label else "",
            f"unknown label '{label}' (classes: {', '.join(class_names)})"
            if label and class_names is not None and label not in class_names else "",
            "blank patient_id" if not patient else "",
        ]
        problems.extend(f"{where}: {b}" for b in bad if b)
        seen.setdefault(slide, line)
        if not any(bad):
            rows.append((slide, label, patient))
    source = f"the slide table {Path(slide_table).name}" if slide_table is not None else "the patient_id column"
    if no_group:
        source = "--no-group says the slides are independent"
    elif not has_patients:
        found = known_patients([r[0] for r in rows])
        if found is not None and found[0] == "TCGA":
            rows = [(slide, label, patient) for (slide, label, _), patient in zip(rows, found[1])]
            source = "the TCGA barcodes of the slide ids (TCGA-XX-XXXX is the patient)"
        else:
            source = ("labels.csv has no patient_id column and the slide ids are no TCGA barcodes; add a patient_id "
                      "column if a patient has several slides")
    names = tuple(class_names) if class_names is not None else _class_order({r[1] for r in rows})
    if len(names) < 2 and not problems:
        raise InputError(f"{path}: every slide has the label '{names[0]}'; training needs two or more classes")
    code = {name: i for i, name in enumerate(names)}
    table = LabelTable(
        tuple(r[0] for r in rows), tuple(code[r[1]] for r in rows), tuple(r[2] for r in rows), names,
        patient_source=source,
    )
    return table, problems


def load_labelled_bags(
    features: str | Path,
    labels: str | Path,
    magnifications: tuple[str, ...] | None = None,
    class_names: tuple[str, ...] | None = None,
    slide_table: str | Path | None = None,
    no_group: bool = False,
) -> LabelTable:
    """labels.csv matched to the feature files in `features`, every bag checked for `magnifications` (default:
    those of the first bag) and one common feature size; all problems are reported in one error. `no_group` as in
    `read_labels`."""
    from cmamil.store import bag_id_from_path, bag_info, list_bags

    table, problems = _parse_labels(Path(labels), class_names, slide_table, no_group)
    if not Path(features).is_dir():
        raise InputError(f"feature folder {features} does not exist")
    files = {bag_id_from_path(path): path for path in list_bags(features)}
    paths, dims = [], {}
    wanted = tuple(magnifications) if magnifications else None
    for slide in table.slide_ids:
        path = files.get(slide)
        paths.append(path)
        if path is None:
            problems.append(f"{slide}: no feature file {slide}.h5, {slide}.zarr or {slide}/features.h5 in {features}")
            continue
        try:
            info = bag_info(path)
        except InputError as exc:
            problems.append(f"{slide}: {exc}")
            continue
        if not info.has_features:
            problems.append(f"{slide}: {path.name} holds coordinates only (no features)")
            continue
        wanted = wanted or info.magnifications
        lacking = [m for m in wanted if m not in info.magnifications]
        if lacking:
            problems.append(f"{slide}: lacks magnification {', '.join(lacking)} (has {', '.join(info.magnifications)})")
        empty = [m for m in wanted if info.counts.get(m) == 0]
        if empty:
            problems.append(f"{slide}: no tiles at {', '.join(empty)}")
        dims.setdefault(info.feature_dim, slide)
    if len(dims) > 1:
        sizes = ", ".join(f"{d} ({s} …)" for d, s in dims.items())
        problems.append(f"feature sizes differ between bags: {sizes}; extract every bag with one encoder")
    _raise_problems(Path(labels), problems)
    return LabelTable(
        table.slide_ids, table.labels, table.patients, table.class_names,
        tuple(paths), magnification_order(wanted or ()), next(iter(dims)), table.patient_source,
    )


def _raise_problems(path: Path, problems: list[str]) -> None:
    """One InputError naming every problem, so that a user fixes them all in one pass."""
    if problems:
        raise InputError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
