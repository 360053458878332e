"""Where a run ran: versions, hardware and device choice, recorded with every run for reproducibility."""

from __future__ import annotations

import os
import platform
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmamil import __version__
from cmamil.errors import InputError

__all__ = ["environment_info", "peak_memory_mb", "reset_peak_memory", "resolve_device", "seed_everything"]


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; 'cuda' without a GPU is an error that says so."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA's peak statistics, or on Linux the process's resident high-water mark
    (elsewhere the CPU figure is the process peak and cannot reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5 resets VmHWM (Linux ≥ 4.0)
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA memory allocated by torch since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        found = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if found:
            return int(found.group(1)) / 2**10
    import resource

    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def environment_info() -> dict[str, Any]:
    """Versions of cmamil and its key libraries, and the hardware, as a JSON-able dict (timm's version from its
    package metadata: importing timm costs seconds)."""
    from importlib.metadata import version

    info: dict[str, Any] = {
        "cmamil": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": version("timm"),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    return info
