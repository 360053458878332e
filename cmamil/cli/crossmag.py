"""`cmamil crossmag`: train on each magnification set, test on every set, and write the Train × Test matrix."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from cmamil.cli.layers import layered_options
from cmamil.cli.options import config_options, option
from cmamil.data.arrays import is_array_file
from cmamil.errors import InputError
from cmamil.training.config import PatchTrainConfig

__all__ = ["crossmag"]


def _sets(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """Parse repeated NAME=ROOT options."""
    parsed = []
    for item in values:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise click.BadParameter(f"'{item}' is not NAME=ROOT (e.g. 100x=data/100x)", ctx=ctx, param=param)
        if not Path(root).is_dir() and not is_array_file(root):
            raise click.BadParameter(f"'{root}' is neither a folder nor an .npz file", ctx=ctx, param=param)
        parsed.append((name.strip(), Path(root)))
    return tuple(parsed)


@click.command(context_settings={"show_default": True})
@option("recipe")
@option("config_file", help="YAML file of options: sets (NAME: ROOT), mixed, and any training option; a study's "
                            "crossmag.yaml repeats that study. Flags given on the command line override it.")
@option("model")
@click.option("--set", "sets", multiple=True, callback=_sets, metavar="NAME=ROOT",
              help="A named image set with training/ validation/ testing/ class folders (or a MedMNIST-style "
                   ".npz); repeat for each magnification (at least two).")
@click.option("--mixed", is_flag=True, help="Also train one model on the union of all sets' training images, and test "
                                            "every model on the union of their test images.")
@option("out", help="Study folder: one run folder per training set, the cells, and the matrix.")
@config_options(PatchTrainConfig, skip=("model", "out", "images", "folds"))
def crossmag(recipe: str | None, config_file: Path | None, **options: Any) -> None:
    """Train on every magnification set and test on every set (MagFusion's cross-magnification study).

    \b
    Writes matrix_f1_macro.csv/.png (train × test macro-F1), matrix_accuracy.csv, crossmag.json and
    crossmag.md (in-domain mean, cross-domain mean as MagFusion defines it and of the pure sets, directional
    asymmetry). Reruns reuse finished work.
    Example:
      cmamil crossmag --model deit_small --set 100x=breakhis_100x --set 400x=breakhis_400x --mixed \\
          --out runs/deit_crossmag
      cmamil crossmag --config runs/deit_crossmag/crossmag.yaml --out runs/deit_crossmag_again
      cmamil crossmag --recipe magfusion --model swin_tiny --set 100x=b100 --set 400x=b400 --out runs/swin
    """
    from cmamil.atomic import output_errors
    from cmamil.cli.train import build_config
    from cmamil.crossmag import CrossMagConfig, run_crossmag

    known = {f.name for f in fields(PatchTrainConfig)} | {"sets", "mixed"}
    given, recipe_kind = layered_options(click.get_current_context(), options, config_file, recipe, known)
    if recipe_kind == "bags":
        raise InputError(f"recipe {recipe} trains on slide bags; crossmag needs a patch recipe (see `cmamil "
                         "recipes list`)")
    given.pop("images", None)  # a study file records the sets' roots as images too; the sets decide
    sets = given.pop("sets", ())
    sets = tuple((str(name), Path(root)) for name, root in (sets.items() if isinstance(sets, dict) else sets))
    mixed = bool(given.pop("mixed", False))
    given = {k: v for k, v in given.items() if v is not None}
    if not sets or "model" not in given or "out" not in given:
        raise InputError("--model, --set (twice or more) and --out are required (on the command line or in "
                         "--config); see `cmamil crossmag --help`")
    training = build_config(PatchTrainConfig, {**given, "images": tuple(root for _, root in sets)}, "crossmag")
    with output_errors(training.out):
        run_crossmag(CrossMagConfig(sets=sets, training=training, mixed=mixed))
    from cmamil.distributed import detect_world

    if not detect_world().main:
        return  # under torchrun, rank 0 reports
    click.echo(f"study folder: {training.out}")
    click.echo((training.out / "crossmag.md").read_text().rstrip())
