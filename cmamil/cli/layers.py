"""A command's options in layers: a shipped recipe's, then a `--config` file's, then the command line's.

Each layer overrides the one before (model options merged key by key); a key no option knows is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["given_options", "layered_options", "options_file"]


def options_file(path: Path | None, known: set[str]) -> dict[str, Any]:
    """Options from a YAML file: a plain mapping, a run's config.yaml (its `config`), or a study file with a
    `training` section; a key outside `known` is an error naming it."""
    import yaml

    from cmamil.errors import InputError

    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a mapping of options (KEY: VALUE lines)")
    if "kind" in data and isinstance(data.get("config"), dict):
        data = data["config"]
    data.pop("recipe", None)  # a recipe file's description of itself
    if isinstance(data.get("training"), dict):
        data = {**data.pop("training"), **data}
    options = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"{path}: unknown option(s) {', '.join(unknown)}; use the names of the long flags "
                         "(see --help)")
    return options


def layered_options(ctx: click.Context, values: dict[str, Any], config_file: Path | None, recipe: str | None,
                    known: set[str]) -> tuple[dict[str, Any], str | None]:
    """The options of a command: a recipe's, then a --config file's, then the command line's, each overriding the
    one before (model options merged key by key); and the kind of input the recipe is for (None without one)."""
    layers = [options_file(config_file, known), given_options(ctx, values)]
    kind = None
    if recipe is not None:
        from cmamil.recipes import load_recipe

        chosen = load_recipe(recipe)
        layers.insert(0, chosen.options)
        kind = chosen.kind
    merged: dict[str, Any] = {}
    for layer in layers:
        model_options = {**merged.get("model_options", {}), **(layer.get("model_options") or {})}
        merged.update(layer)
        if model_options:
            merged["model_options"] = model_options
    return merged, kind


def given_options(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options a user actually gave on the command line (not left at their default)."""
    return {k: v for k, v in values.items() if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
