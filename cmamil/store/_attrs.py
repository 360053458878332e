"""Attribute encoding: scalars are stored as they are, anything else as JSON named in the attribute `json_attrs`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["decode_attrs", "encode_attrs"]


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes ready for HDF5/zarr: scalars as they are, anything else as a JSON string listed in json_attrs."""
    out: dict[str, Any] = {}
    as_json: list[str] = []
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        else:
            try:
                out[key] = json.dumps(value)
            except TypeError as exc:
                raise TypeError(f"attribute '{key}' is not JSON-serialisable: {exc}") from exc
            as_json.append(key)
    if as_json:
        out["json_attrs"] = json.dumps(as_json)
    return out


def decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as plain Python values, JSON-encoded ones decoded."""
    attrs = {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[key] = value.decode() if isinstance(value, bytes) else value
    for key in json.loads(attrs.pop("json_attrs", "[]")):
        attrs[key] = json.loads(attrs[key])
    return attrs

