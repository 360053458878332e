"""`cmamil evaluate`: score a trained patch classifier on an image split, with speed, overlays and embeddings."""

from __future__ import annotations

from pathlib import Path

import click

from cmamil.cli.train import train_options

__all__ = ["evaluate"]


@train_options("batch_size", "device", "num_workers", "amp", "explain", "embeddings")
@click.command(context_settings={"show_default": True})
@click.argument("run", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--images", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True,
              help="Image root with split folders (training/ validation/ testing/ or train/ val/ test/) of class "
                   "folders, or a class-folder tree.")
@click.option("--split", default="testing",
              help="Split folder to evaluate (testing = test, validation = val); a root without split folders "
                   "is used whole.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Evaluation folder [default: RUN/evaluate/<images name>-<split>].")
@click.option("--benchmark/--no-benchmark", default=True,
              help="Measure latency (ms/image at batch 1), throughput (images/s at --batch-size) and peak memory.")
@click.option("--positive-class", default=None,
              help="Class whose true/false positives and false negatives are explained [default: the last class].")
def evaluate(run: Path, images: Path, **options: object) -> None:
    """Evaluate a trained patch classifier (a run folder, or each fold of a k-fold run).

    \b
    Writes metrics.json/.csv, per_class.csv, predictions.csv, confusion matrix, ROC and PR curves,
    saliency overlays (explain/) and projector embeddings (projector/).
    Examples:
      cmamil evaluate runs/deit_100x --images breakhis_400x/ --split testing
      tensorboard --logdir runs/deit_100x/evaluate
    """
    from cmamil.cli.train_patches import echo_metrics
    from cmamil.patch_evaluation import EvaluateConfig, evaluate_run

    config = EvaluateConfig(run=run, images=images, **options)
    result = evaluate_run(config)
    click.echo(f"evaluation folder: {config.out_folder}")
    echo_metrics(result)
    speed = result.get("speed")
    if speed:
        click.echo(f"latency: {speed['latency_ms_per_image']:.2f} ms/image; throughput: "
                   f"{speed['throughput_images_per_s']:.1f} images/s (batch {speed['throughput_batch_size']}); "
                   f"peak memory: {speed['peak_memory_mb']:.0f} MiB ({speed['peak_memory_kind']})")
