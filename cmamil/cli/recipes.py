"""`cmamil recipes`: the shipped training recipes, one per seed study, and what each sets."""

from __future__ import annotations

import click

__all__ = ["recipes"]


@click.group()
def recipes() -> None:
    """List and show the shipped training recipes (use one with `cmamil train --recipe NAME`)."""


@recipes.command("list")
def list_recipes() -> None:
    """Print every recipe: its name, the study it comes from, its kind of input and the options it sets.

    \b
    Example:
      cmamil recipes list
      cmamil train --recipe s4d_medmnist --images organcmnist.npz --out runs/s4d
    """
    from cmamil.recipes import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        inputs = "--features DIR --labels CSV" if recipe.kind == "bags" else "--images ROOT|FILE.npz"
        click.echo(f"{name}: {recipe.study}")
        click.echo(f"  cmamil train --recipe {name} {inputs} --out runs/{name}")
        click.echo("  sets: " + ", ".join(f"{key}={_shown(value)}" for key, value in recipe.options.items()))


@recipes.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Print recipe NAME as its YAML file (a starting point for your own `--config` file).

    \b
    Example:
      cmamil recipes show fadeformer > my_fadeformer.yaml
    """
    from cmamil.recipes import load_recipe

    click.echo(load_recipe(name).text.rstrip())


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    return str(value)
