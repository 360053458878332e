"""Cohort tables (a slide table and a patient table, as STAMP and CLAM users hold them) and one bag per patient."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from cmamil.cli import main
from cmamil.data.bags import BagDataset
from cmamil.data.labels import load_labelled_bags
from cmamil.errors import InputError
from cmamil.store import read_bag
from cmamil.synthetic import nested_bag, write_bag
from cmamil.training.splits import load_splits

PATIENTS = 8  # two slides each; patient k's label is k % 2


@pytest.fixture
def cohort(tmp_path):
    """16 bags (slides of 2 and 3 coarse tiles, so that concatenation has to shift the parents), a STAMP-style
    slide table (FILENAME with extension, PATIENT) and a patient table (PATIENT, label)."""
    folder = tmp_path / "feats"
    generator = torch.Generator().manual_seed(0)
    slides = []
    for k in range(PATIENTS):
        for part, n_coarse in (("a", 2), ("b", 3)):
            slide = f"p{k}_{part}"
            write_bag(folder / f"{slide}.h5", nested_bag(n_coarse, 4, bag_id=slide, generator=generator))
            slides.append((f"{slide}.svs", f"P{k}"))
    slide_table = tmp_path / "slide_table.csv"
    pd.DataFrame(slides, columns=["FILENAME", "PATIENT"]).to_csv(slide_table, index=False)
    patients = tmp_path / "clini.csv"
    rows = [(f"P{k}", ("negative", "positive")[k % 2]) for k in range(PATIENTS)] + [("P99", "positive")]
    pd.DataFrame(rows, columns=["PATIENT", "label"]).to_csv(patients, index=False)
    return folder, slide_table, patients


def test_patient_table_labels_every_slide_and_by_patient_concatenates_them(cohort, notices):
    folder, slide_table, patients = cohort
    table = load_labelled_bags(folder, patients, slide_table=slide_table)
    assert "1 labelled patient(s) of" in notices.text and "have no slide" in notices.text and "(P99)" in notices.text
    assert table.slide_ids[:3] == ("p0_a", "p0_b", "p1_a") and table.patients[:3] == ("P0", "P0", "P1")
    assert table.labels[:4] == (0, 0, 1, 1) and table.class_names == ("negative", "positive")
    patients_table = table.by_patient()
    assert patients_table.slide_ids == tuple(f"P{k}" for k in range(PATIENTS))
    assert patients_table.labels == tuple(k % 2 for k in range(PATIENTS))
    assert patients_table.paths[0] == (folder / "p0_a.h5", folder / "p0_b.h5")
    assert patients_table.grouping.describe() == (
        "splits are per patient: --bag-by patient: one bag of each patient's slides (16 slides)")
    dataset = BagDataset(patients_table.paths, patients_table.labels, ids=patients_table.slide_ids)
    bag, label = dataset[1]
    a, b = read_bag(folder / "p1_a.h5"), read_bag(folder / "p1_b.h5")
    assert bag.bag_id == "P1" and label.tolist() == [1]
    for mag in ("5x", "10x", "20x"):
        assert torch.equal(bag.features[mag], torch.cat([a.features[mag], b.features[mag]]))
        assert torch.equal(bag.coords[mag], torch.cat([a.coords[mag], b.coords[mag]]))
    # 5x: 2 + 3 rows; 10x: 8 + 12 rows. b's parents move past a's coarser rows, -1 stays -1
    assert bag.parents["5x"].tolist() == [-1] * 5
    assert bag.parents["10x"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert bag.parents["20x"].tolist() == [r for r in range(20) for _ in range(4)]
    # every tile's parent is the coarser tile that holds it, in the concatenated rows
    for coarse, fine, size in (("5x", "10x", 896), ("10x", "20x", 448)):
        corner = bag.coords[coarse][bag.parents[fine]]
        inside = (bag.coords[fine] >= corner) & (bag.coords[fine] < corner + size)
        assert bool(inside.all())


@pytest.mark.slow
def test_bag_by_patient_trains_one_bag_per_patient_and_splits_by_patient(cohort, tmp_path):
    folder, slide_table, patients = cohort
    run = tmp_path / "run"
    args = ["train", "--features", str(folder), "--labels", str(patients), "--slide-table", str(slide_table),
            "--bag-by", "patient", "--model", "cma_mil", "--model-option", "cross_attention=local",
            "--model-option", "dim=8", "--folds", "2", "--epochs", "1", "--val-fraction", "0.5", "--out", str(run),
            "--num-workers", "0", "--device", "cpu", "--no-figures", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "note: splits are per patient: --bag-by patient" in result.stderr
    splits = load_splits(run / "splits", tuple(f"P{k}" for k in range(PATIENTS)))
    for split in splits:
        ids = [*split.train, *split.val, *split.test]
        assert sorted(ids) == [f"P{k}" for k in range(PATIENTS)]  # disjoint and complete, patients as items
        predicted = pd.read_csv(run / f"fold_{split.fold}" / "predictions.csv")
        assert sorted(predicted["id"]) == sorted(split.test) and list(predicted["id"]) == list(predicted["patient_id"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["config"]["bag_by"] == "patient" and config["data"]["bags"] == PATIENTS
    assert "slide_table_sha256" in config["data"]
    out = tmp_path / "evaluated"
    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--features", str(folder), "--labels", str(patients),
                                          "--slide-table", str(slide_table), "--bag-by", "patient", "--fold", "0",
                                          "--out", str(out), "--num-workers", "0", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    again = pd.read_csv(out / "predictions.csv")  # one fold: written straight into --out
    assert sorted(again["id"]) == [f"P{k}" for k in range(PATIENTS)]


def test_bag_by_patient_refuses_a_patient_with_slides_of_two_labels(cohort, tmp_path):
    folder, slide_table, _ = cohort
    labels = tmp_path / "per_slide.csv"
    rows = [(f"p{k}_{part}", "positive" if (k, part) == (0, "b") else ("negative", "positive")[k % 2])
            for k in range(PATIENTS) for part in "ab"]
    pd.DataFrame(rows, columns=["slide_id", "label"]).to_csv(labels, index=False)
    table = load_labelled_bags(folder, labels, slide_table=slide_table)
    assert table.patients[:2] == ("P0", "P0")  # per-slide labels take their patients from the slide table
    with pytest.raises(InputError) as error:
        table.by_patient()
    assert str(error.value) == ("--bag-by patient needs one label per patient; 1 patient(s) have slides of "
                                "different labels: P0 (p0_a: negative, p0_b: positive)")


def test_slide_table_without_the_columns_is_one_line(cohort, tmp_path):
    folder, _, patients = cohort
    bad = tmp_path / "slides.csv"
    bad.write_text("slide,case\nx,y\n")
    with pytest.raises(InputError) as error:
        load_labelled_bags(folder, patients, slide_table=bad)
    assert str(error.value) == (f"{bad} needs a slide column (slide_id or FILENAME) and a patient column "
                                "(patient_id or case_id or PATIENT); it has slide, case")
