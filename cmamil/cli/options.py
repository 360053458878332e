"""Command-line options shared by several commands, each defined once.

`SHARED` holds the flags and help of every shared or config-derived option; `option(name)` gives one of them to
a command (with that command's default), and `config_options(*config_classes)` gives a command every field of
the training config classes, marking which kind of run each applies to and deriving its default. For the slide
commands, `tiling_options` adds the magnification, tile-size, resolution and tissue options and hands the command
one `tiling: TilingConfig`; `slides_argument` and `output_options` add the inputs and the output folder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

from cmamil.training.config import FOLD_RULE

__all__ = [
    "SHARED",
    "config_options",
    "heatmap_options",
    "key_values",
    "option",
    "output_options",
    "predict_options",
    "slides_argument",
    "tiling_options",
]

TISSUE_CHOICES = ("saturation", "fluorescence", "none")


def _options(*decorators: Callable) -> Callable:
    """Apply click decorators in the order they are listed (top to bottom in --help)."""

    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _fractions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """'0.25' or '0.1,0.25,0.5' (coarse to fine) as floats."""
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a fraction or a comma-separated list of fractions") from None


def slides_argument(func: Callable | None = None, *, required: bool = True) -> Callable:
    """SLIDES...: slide files, folders (searched recursively) or CSV tables with a `path` column.

    Use as `@slides_argument`, or `@slides_argument(required=False)` where other inputs may replace slides.
    """
    argument = click.argument("slides", nargs=-1, required=required, type=click.Path(path_type=Path))
    return argument(func) if func is not None else argument


def key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """Parse repeated KEY=VALUE options; values are read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", ctx=ctx, param=param)
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return options


def output_options(func: Callable) -> Callable:
    """--out, --format, --overwrite: where per-slide files go, their format, and whether finished ones are redone."""
    return _options(
        option("out", required=True, help="Output folder (one file per slide, named <slide_id>.h5 or .zarr)."),
        click.option("--format", "storage", type=click.Choice(["h5", "zarr"]), default="h5", show_default=True,
                     help="Per-slide file format."),
        click.option("--overwrite", is_flag=True,
                     help="Redo slides whose output file exists (by default they are skipped)."),
    )(func)


def tiling_options(func: Callable) -> Callable:
    """Magnifications, tile size, --mpp and tissue options, passed to the command as `tiling: TilingConfig`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cmamil.extract.grid import TilingConfig
        from cmamil.extract.tissue import TissueConfig

        tissue = TissueConfig(
            method=kwargs.pop("tissue"),
            mask_mpp=kwargs.pop("tissue_mpp"),
            threshold=kwargs.pop("tissue_threshold"),
        )
        kwargs["tiling"] = TilingConfig(
            magnifications=kwargs.pop("magnifications"),
            tile_px=kwargs.pop("tile_px"),
            min_tissue=kwargs.pop("min_tissue"),
            mpp=kwargs.pop("mpp"),
            tissue=tissue,
        )
        return func(*args, **kwargs)

    return _options(
        click.option("--magnifications", default="5,10,20", show_default=True,
                     help="Magnifications, in any order: powers (5,10,20; 20x = 0.5 µm/px) "
                          "or µm/px (2um,1um,0.5um). Each must nest in the coarser one (×2, ×4 …)."),
        click.option("--tile-px", type=click.IntRange(min=8), default=224, show_default=True,
                     help="Tile size in pixels at every magnification."),
        option("mpp"),
        click.option("--tissue", type=click.Choice(TISSUE_CHOICES), default="saturation", show_default=True,
                     help="Tissue detection: saturation (brightfield H&E/IHC), fluorescence (bright on dark), "
                          "none (tile the whole slide)."),
        click.option("--tissue-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Fixed threshold on the tissue signal in (0, 1) instead of Otsu's."),
        click.option("--tissue-mpp", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
                     help="Resolution of the tissue mask in µm/px."),
        click.option("--min-tissue", default="0.25", show_default=True, callback=_fractions,
                     help="Tissue fraction a tile needs to be kept: one value, or one per magnification coarse to "
                          "fine (0.1,0.25,0.5). Ancestors of kept tiles are always kept."),
    )(wrapper)


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    """'png,geojson,h5' as a tuple of known heatmap formats."""
    from cmamil.evaluation.tile_maps import FORMATS

    formats = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of {', '.join(FORMATS)}")
    return formats


def heatmap_options(func: Callable) -> Callable:
    """What heatmaps show and how they are written, passed to the command as `heatmap: HeatmapConfig`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cmamil.evaluation.tile_maps import HeatmapConfig

        kwargs["heatmap"] = HeatmapConfig(**{k: kwargs.pop(k) for k in (
            "fold", "what", "formats", "normalize", "top_k", "thumbnail_px", "slides")})
        return func(*args, **kwargs)

    return _options(
        click.option("--fold", type=click.IntRange(min=0), default=None,
                     help="Fold whose model the heatmaps show [default: the lowest finished fold]."),
        click.option("--what", type=click.Choice(["attention", "score"]), default="attention", show_default=True,
                     help="Per-tile value shown: the model's attention, or its per-tile probability of the predicted "
                          "class (models that give per-tile scores)."),
        click.option("--format", "formats", default="png,geojson,h5", show_default=True, callback=_formats,
                     help="Heatmap files per slide: png (magnifications side by side), geojson (QuPath: File > "
                          "Import objects), h5 (per-tile values)."),
        click.option("--normalize", type=click.Choice(["rank", "minmax", "raw"]), default="rank", show_default=True,
                     help="Shown values per slide and magnification: rank (percentile), minmax (to 0–1) or raw."),
        click.option("--top-k", type=click.IntRange(min=0), default=8, show_default=True,
                     help="Highest- and lowest-valued tiles per magnification in the montage PNG (0: no montage; "
                          "needs the slide)."),
        click.option("--thumbnail-px", type=click.IntRange(min=64), default=1024, show_default=True,
                     help="Longest side of the thumbnail the tiles are painted on."),
        click.option("--slides", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
                     help="Folder holding the slides of feature-file inputs, found as <bag_id>.<ext> [default: the "
                          "slide path recorded in each feature file]."),
    )(wrapper)


def predict_options(func: Callable) -> Callable:
    """RUN, INPUTS and the options of applying a run (`cmamil predict` and `cmamil heatmap`)."""
    return _options(
        click.argument("run", type=click.Path(path_type=Path, file_okay=False, exists=True)),
        click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
        option("out", required=True, help="Output folder (predictions.csv, metrics.json, heatmaps/, features/ of "
                                          "slide inputs)."),
        option("labels", default=None, help="CSV with slide_id,label: adds the true label to predictions.csv "
                                            "and writes the ensemble's metrics.json."),
        option("device", default="auto", show_default=True),
        option("batch_size", default=64, show_default=True, help="Tiles per encoder batch (slide inputs)."),
        option("num_workers", default=2, show_default=True,
               help="DataLoader worker processes reading tiles (slide inputs)."),
        option("overwrite", help="Redo bags whose results exist (by default finished bags are skipped)."),
    )(func)


def _choice(*names: str) -> click.Choice:
    return click.Choice(list(names))


# every option shared by several commands, or derived from a config field, defined once: flags and help
SHARED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (("--model",), {"help": "Registered aggregator (with --features: cma_mil, abmil, clam_sb, mean_pool) "
                                     "or patch model (with --images: deit_small, swin_tiny, mscvit_t, s4d, "
                                     "timm:<arch>)."}),
    "out": (("--out", "-o"), {"type": click.Path(path_type=Path, file_okay=False),
                         "help": "Run folder (config, splits, per-fold checkpoints, metrics, TensorBoard events, "
                                 "figures)."}),
    "features": (("--features",), {"type": click.Path(path_type=Path, file_okay=False),
                                   "help": "Folder of per-bag feature files from `cmamil extract` (bag training)."}),
    "labels": (("--labels",), {"type": click.Path(path_type=Path, dir_okay=False, exists=True),
                               "help": "CSV with slide_id,label[,patient_id] (or patient_id,label with --slide-table); "
                                       "patients never straddle folds."}),
    "images": (("--images",), {"type": click.Path(path_type=Path),
                               "help": "Image root: training/ validation/ testing/ (or train/ val/ test/) class "
                                       "folders, or a flat class-folder tree with --folds, or a MedMNIST-style "
                                       ".npz (train_/val_/test_ images and labels) (patch training)."}),
    "folds": (("--folds",), {"type": click.IntRange(min=2),
                             "help": "Cross-validation folds (with --images: the split folders are used unless "
                                     "--folds is set). " + FOLD_RULE}),
    "epochs": (("--epochs",), {"type": click.IntRange(min=1), "help": "Maximum epochs."}),
    "lr": (("--lr",), {"type": float, "help": "Learning rate (peak, after warm-up)."}),
    "weight_decay": (("--weight-decay",), {"type": float,
                                           "help": "Weight decay (none on norms, biases and tokens)."}),
    "optimizer": (("--optimizer",), {"type": _choice("adam", "adamw", "sgd"), "help": "Optimiser."}),
    "scheduler": (("--scheduler",), {"type": _choice("constant", "cosine", "plateau"),
                                     "help": "Learning-rate schedule after the warm-up: constant, cosine decay "
                                             "to zero, or plateau (torch's ReduceLROnPlateau on --monitor)."}),
    "plateau_factor": (("--plateau-factor",), {"type": click.FloatRange(0, 1, min_open=True, max_open=True),
                                               "help": "With --scheduler plateau: multiply the lr by this factor "
                                                       "when --monitor stalls."}),
    "plateau_patience": (("--plateau-patience",), {"type": click.IntRange(min=0),
                                                   "help": "With --scheduler plateau: epochs without improvement "
                                                           "of --monitor that are tolerated; the lr drops after "
                                                           "one more."}),
    "warmup_epochs": (("--warmup-epochs",), {"type": click.IntRange(min=0),
                                             "help": "Linear learning-rate warm-up (epochs)."}),
    "clip_grad": (("--clip-grad",), {"type": click.FloatRange(min=0), "help": "Gradient-norm clipping (0: off)."}),
    "amp": (("--amp/--no-amp",), {"help": "Mixed precision on CUDA (ignored on CPU)."}),
    "weighted_sampling": (("--weighted-sampling/--no-weighted-sampling",),
                          {"help": "Draw training items with every class equally likely."}),
    "monitor": (("--monitor",), {"type": _choice("auc", "f1_macro", "balanced_accuracy", "accuracy", "loss"),
                                 "help": "Validation metric for early stopping and the best checkpoint."}),
    "patience": (("--patience",), {"type": click.IntRange(min=1),
                                   "help": "Stop after this many epochs without improvement of --monitor."}),
    "min_epochs": (("--min-epochs",), {"type": click.IntRange(min=0), "help": "Never stop early before this epoch."}),
    "val_fraction": (("--val-fraction",), {"type": click.FloatRange(0.0, 0.9),
                                           "help": "Share of each fold's training part held out for validation (how many "
                                                   "patients per class this needs: see --folds)."}),
    "model_options": (("--model-option", "model_options"), {
        "multiple": True, "callback": key_values, "metavar": "KEY=VALUE",
        "help": "Option passed to the model factory, repeatable (e.g. --model-option cross_attention=local)."}),
    "seed": (("--seed",), {"type": int, "help": "Random seed (splits, initialisation, sampling, random weights)."}),
    "deterministic": (("--deterministic/--no-deterministic",),
                      {"help": "Ask torch for deterministic kernels (slower)."}),
    "device": (("--device",), {"type": _choice("auto", "cpu", "cuda"), "help": "auto uses CUDA when a GPU is visible."}),
    "num_workers": (("--num-workers",), {"type": click.IntRange(min=0), "help": "DataLoader worker processes."}),
    "overwrite": (("--overwrite",), {"is_flag": True,
                                     "help": "Redo finished work (folds, files) instead of skipping it."}),
    "progress": (("--progress/--no-progress",), {"help": "Progress bars on a terminal."}),
    "figures": (("--figures/--no-figures",), {"help": "Write the run's figures when training ends."}),
    "magnifications": (("--magnifications",), {
        "help": "Comma-separated magnifications to use, e.g. 5,10,20 or 5x,20x or 2um [default: all in the "
                "files]."}),
    "splits": (("--splits",), {"type": click.Path(path_type=Path, file_okay=False, exists=True),
                               "help": "Reuse splits: a folder of fold_K.csv (id,split; this tool's) or "
                                       "CLAM-style splits_K.csv (train,val,test columns)."}),
    "standardize": (("--standardize/--no-standardize",), {
        "help": "Standardise each feature dimension per magnification with the mean and std of the fold's "
                "training bags (helps un-normalised encoders, e.g. random weights)."}),
    "slide_table": (("--slide-table",), {
        "type": click.Path(path_type=Path, dir_okay=False, exists=True),
        "help": "CSV of slide_id,patient_id (CLAM's case_id, STAMP's FILENAME and PATIENT columns are read too), "
                "several slides per patient; --labels may then be a patient table (patient_id,label)."}),
    "bag_by": (("--bag-by",), {"type": _choice("slide", "patient"),
                               "help": "One bag per slide, or per patient: all of a patient's slides in one bag "
                                       "(each magnification's tiles concatenated, parents re-indexed); splits, "
                                       "metrics and predictions are then per patient."}),
    "group_by": (("--group-by",), {"help": "Regex whose first group (or named group 'patient') in a file name is "
                                            "the patient id; a patient's images never straddle splits. Without it, "
                                            "BreakHis and TCGA file names are grouped by patient automatically."}),
    "no_group": (("--no-group",), {"is_flag": True,
                                   "help": "Split per image (or per slide) even where names reveal patients "
                                           "(BreakHis file names, TCGA barcodes): states that the items are "
                                           "independent. Refused with a patient_id column in --labels."}),
    "split_names": (("--split-names",), {"help": "Comma-separated train,val,test folder names "
                                                  "[default: auto-detect]."}),
    "class_names": (("--class-names",), {
        "help": "Comma-separated class names: for an .npz, the names of labels 0, 1, … [default: FILE.json or "
                "FILE.csv beside it, else the indices]; for folders, the class folders to use, in this order."}),
    "batch_size": (("--batch-size",), {"type": click.IntRange(min=1), "help": "Images per batch."}),
    "label_smoothing": (("--label-smoothing",), {"type": click.FloatRange(0.0, 0.5), "help": "Label smoothing."}),
    "augment": (("--augment",), {"type": _choice("none", "basic", "strong"),
                                 "help": "none; basic = flips + 90° rotations; strong = basic + colour jitter + "
                                         "random erasing."}),
    "mixup": (("--mixup",), {"type": click.FloatRange(0.0), "help": "Mixup alpha (0: off)."}),
    "cutmix": (("--cutmix",), {"type": click.FloatRange(0.0), "help": "CutMix alpha (0: off)."}),
    "input_px": (("--input-px",), {"type": click.IntRange(min=8),
                                   "help": "Resize inputs to this square size instead of the model's input size."}),
    "weights": (("--weights",), {"help": "Initial weights: a local .pth/.safetensors file, or 'hub' to download."}),
    "explain": (("--explain",), {"type": click.IntRange(min=0),
                                 "help": "Grad-CAM / attention-rollout overlays per group (TP, FP, FN) of the test "
                                         "set (0: none)."}),
    "config_file": (("--config", "config_file"), {
        "type": click.Path(path_type=Path, dir_okay=False, exists=True),
        "help": "YAML file of options (keys as the long flags, - or _); a run's own config.yaml repeats that run. "
                "Flags given on the command line override it."}),
    "recipe": (("--recipe",), {"metavar": "NAME",
                               "help": "Start from a shipped recipe (a seed study's options; see `cmamil recipes "
                                       "list`). A --config file overrides it, and flags override both."}),
    "dry_run": (("--dry-run",), {"is_flag": True,
                                 "help": "Check the inputs, print the splits (per fold and part: items and "
                                         "patients per class) and exit without writing anything."}),
    "embeddings": (("--embeddings",), {"type": click.IntRange(min=0),
                                       "help": "Test images whose embeddings go to TensorBoard's projector (0: none)."}),
    "mpp": (("--mpp",), {"type": click.FloatRange(min=0, min_open=True), "default": None,
                         "help": "Level-0 µm/px, overriding the slide's metadata (needed when a slide has none)."}),
}


def option(name: str, **overrides: Any) -> Callable:
    """The click option `name` as defined once in SHARED, with a command's own default or other settings."""
    declarations, settings = SHARED[name]
    return click.option(*declarations, **{**settings, **overrides})


def config_options(*config_classes: type, skip: tuple[str, ...] = ()) -> Callable:
    """Options for every field of the given training config classes, defaults and applicability derived from them.

    A field of only some classes is marked with their kind ("[bags]"); a default that differs between
    classes is shown per kind. The click default is the shared default, or None where the kinds differ (the
    command then leaves the field to the config class).
    """
    from cmamil.training.config import config_fields

    defaults = {cls.KIND: config_fields(cls) for cls in config_classes}
    names = list(dict.fromkeys(name for fields in defaults.values() for name in fields if name not in skip))
    decorators = []
    for name in names:
        kinds = [kind for kind, fields in defaults.items() if name in fields]
        values = {kind: defaults[kind][name] for kind in kinds}
        shared = len({repr(v) for v in values.values()}) == 1
        help_text = SHARED[name][1]["help"]
        if len(kinds) < len(config_classes):
            help_text = f"[{', '.join(kinds)}] {help_text}"
        if not shared:
            help_text += " [default: " + " / ".join(f"{_shown(v)} ({k})" for k, v in values.items()) + "]"
        default = next(iter(values.values())) if shared else None
        if name == "model_options":
            decorators.append(option(name))
        elif SHARED[name][1].get("is_flag") or "/" in SHARED[name][0][0]:
            decorators.append(option(name, default=default, help=help_text, show_default=shared))
        else:
            shown = shared and default is not None and not isinstance(default, tuple)
            decorators.append(option(name, default=_cli_value(default) if shared else None, help=help_text,
                                     show_default=shown))
    return _options(*decorators)


def _cli_value(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)
