"""The efficiency comparison of patch models (the S4D vs ViT study's table): parameters, MACs per image, peak
memory and throughput per model and input size, printed side by side and written as CSV and a plot.

Every figure comes from `cmamil.evaluation.speed` (`measure_isolated`: one fresh interpreter per model), the
measurement `cmamil evaluate` and `benchmarks/models.py` use too.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from cmamil.atomic import atomic_path
from cmamil.text_table import align

__all__ = ["COLUMNS", "compare_models", "format_efficiency", "write_efficiency"]

COLUMNS = ("model", "input", "parameters", "macs", "peak_memory_mib", "memory_kind", "throughput_per_s",
           "latency_ms", "batch_size", "device", "options")


def compare_models(names: Sequence[str], sizes: Sequence[int | None], *, batch_size: int, device: str,
                   num_classes: int, options: dict[str, dict[str, Any]], repeats: int, threads: int = 0,
                   progress: bool = True) -> list[dict[str, Any]]:
    """One row per model and input size, in the order given (`options` per model name)."""
    from tqdm.auto import tqdm

    from cmamil.evaluation.speed import measure_isolated

    rows = []
    for name in tqdm(names, desc="models", unit="model", disable=None if progress else True):
        measured = measure_isolated(name, list(sizes), batch_size=batch_size, device=device,
                                    num_classes=num_classes, options=options.get(name, {}), repeats=repeats,
                                    threads=threads)
        rows += sorted(measured, key=lambda row: row["input_px"] or 0)
    return rows


def format_efficiency(rows: Sequence[dict[str, Any]]) -> str:
    """The table as aligned text: model, input, parameters (M), GMACs, peak memory (MiB), throughput, latency."""
    table = [["model", "input", "params (M)", "GMACs", "peak memory (MiB)", "throughput (img/s)",
              "latency b1 (ms)"]]
    for row in rows:
        if "error" in row:
            table.append([row["model"], str(row["input_px"]), "failed: " + row["error"], "", "", "", ""])
            continue
        table.append([row["model"], row["input"], f"{row['parameters'] / 1e6:.3f}", f"{row['macs'] / 1e9:.4f}",
                      f"{row['peak_memory_mib']:.1f}", f"{row['throughput_per_s']:.1f}", f"{row['latency_ms']:.2f}"])
    kinds = sorted({row["memory_kind"] for row in rows if "memory_kind" in row})
    batch = next((row["batch_size"] for row in rows if "batch_size" in row), "")
    note = (f"throughput: median over timed batches of {batch} after warm-up; peak memory: "
            f"{', '.join(kinds) or 'n/a'}")
    return "\n".join([*align(table), note])


def write_efficiency(rows: Sequence[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """Write OUT/efficiency.csv (the COLUMNS, and an `error` column when a cell failed) and OUT/efficiency.png;
    return both paths."""
    from cmamil.evaluation.figures import plot_efficiency, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    failed = any("error" in row for row in rows)
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + ("error",) * failed, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        options = ";".join(f"{k}={v}" for k, v in row.get("options", {}).items()) or "defaults"
        writer.writerow({"input": row["input_px"], **row, "options": options})
    table = out / "efficiency.csv"
    with atomic_path(table) as tmp:
        Path(tmp).write_text(buffer.getvalue())
    return table, save_figure(plot_efficiency(rows), out / "efficiency.png")
