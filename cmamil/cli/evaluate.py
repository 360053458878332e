"""`cmamil evaluate`: score every fold of a trained run (bags or patches) on new labelled data."""

from __future__ import annotations

from pathlib import Path

import click

from cmamil.cli.options import option

__all__ = ["evaluate"]


@click.command(context_settings={"show_default": True})
@click.argument("run", type=click.Path(path_type=Path, file_okay=False, exists=True))
@option("images", type=click.Path(path_type=Path, exists=True), default=None,
        help="[patch runs] Image root with split folders (training/ validation/ testing/ or train/ val/ test/) "
             "of class folders, or a class-folder tree, or a MedMNIST-style .npz.")
@click.option("--split", default="testing",
              help="[patch runs] Split folder to evaluate (testing = test, validation = val); a root without split "
                   "folders is used whole.")
@option("features", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
        help="[bag runs] Folder of per-bag feature files made with the run's encoder.")
@option("labels", default=None, help="[bag runs] CSV with slide_id,label[,patient_id] for the bags to evaluate.")
@option("slide_table", default=None, help="[bag runs] CSV of slide_id,patient_id: patients of the slides; --labels "
                                        "may then be per patient (patient_id,label).")
@option("bag_by", default="slide", show_default=True,
        help="[bag runs] One bag per slide, or per patient (a patient's slides concatenated, parents re-indexed).")
@click.option("--fold", type=click.IntRange(min=0), default=None, help="Evaluate this fold only [default: every fold].")
@option("out", default=None,
        help="Evaluation folder [default: RUN/evaluate/<images name>-<split> or RUN/evaluate/<features name>].")
@option("batch_size", default=32)
@option("device", default="auto")
@option("num_workers", default=2)
@option("amp", default=True)
@click.option("--benchmark/--no-benchmark", default=True,
              help="[patch runs] Measure latency (ms/image at batch 1), throughput (images/s at --batch-size) and "
                   "peak memory.")
@option("explain", default=8)
@click.option("--positive-class", default=None,
              help="[patch runs] Class whose true/false positives and false negatives are explained "
                   "[default: the last class].")
@option("embeddings", default=500)
def evaluate(run: Path, **options: object) -> None:
    """Evaluate a trained run (each finished fold) on new labelled images or feature files.

    \b
    Writes predictions.csv, metrics.json/.csv, per_class.csv, confusion matrix, ROC and PR curves; for patch
    models also speed, saliency overlays (explain/) and projector embeddings (projector/).
    Examples:
      cmamil evaluate runs/deit_100x --images breakhis_400x/ --split testing
      cmamil evaluate runs/cma --features feats_external/ --labels external.csv
    """
    from cmamil.cli.train import echo_metrics
    from cmamil.evaluation.evaluate import EvaluateConfig, evaluate_run

    config = EvaluateConfig(run=run, **options)
    result = evaluate_run(config)
    click.echo(f"evaluation folder: {config.out_folder}")
    echo_metrics(result)
    speed = result.get("speed")
    if speed:
        click.echo(f"latency: {speed['latency_ms_per_image']:.2f} ms/image; throughput: "
                   f"{speed['throughput_images_per_s']:.1f} images/s (batch {speed['throughput_batch_size']}); "
                   f"peak memory: {speed['peak_memory_mb']:.0f} MiB ({speed['peak_memory_kind']})")
