"""Training recipes: one YAML file of `cmamil train` options per seed study, shipped inside the package.

A recipe is a `--config` file with a `recipe:` section naming its study and kind of input (bags or patches).
`cmamil train --recipe NAME` loads it beneath any `--config` file and the command-line flags; `cmamil recipes
list` shows them all. The files are package data, so a user can copy one as a starting point for `--config`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cmamil.errors import InputError

__all__ = ["Recipe", "load_recipe", "recipe_names"]

SUFFIX = ".yaml"


@dataclass(frozen=True)
class Recipe:
    """A named set of training options, the study it reproduces and the kind of input it trains on."""

    name: str
    study: str
    kind: str
    options: dict[str, Any]
    text: str


def recipe_names() -> list[str]:
    """Names of the shipped recipes, sorted."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(SUFFIX)] for f in files if f.name.endswith(SUFFIX))


def load_recipe(name: str) -> Recipe:
    """The shipped recipe `name`; an unknown name is an error listing close matches and every recipe."""
    import yaml

    names = recipe_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise InputError(f"no recipe named '{name}'; {hint}recipes: {', '.join(names)} (see `cmamil recipes list`)")
    text = resources.files(__name__).joinpath(name + SUFFIX).read_text()
    data = yaml.safe_load(text)
    about = data.pop("recipe")
    options = {str(key).replace("-", "_"): value for key, value in data.items()}
    return Recipe(name, str(about["study"]), str(about["kind"]), options, text)
