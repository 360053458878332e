"""Magnifications: every spelling, µm/px ↔ power by hand, coarse-to-fine order across spellings, nesting, names."""

from __future__ import annotations

import pytest

from cmamil.errors import InputError
from cmamil.magnification import (
    Magnification,
    magnification_names,
    magnification_order,
    mpp_to_power,
    parse_magnifications,
    power_to_mpp,
)

SPELLINGS = {
    "5": ("5x", 2.0),
    "5x": ("5x", 2.0),
    "5X": ("5x", 2.0),
    " 40x ": ("40x", 0.25),
    "20.0x": ("20x", 0.5),
    "2um": ("2um", 2.0),
    "2µm": ("2um", 2.0),
    "0.5mpp": ("0.5um", 0.5),
    "0.5µm/px": ("0.5um", 0.5),
    "0.25um/px": ("0.25um", 0.25),
    ".5UM": ("0.5um", 0.5),
}


@pytest.mark.parametrize("text", SPELLINGS)
def test_every_spelling_parses_to_its_canonical_name_and_mpp(text):
    mag = Magnification.parse(text)
    assert (mag.name, mag.mpp) == SPELLINGS[text]


def test_mpp_and_power_convert_by_mpp_equals_ten_over_power():
    assert power_to_mpp(20) == 0.5 and power_to_mpp(40) == 0.25 and power_to_mpp(5) == 2.0
    assert power_to_mpp(2.5) == 4.0 and power_to_mpp(100) == 0.1
    assert mpp_to_power(0.5) == 20 and mpp_to_power(1.0) == 10 and mpp_to_power(0.25) == 40
    assert mpp_to_power(power_to_mpp(400)) == pytest.approx(400)
    assert Magnification.parse("1um").power == 10 and Magnification.parse("40x").power == pytest.approx(40)
    for bad in (0, -20):
        with pytest.raises(InputError, match="not positive"):
            power_to_mpp(bad)
        with pytest.raises(InputError, match="not positive"):
            mpp_to_power(bad)


@pytest.mark.parametrize(
    ("names", "order"),
    [
        (["5x", "1um"], ("5x", "1um")),  # 1 µm/px is 10x, finer than 5x
        (["1um", "5x"], ("5x", "1um")),
        (["0.5um", "5x", "10"], ("5x", "10", "0.5um")),
        (["20x", "5x", "10x"], ("5x", "10x", "20x")),
        (["0.25um", "2um", "1um"], ("2um", "1um", "0.25um")),
        (["400x", "100x", "40X"], ("40X", "100x", "400x")),
        (["0.5µm/px", "4um", "2x", "10x"], ("2x", "4um", "10x", "0.5µm/px")),
    ],
)
def test_order_is_coarse_to_fine_by_mpp_across_spellings(names, order):
    assert magnification_order(names) == order
    assert magnification_order(iter(names)) == order


def test_a_lone_name_of_any_form_passes_order_but_not_among_others():
    assert magnification_order(["all"]) == ("all",)
    assert magnification_order({"20x": None}) == ("20x",)
    assert magnification_order([]) == ()
    with pytest.raises(InputError, match="^magnification 'all' is neither a power like 20 or 20x nor µm/px like 0.5um"):
        magnification_order(["all", "20x"])


def test_nesting():
    assert [(m.name, m.mpp) for m in parse_magnifications("20,5,10")] == [("5x", 2.0), ("10x", 1.0), ("20x", 0.5)]
    assert [m.mpp for m in parse_magnifications("2.0um, 1um,0.5µm/px")] == [2.0, 1.0, 0.5]
    assert [m.name for m in parse_magnifications("5,20")] == ["5x", "20x"]
    assert [m.name for m in parse_magnifications(["0.5um", "5x", "10"])] == ["5x", "10x", "0.5um"]
    bad_specs = {"10,25": "do not nest", "20,20": "do not nest", "20x,0.5um": "do not nest", "5,12": "do not nest",
                 "abc": "neither a power", "": "no magnification", " , ": "no magnification"}
    for bad, message in bad_specs.items():
        with pytest.raises(InputError, match=message):
            parse_magnifications(bad)


@pytest.mark.parametrize("text", SPELLINGS)
def test_magnification_names_gives_the_feature_file_group_name_of_every_spelling(text):
    assert magnification_names(text) == (SPELLINGS[text][0],)


def test_magnification_names_of_lists_are_canonical_and_coarse_to_fine():
    assert magnification_names("5x,10x,20x") == ("5x", "10x", "20x")
    assert magnification_names("20,5, 10") == ("5x", "10x", "20x")
    assert magnification_names("5,10x,4um") == ("4um", "5x", "10x")
    assert magnification_names("400X,100x") == ("100x", "400x")
    assert magnification_names("0.5µm/px,1mpp,2µm") == ("2um", "1um", "0.5um")
    assert magnification_names(["20x", "0.25um"]) == ("20x", "0.25um")
    assert magnification_names("5,12") == ("5x", "12x")  # a selection of groups need not nest


def test_bad_spellings_and_repeats_are_one_line_errors():
    for bad in ("abc", "20y", "x20", "-5x", "0x", "0um", "20 x 2", "all"):
        with pytest.raises(InputError, match=f"^magnification '{bad}' is neither a power like 20 or 20x nor µm/px"):
            Magnification.parse(bad)
    with pytest.raises(InputError, match="^magnification '5xx' is neither"):
        magnification_names("5x,5xx")
    with pytest.raises(InputError, match="^no magnification given; pass e.g. --magnifications 5,10,20$"):
        magnification_names(" ,")
    with pytest.raises(InputError, match="^magnifications 5x and 2um are both 2 µm/px; name each magnification once$"):
        magnification_names("5,10x,2um")
    with pytest.raises(InputError, match="^magnifications 20x and 20x are both 0.5 µm/px"):
        magnification_names("20x,20")
