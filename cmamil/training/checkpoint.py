"""Checkpoints: torch files written atomically and read back with `weights_only=True` (no pickled code).

A checkpoint holds only tensors, numbers, strings and containers of them (state dicts, metrics, the
options that rebuild the model), so loading one never runs code from the file.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from cmamil.atomic import atomic_path
from cmamil.errors import InputError

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` with torch.save under a temporary name, then rename it to `path`; a failed write (torch
    reports it as a RuntimeError) is an OSError of `path` (ENOSPC), as a plain write's would be."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise OSError(errno.ENOSPC, f"writing failed, the disk may be full ({reason})", str(path)) from exc
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only); a bad file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' not found; train the run first (cmamil train)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if lines and lines[0].startswith("Weights only load failed"):  # skip torch's advice to unpickle anyway
            found = [line for line in lines if "GLOBAL" in line or "global" in line.split()[:3]]
            detail = found[0].rstrip(".") if found else "objects other than tensors"
            raise InputError(
                f"checkpoint '{path}' holds pickled objects, not only weights ({detail}); cmamil loads weights "
                "only and refuses it: use a checkpoint written by cmamil train"
            ) from exc
        raise InputError(
            f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {lines[0] if lines else ''}); delete it "
            "and retrain"
        ) from exc
