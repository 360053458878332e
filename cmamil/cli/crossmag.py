"""`cmamil crossmag`: train on each magnification set, test on every set, and write the Train × Test matrix."""

from __future__ import annotations

from pathlib import Path

import click

from cmamil.cli.train import train_options

__all__ = ["crossmag"]

TRAINING_OPTIONS = (
    "epochs", "lr", "weight_decay", "optimizer", "monitor", "patience", "min_epochs", "val_fraction",
    "model_options", "seed", "deterministic", "device", "num_workers", "overwrite", "group_by", "split_names",
    "batch_size", "weights", "warmup_epochs", "clip_grad", "label_smoothing", "weighted_sampling", "augment",
    "mixup", "cutmix", "amp", "input_px", "explain", "embeddings",
)


def _sets(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """Parse repeated NAME=ROOT options."""
    parsed = []
    for item in values:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise click.BadParameter(f"'{item}' is not NAME=ROOT (e.g. 100x=data/100x)", ctx=ctx, param=param)
        if not Path(root).is_dir():
            raise click.BadParameter(f"'{root}' is not a folder", ctx=ctx, param=param)
        parsed.append((name.strip(), Path(root)))
    return tuple(parsed)


@train_options(*TRAINING_OPTIONS)
@click.command(context_settings={"show_default": True})
@click.option("--model", required=True,
              help="Registered patch model (deit_small, swin_tiny, fadeformer, mscvit_t, s4d, timm:<arch>, …).")
@click.option("--set", "sets", multiple=True, required=True, callback=_sets, metavar="NAME=ROOT",
              help="A named image set with training/ validation/ testing/ class folders; repeat for each "
                   "magnification (at least two).")
@click.option("--mixed", is_flag=True, help="Also train one model on the union of all sets' training images.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Study folder: one run folder per training set, the cells, and the matrix.")
def crossmag(model: str, sets: tuple[tuple[str, Path], ...], mixed: bool, out: Path, **options: object) -> None:
    """Train on every magnification set and test on every set (MagFusion's cross-magnification study).

    \b
    Writes matrix_f1_macro.csv/.png (train × test macro-F1), matrix_accuracy.csv, crossmag.json and
    crossmag.md (in-domain mean, cross-domain mean, directional asymmetry). Reruns reuse finished work.
    Example:
      cmamil crossmag --model deit_small --set 100x=breakhis_100x --set 400x=breakhis_400x --mixed \\
          --out runs/deit_crossmag
    """
    from cmamil.cli.train_patches import patch_config
    from cmamil.crossmag import CrossMagConfig, run_crossmag

    training = patch_config(tuple(root for _, root in sets), model=model, out=out, folds=None, **options)
    run_crossmag(CrossMagConfig(sets=sets, training=training, mixed=mixed))
    click.echo(f"study folder: {out}")
    click.echo((out / "crossmag.md").read_text().rstrip())
