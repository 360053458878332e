"""Inference speed of a patch classifier: latency at batch 1, throughput at a batch size, and peak memory."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from cmamil.environment import peak_memory_mb, reset_peak_memory

__all__ = ["measure_speed"]


def measure_speed(
    model: nn.Module,
    example: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    repeats: int = 20,
) -> dict[str, Any]:
    """Latency (ms/image at batch 1, median), throughput (images/s at `batch_size`) and peak memory."""
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
    seconds = sum(run(batch) for _ in range(batch_runs))
    return {
        "device": str(device),
        "latency_ms_per_image": latency,
        "throughput_images_per_s": batch_size * batch_runs / seconds,
        "throughput_batch_size": batch_size,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "amp": bool(amp and device.type == "cuda"),
    }
