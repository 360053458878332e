"""`cmamil plugins`: what models and aggregators are installed, from which package, and whether they work."""

from __future__ import annotations

import click

from cmamil import registry
from cmamil.errors import PluginError

__all__ = ["plugins"]


@click.group()
def plugins() -> None:
    """List and check installed model and aggregator plugins."""


@plugins.command("list")
@click.option(
    "--kind",
    type=click.Choice(["models", "aggregators"]),
    default=None,
    help="Only this kind of plugin (default: both).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Also build each plugin (small variant) and check it meets its contract, not only that it imports.",
)
def list_plugins(kind: str | None, check: bool) -> None:
    """Print name, kind, package, version and status of every plugin.

    \b
    Example:
      cmamil plugins list --kind models --check
    """
    kinds = [kind] if kind else ["models", "aggregators"]
    rows = [("name", "kind", "package", "version", "status")]
    broken = 0
    for k in kinds:
        reg = registry.registry_for(k)
        for name in reg.names():
            info = reg.info(name)
            status = reg.status(name)
            if check and status == "ok":
                status = _build_status(k, name)
            broken += status != "ok"
            rows.append((name, k[:-1], info.package, info.version, status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    if broken:
        click.echo(f"{broken} plugin(s) broken; the others are usable.", err=True)


def _build_status(kind: str, name: str) -> str:
    """Build the plugin's small variant and run one forward pass: 'ok' or 'broken: reason'."""
    from cmamil.plugin_check import check_aggregator, check_model

    try:
        (check_model if kind == "models" else check_aggregator)(name)
    except PluginError as exc:
        return f"broken: {exc}"
    except Exception as exc:  # a plugin's own bug is reported, never raised into the host
        return f"broken: {type(exc).__name__}: {exc}"
    return "ok"
