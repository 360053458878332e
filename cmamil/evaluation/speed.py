"""Inference cost of a patch model: latency, throughput and peak memory, and the efficiency table of several.

`measure_speed` times a built model (`cmamil evaluate` reports it); `measure_model` builds a model at an input
size and adds parameters and MACs (one cell of `cmamil models compare` and of `benchmarks/models.py`);
`measure_isolated` runs `measure_model` for one model in a fresh interpreter, so that a CPU peak-memory figure is
that model's alone and not memory another model left resident (its sizes run smallest first).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from cmamil.environment import peak_memory_mb, reset_peak_memory

__all__ = ["build_at_size", "measure_isolated", "measure_model", "measure_speed"]


def measure_speed(
    model: nn.Module,
    example: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    repeats: int = 20,
) -> dict[str, Any]:
    """Latency (ms/image at batch 1, median) and throughput (images/s at `batch_size`, median over timed batches),
    both after warm-up calls, and the peak memory of the timed calls."""
    model.eval()
    single = example[None].to(device)
    batch = example[None].expand(batch_size, *example.shape).contiguous().to(device)
    reset_peak_memory(device)

    def run(x: torch.Tensor) -> float:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

    for _ in range(3):
        run(single)
    latency = float(np.median([run(single) for _ in range(repeats)])) * 1000
    run(batch)
    batch_runs = max(3, repeats // 4)
    seconds = float(np.median([run(batch) for _ in range(batch_runs)]))
    return {
        "device": str(device),
        "latency_ms_per_image": latency,
        "throughput_images_per_s": batch_size / seconds,
        "throughput_batch_size": batch_size,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "amp": bool(amp and device.type == "cuda"),
    }


def build_at_size(name: str, input_px: int | None, num_classes: int, options: dict[str, Any]
                  ) -> tuple[nn.Module, tuple[int, int, int]]:
    """Model `name` for square inputs of `input_px` (its own size when None) and its (C, H, W) input: built with
    `img_size=input_px` where the factory takes it, else (convolutional nets) built as is and fed that size."""
    from cmamil.errors import PluginError
    from cmamil.models import create_model

    if input_px is None or "img_size" in options:
        model = create_model(name, num_classes=num_classes, **options)
    else:
        try:
            model = create_model(name, num_classes=num_classes, img_size=input_px, **options)
        except (TypeError, PluginError):
            model = create_model(name, num_classes=num_classes, **options)
    channels, height, width = model.data_config.input_size
    return model, (channels, input_px or height, input_px or width)


def measure_model(name: str, input_px: int | None, *, batch_size: int, device: str = "cpu", num_classes: int = 2,
                  options: dict[str, Any] | None = None, repeats: int = 10, threads: int = 0) -> dict[str, Any]:
    """Parameters, MACs per image, peak memory (MiB over the level before the model was built: CPU resident
    memory, or CUDA memory allocated) and median throughput and latency of model `name` at `input_px`
    (`threads` > 0 sets torch's CPU threads)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cmamil import registry
    from cmamil.environment import resolve_device
    from cmamil.models import count_macs, count_parameters

    target = resolve_device(device)
    options = dict(options or {})
    if threads:
        torch.set_num_threads(threads)
    if not name.startswith("timm:"):
        registry.models.load(name)  # import the plugin and the FLOP counter before the memory baseline
    with FlopCounterMode(display=False):
        torch.ones(2, 2) @ torch.ones(2, 2)
    reset_peak_memory(target)
    baseline = peak_memory_mb(target) if target.type == "cpu" else 0.0
    torch.manual_seed(0)
    model, size = build_at_size(name, input_px, num_classes, options)
    model = model.to(target).eval()
    macs = count_macs(model, size)
    speed = measure_speed(model, torch.randn(*size), batch_size=batch_size, device=target, repeats=repeats)
    return {
        "model": name,
        "options": options,
        "input": "×".join(map(str, size)),
        "input_px": size[1],
        "parameters": count_parameters(model),
        "macs": macs,
        "peak_memory_mib": speed["peak_memory_mb"] - baseline,
        "memory_kind": "cpu_rss_rise" if target.type == "cpu" else "cuda_max_allocated",
        "throughput_per_s": speed["throughput_images_per_s"],
        "latency_ms": speed["latency_ms_per_image"],
        "batch_size": batch_size,
        "device": str(target),
    }


def measure_isolated(name: str, sizes: list[int | None], **settings: Any) -> list[dict[str, Any]]:
    """`measure_model` at each size (ascending) in one fresh interpreter per model; a size that fails (or a
    worker that dies) gives a row {'model', 'input_px', 'error'} with the error's last line."""
    cell = {"name": name, "sizes": sorted(sizes, key=lambda size: size or 0), **settings}
    done = subprocess.run([sys.executable, "-m", "cmamil.evaluation.speed", json.dumps(cell)], capture_output=True,
                          text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or len(rows) < len(sizes):
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        rows += [{"model": name, "input_px": size, "error": reason} for size in cell["sizes"][len(rows):]]
    return rows


def _worker(settings: dict[str, Any]) -> None:
    """Print one JSON row per size of one model (the subprocess side of measure_isolated)."""
    name, sizes = settings.pop("name"), settings.pop("sizes")
    for size in sizes:
        try:
            row = measure_model(name, size, **settings)
        except Exception as exc:  # one size failing (e.g. out of memory) leaves the others measured
            row = {"model": name, "input_px": size, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
