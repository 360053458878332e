"""`cmamil report`: the per-fold and mean ± std table of a k-fold run, and its figures."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report"]


@click.command(context_settings={"show_default": True})
@click.argument("run", type=click.Path(path_type=Path, file_okay=False, exists=True))
def report(run: Path) -> None:
    """Print a run's per-fold and mean ± std test metrics and write its figures (ROC, PR, confusion matrix).

    \b
    Example:
      cmamil report runs/cma
    """
    from cmamil.evaluation.report import report_run

    table, figures = report_run(run)
    click.echo(table)
    click.echo(f"figures: {len(figures)} written to {run / 'figures'}")
