"""The `cmamil` command line: a thin click layer over the library.

Subcommands live one per module and are imported only when invoked, so `cmamil --help` stays instant
(no torch import). A CmamilError becomes one line on stderr and exit code 1; `--debug` shows the traceback.
SIGTERM and SIGINT unwind the command like an error (temporary files removed, manifests written) and exit
143 and 130.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from cmamil import __version__
from cmamil.errors import CmamilError

__all__ = ["main"]

# command name -> (module, attribute, one-line help shown by `cmamil --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "extract": ("cmamil.cli.extract", "extract", "Embed slide or image-set tiles into one feature file per bag."),
    "link": ("cmamil.cli.link", "link", "Link other toolkits' per-magnification feature folders into nested bags."),
    "crossmag": ("cmamil.cli.crossmag", "crossmag", "Train on each magnification set, test on every set."),
    "demo": ("cmamil.cli.demo", "demo", "Run the whole pipeline on a synthetic cohort in a few minutes."),
    "heatmap": ("cmamil.cli.heatmap", "heatmap", "Paint a run's per-tile attention or scores: PNG, QuPath GeoJSON, HDF5."),
    "predict": ("cmamil.cli.predict", "predict", "Apply a trained run's folds to new slides or feature files."),
    "evaluate": ("cmamil.cli.evaluate", "evaluate", "Evaluate a trained patch classifier: metrics, speed, overlays."),
    "recipes": ("cmamil.cli.recipes", "recipes", "List the shipped training recipes, one per seed study."),
    "plugins": ("cmamil.cli.plugins", "plugins", "List and check installed model and aggregator plugins."),
    "models": ("cmamil.cli.models", "models", "Inspect patch models: parameters, MACs, input and feature size."),
    "tile": ("cmamil.cli.tile", "tile", "Find tissue and plan nested multi-magnification tiles for slides."),
    "train": ("cmamil.cli.train", "train", "Train a MIL aggregator on bags or a patch model on images, k-fold."),
    "report": ("cmamil.cli.report", "report", "Print a run's per-fold and mean ± std metrics and write its figures."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        from cmamil.interrupt import Interrupted, handle_signals

        try:
            with handle_signals():
                return super().invoke(ctx)
        except Interrupted as exc:
            click.echo(f"Error: {exc}; finished work is kept, rerun the command to resume", err=True)
            sys.exit(exc.exit_code)
        except CmamilError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cmamil")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Multi-magnification pathology: tile, embed, train and compare models.

    \b
    Examples:
      cmamil demo                         # synthetic cohort end to end
      cmamil plugins list --check         # installed models and aggregators
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _show_notices()


class _NoticeHandler(logging.Handler):
    """Notices as `note: <message>` on the current stderr (resolved per message, as click's test runner swaps it),
    each message once per command (a notice repeated per fold or per set is shown the first time)."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.said:
            self.said.add(message)
            click.echo(f"note: {message}", err=True)


def _show_notices() -> None:
    """Show library notices (`cmamil.notices`) on stderr; one handler however often `main` runs in a process.
    Under torchrun only rank 0 shows them (every rank would say the same)."""
    from cmamil.distributed import detect_world
    from cmamil.notices import NOTICE_LOGGER

    logger = logging.getLogger(NOTICE_LOGGER)
    logger.setLevel(logging.INFO if detect_world().main else logging.WARNING)
    logger.propagate = False
    handler = next((h for h in logger.handlers if isinstance(h, _NoticeHandler)), None)
    if handler is None:
        logger.addHandler(_NoticeHandler())
    else:
        handler.said.clear()
