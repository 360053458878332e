"""Leakage guards: patients read from names, kept on one side of every split, and leaks named file by file."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from click.testing import CliRunner

from cmamil.cli import main
from cmamil.data.labels import read_labels
from cmamil.data.patients import check_patients_apart, image_grouping, known_patients
from cmamil.errors import InputError
from cmamil.synthetic import write_patch_set
from cmamil.training.config import PatchTrainConfig
from cmamil.training.runner import plan_training

FAST = ["--model", "example_cnn", "--model-option", "img_size=32", "--device", "cpu", "--num-workers", "0"]


def test_known_patterns_read_breakhis_and_tcga_patients():
    breakhis = ["a/SOB_B_A-14-22549AB-100-001.png", "SOB_M_DC-14-11031-400-012.png"]
    assert known_patients(breakhis) == ("BreakHis", ("14-22549AB", "14-11031"))
    assert known_patients(["TCGA-A1-A0SB-01Z-00-DX1", "TCGA-A1-A0SB-01Z-00-DX2", "TCGA-3X-AAVA"]) == (
        "TCGA", ("TCGA-A1-A0SB", "TCGA-A1-A0SB", "TCGA-3X-AAVA"))
    assert known_patients([*breakhis, "other.png"]) is None  # a pattern applies only when every name matches
    assert image_grouping(["x.png"]).describe() == (
        "splits are per image: the file names match no known patient pattern (BreakHis, TCGA); pass --group-by "
        "REGEX to keep a patient's images together, or --no-group to say they are independent")
    assert image_grouping(breakhis, no_group=True).patients is None


def test_mil_labels_take_patients_from_tcga_barcodes_and_say_when_splits_are_per_slide(tmp_path):
    tcga = tmp_path / "tcga.csv"
    tcga.write_text("slide_id,label\nTCGA-A1-A0SB-01Z-00-DX1,a\nTCGA-A1-A0SB-01Z-00-DX2,a\nTCGA-3X-AAVA-01Z,b\n")
    table = read_labels(tcga)
    assert table.patients == ("TCGA-A1-A0SB", "TCGA-A1-A0SB", "TCGA-3X-AAVA") and table.has_patients
    assert table.grouping.describe() == (
        "splits keep each patient's slides together (2 patients, 3 slides; patients from the TCGA barcodes of "
        "the slide ids (TCGA-XX-XXXX is the patient))")
    plain = tmp_path / "plain.csv"
    plain.write_text("slide_id,label\ns1,a\ns2,b\n")
    assert read_labels(plain).grouping.describe() == (
        "splits are per slide: labels.csv has no patient_id column and the slide ids are no TCGA barcodes; add a "
        "patient_id column if a patient has several slides")


def test_leak_error_names_patients_parts_and_items():
    patient = {"s1": "p1", "s2": "p1", "s3": "p1", "s4": "p2", "s5": "p3"}
    check_patients_apart({"train": ["s1", "s2", "s4"], "test": ["s5"]}, patient, "fold 0")
    with pytest.raises(InputError) as error:
        check_patients_apart({"train": ["s1", "s2", "s4"], "val": [], "test": ["s3", "s5"]}, patient, "fold 0")
    assert str(error.value) == ("fold 0: 1 patient(s) on more than one side: p1 in train (s1, s2) and test (s3); "
                                "move each patient's items to one side")


def test_breakhis_tree_is_split_by_patient_without_a_regex(tmp_path, monkeypatch):
    root = write_patch_set(tmp_path / "flat", layout="flat", sizes={"all": 12}, size=8, patients=6)
    config = PatchTrainConfig(model="example_cnn", images=(root,), out=tmp_path / "run", folds=3,
                              model_options={"img_size": 32})
    said = []
    monkeypatch.setattr("cmamil.training.runner.notice", said.append)
    _, items, splits = plan_training(config)
    assert items.grouping.describe() == (
        "splits keep each patient's images together (12 patients, 24 images; patients from BreakHis file names; "
        "pass --no-group to split by image)")
    assert said == [items.grouping.describe()]
    patient = dict(zip(items.ids, items.patients))
    for split in splits:
        sides = [{patient[i] for i in getattr(split, part)} for part in ("train", "val", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert not (tmp_path / "run").exists()
    per_image = plan_training(dataclasses.replace(config, no_group=True))[1]
    assert per_image.patients is None


def test_given_split_folders_with_a_patient_on_two_sides_are_refused(tmp_path):
    root = write_patch_set(tmp_path / "set", sizes={"training": 2, "validation": 1, "testing": 1}, size=8)
    leaked = next((root / "training" / "benign").iterdir())
    shutil.copy(leaked, root / "testing" / "benign" / leaked.name.replace("-001.png", "-099.png"))
    result = CliRunner().invoke(main, ["train", "--images", str(root), "--out", str(tmp_path / "run"), *FAST])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: fold 0: 1 patient(s) on more than one side: 14-tr0 in train (SOB_B_A-14-tr0-100-001.png) and test "
        "(SOB_B_A-14-tr0-100-099.png); move each patient's items to one side")
    assert not (tmp_path / "run").exists()


def test_crossmag_refuses_a_patient_trained_at_one_magnification_and_tested_at_another(tmp_path):
    sizes = {"training": 2, "validation": 1, "testing": 1}
    low = write_patch_set(tmp_path / "100x", magnification=100, sizes=sizes, size=8)
    high = write_patch_set(tmp_path / "400x", magnification=400, sizes=sizes, size=8)
    shutil.copy(low / "training" / "malignant" / "SOB_M_A-15-tr1-100-004.png",
                high / "testing" / "malignant" / "SOB_M_A-15-tr1-400-099.png")
    result = CliRunner().invoke(main, ["crossmag", "--set", f"100x={low}", "--set", f"400x={high}",
                                       "--out", str(tmp_path / "study"), *FAST])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: crossmag, across the sets: 1 patient(s) on more than one side: 15-tr1 in a set's training or "
        "validation split (SOB_M_A-15-tr1-100-004.png, SOB_M_A-15-tr1-400-004.png) and a set's test split "
        "(SOB_M_A-15-tr1-400-099.png); move each patient's items to one side")
