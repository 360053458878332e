"""`cmamil models`: what a patch model costs (parameters, MACs) and what it produces (feature dimension)."""

from __future__ import annotations

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
