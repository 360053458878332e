"""`cmamil train`: k-fold training of a MIL aggregator on slide bags, or of a patch classifier on images.

One command, two inputs: `--features DIR --labels CSV` trains an aggregator (`cmamil.aggregators`) on
per-bag feature files; `--images ROOT` trains a patch model (`cmamil.models`) on class folders. Options that
apply to one input only are listed under it and refused with the other. Defaults that differ between the
two (epochs, learning rate, weight decay, optimiser, monitored metric) follow each protocol's reference
setup and are shown as "bags / images".
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import click

from cmamil.cli.options import key_values
from cmamil.errors import InputError

__all__ = ["train", "train_options"]

BAG_ONLY = ("labels", "magnifications", "splits", "standardize")
PATCH_ONLY = (
    "group_by", "batch_size", "warmup_epochs", "clip_grad", "label_smoothing", "weighted_sampling",
    "augment", "mixup", "cutmix", "weights", "amp", "split_names", "input_px", "explain", "embeddings",
)


@click.command(context_settings={"show_default": True})
@click.option("--features", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of per-bag feature files from `cmamil extract` (trains a MIL aggregator).")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Image root: training/ validation/ testing/ (or train/ val/ test/) class folders, or a flat "
                   "class-folder tree with --folds (trains a patch classifier).")
@click.option("--model", required=True,
              help="Registered aggregator (with --features, e.g. cma_mil, abmil, clam_sb, mean_pool) or patch "
                   "model (with --images, e.g. deit_small, swin_tiny, mscvit_t, s4d, timm:<arch>).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Run folder (config, splits, per-fold checkpoints, metrics, TensorBoard events, figures).")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Number of cross-validation folds [default: 5 with --features; with --images the given "
                   "split folders are used unless --folds is set].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs [default: 50 / 100].")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 2e-4 / 3e-4].")
@click.option("--weight-decay", type=float, default=None, help="Weight decay [default: 1e-5 / 0.05].")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default=None,
              help="Optimiser [default: adam / adamw].")
@click.option("--monitor", default=None,
              help="Validation metric for early stopping and the best checkpoint: auc, f1_macro, "
                   "balanced_accuracy, accuracy or loss [default: auc / f1_macro].")
@click.option("--patience", type=click.IntRange(min=1), default=20,
              help="Stop after this many epochs without improvement of --monitor.")
@click.option("--min-epochs", type=click.IntRange(min=0), default=10,
              help="Never stop early before this epoch.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 0.9), default=0.2,
              help="Share of each fold's training part held out for validation.")
@click.option("--model-option", "model_options", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Option passed to the model factory, repeatable (e.g. --model-option cross_attention=local).")
@click.option("--seed", type=int, default=0, help="Random seed for splits, initialisation and sampling.")
@click.option("--deterministic", is_flag=True, help="Ask torch for deterministic kernels (slower).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="auto uses CUDA when a GPU is visible.")
@click.option("--num-workers", type=click.IntRange(min=0), default=2, help="DataLoader worker processes.")
@click.option("--overwrite", is_flag=True, help="Retrain folds that already finished instead of skipping them.")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="[--features] CSV with slide_id,label[,patient_id]; patients never straddle folds.")
@click.option("--magnifications", default=None,
              help="[--features] Comma-separated magnifications to use, e.g. 5x,10x,20x [default: all in the files].")
@click.option("--splits", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="[--features] Reuse splits: a folder of fold_K.csv (this tool's, or CLAM-style "
                   "train/val/test columns).")
@click.option("--standardize", is_flag=True,
              help="[--features] Standardise each feature dimension per magnification with the mean and std of "
                   "the fold's training bags (helps with un-normalised encoders, e.g. random weights).")
@click.option("--group-by", default=None,
              help="[--images] Regex whose first group (or named group 'patient') in a file name is the patient "
                   "id; images of one patient never straddle splits.")
@click.option("--split-names", default=None,
              help="[--images] Comma-separated train,val,test folder names [default: auto-detect].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, help="[--images] Images per batch.")
@click.option("--weights", default=None,
              help="[--images] Initial weights: a local .pth/.safetensors file, or 'hub' to download.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=5, help="[--images] Linear warm-up before cosine decay.")
@click.option("--clip-grad", type=float, default=1.0, help="[--images] Gradient-norm clipping (0 disables).")
@click.option("--label-smoothing", type=click.FloatRange(0.0, 0.5), default=0.0, help="[--images] Label smoothing.")
@click.option("--weighted-sampling", is_flag=True, help="[--images] Sample classes with equal probability.")
@click.option("--augment", type=click.Choice(["none", "basic", "strong"]), default="basic",
              help="[--images] none; basic = flips + 90° rotations; strong = basic + colour jitter + random erasing.")
@click.option("--mixup", type=click.FloatRange(0.0), default=0.0, help="[--images] Mixup alpha (0 disables).")
@click.option("--cutmix", type=click.FloatRange(0.0), default=0.0, help="[--images] CutMix alpha (0 disables).")
@click.option("--amp/--no-amp", default=True, help="[--images] Mixed precision on CUDA (ignored on CPU).")
@click.option("--input-px", type=click.IntRange(min=8), default=None,
              help="[--images] Resize images to this square size instead of the model's input size.")
@click.option("--explain", type=click.IntRange(min=0), default=8,
              help="[--images] Grad-CAM / attention-rollout overlays per group (TP, FP, FN) of the test set "
                   "(0: none).")
@click.option("--embeddings", type=click.IntRange(min=0), default=500,
              help="[--images] Test images whose embeddings go to TensorBoard's projector; 0: none.")
def train(features: Path | None, images: Path | None, **options: object) -> None:
    """Train a model with k-fold cross-validation and write a run folder.

    \b
    Examples:
      cmamil train --features feats/ --labels labels.csv --model cma_mil --folds 5 --out runs/cma
      cmamil train --images breakhis_100x/ --model deit_small --out runs/deit_100x
      tensorboard --logdir runs
    """
    if (features is None) == (images is None):
        raise InputError("give exactly one of --features (slide bags) or --images (patch images)")
    ctx = click.get_current_context()
    wrong = PATCH_ONLY if features is not None else BAG_ONLY
    given = [name for name in wrong if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        mode = "--features" if features is not None else "--images"
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(f"{flags} cannot be used with {mode}; see `cmamil train --help`")
    if features is not None:
        if options["labels"] is None:
            raise InputError("--features needs --labels (a CSV with slide_id,label[,patient_id])")
        from cmamil.cli.train_bags import run_bags

        run_bags(features=features, **options)
    else:
        from cmamil.cli.train_patches import run_patches

        run_patches(images=images, **options)


def train_options(*names: str):
    """Decorator giving a patch-image command these options of `cmamil train`, so each is defined once.

    The copies' help drops the "[--images]" mark and keeps the image side of "bags / images" defaults.
    """

    def attach(command: click.Command) -> click.Command:
        for param in train.params:
            if param.name in names:
                shared = copy.copy(param)
                text = (param.help or "").removeprefix("[--images] ")
                shared.help = re.sub(r"\[default: [^/\]]+ / ([^\]]+)\]", r"[default: \1]", text)
                command.params.append(shared)
        return command

    return attach
