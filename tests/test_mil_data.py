"""Bag-training inputs: labels.csv checks, feature-file matching, splits, and real foreign feature files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmamil.aggregators import create_aggregator
from cmamil.data.bags import BagDataset
from cmamil.errors import InputError
from cmamil.data.labels import load_labelled_bags, read_labels
from cmamil.store import BagWriter, bag_id_from_path, bag_path, list_bags
from cmamil.training.splits import Split, largest_folds, load_splits, make_splits, save_splits
from cmamil.synthetic import nested_bag, write_bag, write_planted_cohort

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOPADI = SHARED_DATA / "mopadi_tcga_features"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_labels_are_read_with_sorted_classes_and_patients(tmp_path):
    table = read_labels(_write(tmp_path / "l.csv", "slide_id,label,patient_id\na,tumor,p1\nb,normal,p1\nc,tumor,p2\n"))
    assert table.class_names == ("normal", "tumor")
    assert table.labels == (1, 0, 1)
    assert table.patients == ("p1", "p1", "p2") and table.has_patients
    numeric = read_labels(_write(tmp_path / "n.csv", "slide_id,label\na,10\nb,2\nc,2\n"))
    assert numeric.class_names == ("2", "10") and not numeric.has_patients


def test_every_problem_row_is_reported_at_once(tmp_path):
    labels = _write(
        tmp_path / "labels.csv",
        "slide_id,label,patient_id\ns1,pos,p1\ns2,,p2\ns1,neg,p3\n,neg,p4\ns5,pos,\ns6,neg,p6\n",
    )
    with pytest.raises(InputError) as err:
        read_labels(labels)
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "line 3 (s2): blank label" in message
    assert "line 4 (s1): duplicate slide_id (first on line 2)" in message
    assert "line 5: blank slide_id" in message
    assert "line 6 (s5): blank patient_id" in message
    with pytest.raises(InputError, match=r"line 2 \(s1\): unknown label 'pos' \(classes: a, b\)"):
        read_labels(_write(tmp_path / "u.csv", "slide_id,label\ns1,pos\ns2,a\n"), class_names=("a", "b"))
    with pytest.raises(InputError, match="lacks the column"):
        read_labels(_write(tmp_path / "c.csv", "slide,label\ns1,a\n"))


def test_feature_file_problems_are_reported_together(tmp_path):
    feats = tmp_path / "feats"
    gen = torch.Generator().manual_seed(0)
    write_bag(bag_path(feats, "full"), nested_bag(2, 8, generator=gen, bag_id="full"))
    write_bag(bag_path(feats, "no5x"), nested_bag(2, 8, ("10x", "20x"), generator=gen, bag_id="no5x"))
    write_bag(bag_path(feats, "wide"), nested_bag(2, 12, generator=gen, bag_id="wide"))
    with BagWriter(bag_path(feats, "coords"), coords_only=True) as writer:
        writer.add_magnification("5x", [[0, 0]])
    labels = _write(tmp_path / "labels.csv", "slide_id,label\nfull,a\nno5x,b\nwide,a\ncoords,b\nmissing,a\n")
    with pytest.raises(InputError) as err:
        load_labelled_bags(feats, labels)
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "no5x: lacks magnification 5x (has 10x, 20x)" in message
    assert "coords: coords.h5 holds coordinates only" in message
    assert "missing: no feature file missing.h5" in message
    assert "feature sizes differ between bags: 8 (full …), 12 (wide …)" in message
    table = load_labelled_bags(feats, _write(tmp_path / "ok.csv", "slide_id,label\nfull,a\nno5x,b\n"), ("10x", "20x"))
    assert table.magnifications == ("10x", "20x") and table.in_dim == 8
    bag, label = BagDataset(table.paths, table.labels, table.magnifications, table.slide_ids)[1]
    assert bag.bag_id == "no5x" and label.tolist() == [1]
    assert set(bag.features) == {"10x", "20x"} and bag.features["20x"].shape == (8, 8)


def test_labels_match_every_feature_file_layout(tmp_path):
    feats = tmp_path / "feats"
    gen = torch.Generator().manual_seed(0)
    paths = (feats / "a.h5", feats / "b.zarr", feats / "c" / "features.h5", feats / "d.hdf5")
    for path in paths:
        write_bag(path, nested_bag(2, 8, generator=gen))
    labels = _write(tmp_path / "labels.csv", "slide_id,label\na,x\nb,y\nc,x\nd,y\n")
    table = load_labelled_bags(feats, labels)
    assert table.paths == paths and table.magnifications == ("5x", "10x", "20x")
    assert [bag.bag_id for bag, _ in BagDataset(table.paths, table.labels)] == ["a", "b", "c", "d"]
    with pytest.raises(InputError, match=f"^feature folder {tmp_path / 'none'} does not exist$"):
        load_labelled_bags(tmp_path / "none", labels)


def test_splits_are_disjoint_complete_stratified_and_keep_patients_together(tmp_path):
    ids = [f"s{i:02d}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    patients = [f"p{i // 4}" for i in range(40)]  # four slides, both classes, per patient
    splits = make_splits(ids, labels, patients, folds=5, val_fraction=0.25, seed=3)
    assert [s.fold for s in splits] == list(range(5))
    tests = [set(s.test) for s in splits]
    assert sorted(i for t in tests for i in t) == ids  # every slide is tested exactly once
    patient_of = dict(zip(ids, patients))
    for split in splits:
        parts = [set(split.train), set(split.val), set(split.test)]
        assert set.union(*parts) == set(ids) and sum(map(len, parts)) == 40
        groups = [{patient_of[i] for i in part} for part in parts]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
        assert {labels[ids.index(i)] for i in split.test} == {0, 1}
        assert len(split.val) > 0
    save_splits(splits, tmp_path / "splits")
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [f"fold_{k}.csv" for k in range(5)]
    assert load_splits(tmp_path / "splits", ids) == splits
    assert make_splits(ids, labels, patients, folds=5, val_fraction=0.25, seed=3) == splits
    assert make_splits(ids, labels, patients, folds=5, val_fraction=0.25, seed=4) != splits
    with pytest.raises(InputError) as error:
        make_splits(ids[:8], labels[:8], patients[:8], folds=3, class_names=("normal", "tumour"))
    assert str(error.value) == (
        "class 'normal' has 2 patients, class 'tumour' has 2 patients; --folds 3 needs at least 3 patients per class "
        "and n − ⌈n/K⌉ ≥ 2 of a class's n left for training in each fold (for --val-fraction); no --folds works: "
        "add data or pass --val-fraction 0")


def test_fold_size_rule_names_classes_and_the_largest_folds_that_work():
    # 'tumour' has 3 slides: --folds 3 holds one per test fold, but validation then leaves one of two for training
    ids = [f"s{i}" for i in range(10)]
    labels = [0] * 7 + [1] * 3
    with pytest.raises(InputError) as error:
        make_splits(ids, labels, folds=4, val_fraction=0, class_names=("normal", "tumour"), unit="slide")
    assert str(error.value) == ("class 'tumour' has 3 slides; --folds 4 needs at least 4 slides per class; "
                                "the largest --folds that works is 3")
    assert largest_folds([7, 3], with_val=False) == 3
    assert largest_folds([7, 3], with_val=True) == 3  # K=2 leaves 3 − ⌈3/2⌉ = 1 to train on, K=3 leaves 2
    assert largest_folds([7, 2], with_val=True) is None and largest_folds([1, 5], with_val=False) is None
    assert largest_folds([7, 4], with_val=True) == 4 and largest_folds([12, 6], with_val=True) == 6
    assert len(make_splits(ids, labels, folds=3, val_fraction=0, class_names=("normal", "tumour"))) == 3


def test_clam_style_splits_are_accepted_and_unknown_ids_refused(tmp_path):
    folder = tmp_path / "clam"
    folder.mkdir()
    _write(folder / "splits_0.csv", ",train,val,test\n0,a,c,e\n1,b,,f\n2,d,,\n")
    _write(folder / "splits_1.csv", ",train,val,test\n0,e,a,c\n1,f,b,d\n")
    splits = load_splits(folder, list("abcdef"))
    assert splits[0] == Split(0, ("a", "b", "d"), ("c",), ("e", "f"))
    assert splits[1].test == ("c", "d")
    with pytest.raises(InputError, match="names 1 id"):
        load_splits(folder, list("abcde"))
    with pytest.raises(InputError) as error:  # a labelled slide in no part is reported, not dropped
        load_splits(folder, list("abcdefgh"))
    assert str(error.value) == (f"{folder / 'splits_0.csv'} leaves out 2 labelled id(s): g, h; add them to a part "
                                "(train, val or test) or remove them from the labels")


@pytest.mark.skipif(not MOPADI.is_dir(), reason="shared real data (mopadi_tcga_features) is absent")
def test_real_foreign_feature_files_load_as_bags(tmp_path):
    files = {bag_id_from_path(path): path for path in list_bags(MOPADI)}
    assert set(files) == {"TCGA-AD-6964-01Z-00-DX1", "TCGA-3X-AAVA-01Z-00-DX1"}
    rows = "TCGA-3X-AAVA-01Z-00-DX1,CHOL\nTCGA-AD-6964-01Z-00-DX1,MSIH\n"
    labels = _write(tmp_path / "labels.csv", "slide_id,label\n" + rows)
    table = load_labelled_bags(MOPADI, labels)
    assert table.class_names == ("CHOL", "MSIH") and table.in_dim == 512
    dataset = BagDataset(table.paths, table.labels, table.magnifications, table.slide_ids)
    sizes = {}
    model = create_aggregator("abmil", in_dim=512, num_classes=2, magnifications=table.magnifications).eval()
    for bag, _ in dataset:
        (mag,) = bag.magnifications
        sizes[bag.bag_id] = bag.features[mag].shape
        with torch.no_grad():
            out = model(bag)
        assert out.logits.shape == (1, 2) and torch.isfinite(out.logits).all()
        assert out.attention[mag].sum().item() == pytest.approx(1.0, rel=1e-5)
    assert sizes == {"TCGA-3X-AAVA-01Z-00-DX1": (180, 512), "TCGA-AD-6964-01Z-00-DX1": (777, 512)}


def test_planted_cohort_files_round_trip(tmp_path):
    labels = write_planted_cohort(tmp_path, 4, slides_per_patient=2, dim=8, n_coarse=2)
    table = load_labelled_bags(tmp_path, labels)
    assert table.slide_ids == ("bag_000", "bag_001", "bag_002", "bag_003")
    assert table.labels == (0, 1, 0, 1) and table.patients[:2] == ("patient_000", "patient_000")
    assert table.magnifications == ("5x", "10x", "20x")


def test_feature_scaler_by_hand():
    from cmamil.aggregators import Bag
    from cmamil.data.bags import BagDataset, fit_scaler

    bags = [
        Bag({"5x": torch.tensor([[1.0, 10.0], [3.0, 10.0]])}, bag_id="a"),
        Bag({"5x": torch.tensor([[5.0, 10.0], [7.0, 10.0]])}, bag_id="b"),
    ]
    dataset = BagDataset(bags, [0, 1])
    scaler = fit_scaler(dataset)
    assert torch.allclose(scaler.mean["5x"], torch.tensor([4.0, 10.0]))
    assert torch.allclose(scaler.std["5x"], torch.tensor([5.0**0.5, 0.0]), atol=1e-5)  # population std of 1,3,5,7
    dataset.scaler = scaler
    scaled, _ = dataset[1]
    assert torch.allclose(scaled.features["5x"][:, 0], torch.tensor([1.0, 3.0]) / 5.0**0.5)
    assert torch.all(scaled.features["5x"][:, 1] == 0)
