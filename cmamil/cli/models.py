"""`cmamil models`: what a patch model costs (parameters, MACs) and what it produces (feature dimension); several
models compared side by side (parameters, MACs, peak memory, throughput per input size)."""

from __future__ import annotations

from pathlib import Path

import click

from cmamil.cli.options import option

__all__ = ["models"]


@click.group()
def models() -> None:
    """Inspect patch models: parameters, MACs, input size and embedding size."""


@models.command("info")
@click.argument("name")
@option("model_options")
@click.option(
    "--input-size",
    type=click.IntRange(min=1),
    default=None,
    show_default=True,
    help="Square input side in pixels, passed as the model's img_size option (default: the model's own).",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Number of classifier outputs; 0 builds the encoder.",
)
def info(name: str, input_size: int | None, num_classes: int, model_options: dict[str, object]) -> None:
    """Print parameters, MACs per image, input size and feature dimension of patch model NAME.

    NAME is a registered model (see `cmamil plugins list`) or timm:<arch>. MACs are counted by
    torch.utils.flop_counter on one image (FLOPs / 2): matrix products, convolutions and attention;
    normalisation, elementwise work and FFTs are not counted.

    \b
    Examples:
      cmamil models info mscvit_t --input-size 224 --num-classes 2
      cmamil models info s4d --model-option patch_size=4
    """
    from cmamil.models import count_macs, count_parameters, create_model

    options = dict(model_options) if input_size is None else {**model_options, "img_size": input_size}
    model = create_model(name, num_classes=num_classes, **options)
    config = model.data_config
    macs = count_macs(model)
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    rows = [
        ("model", name),
        ("input size", "×".join(str(v) for v in config.input_size)),
        ("parameters", f"{total:,} ({trainable:,} trainable)"),
        ("MACs", f"{macs:,} ({macs / 1e9:.3f} G per image)"),
        ("feature dim", str(model.num_features)),
        ("classes", f"{num_classes}" + (" (encoder)" if num_classes == 0 else "")),
        ("mean / std", f"{config.mean} / {config.std}, {config.interpolation}"),
    ]
    for label, value in rows:
        click.echo(f"{label:<12} {value}")


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of pixel sizes (e.g. 28,64,224)")
    return sizes


@models.command("compare")
@click.argument("names", nargs=-1, required=True)
@click.option("--input-size", "sizes", default="28,64,224", show_default=True, callback=_sizes,
              help="Comma-separated square input sizes in pixels; each model is built with img_size=N where its "
                   "factory takes it (convolutional nets are fed N×N as they are).")
@option("batch_size", default=64, show_default=True, help="Images per timed batch (throughput).")
@option("device", default="auto", show_default=True)
@click.option("--num-classes", type=click.IntRange(min=0), default=2, show_default=True,
              help="Number of classifier outputs (0 builds the encoder).")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed batch-1 calls (median latency); timed batches: max(3, repeats // 4), median throughput.")
@option("model_options", help="Option passed to the model factories, repeatable: KEY=VALUE for every model, or "
                              "NAME:KEY=VALUE for one (e.g. --model-option s4d:d_model=256).")
@option("out", default=Path("efficiency"), show_default=True,
        help="Folder for efficiency.csv and efficiency.png.")
@option("progress", default=True)
def compare(names: tuple[str, ...], sizes: tuple[int, ...], batch_size: int, device: str, num_classes: int,
            repeats: int, model_options: dict[str, object], out: Path, progress: bool) -> None:
    """Measure patch models NAME... side by side at each input size and write the table as CSV and a plot.

    Per model and size: parameters, MACs per image (as `models info` counts them), peak memory (the rise of
    resident memory on CPU, or CUDA memory allocated) and throughput (images/s, median of timed batches after
    warm-up). Each model is measured in its own process so its memory figure is its own.

    \b
    Examples:
      cmamil models compare s4d deit_small --input-size 28,64 --model-option s4d:patch_size=1
      cmamil models compare s4d timm:resnet10t --input-size 28,64,224 --device cuda --out runs/efficiency
    """
    from cmamil.evaluation.efficiency import compare_models, format_efficiency, write_efficiency

    shared = {k: v for k, v in model_options.items() if ":" not in k}
    options = {name: dict(shared) for name in names}
    for key, value in model_options.items():
        if ":" in key:
            name, _, option_name = key.rpartition(":")
            if name not in options:
                raise click.BadParameter(f"'{key}' names model {name}, which is not compared "
                                         f"({', '.join(names)})", param_hint="--model-option")
            options[name][option_name] = value
    rows = compare_models(names, sizes, batch_size=batch_size, device=device, num_classes=num_classes,
                          options=options, repeats=repeats, progress=progress)
    click.echo(format_efficiency(rows))
    table, plot = write_efficiency(rows, out)
    click.echo(f"wrote {table} and {plot}")
    if any("error" in row for row in rows):
        raise SystemExit(1)

