"""What a rerun of `cmamil extract` does: fingerprints, the output-folder check, and skipping finished bags.

Every feature file carries `extract_settings` (everything that determines its feature values: encoder, weights
sha256 or the seed of random weights, model options, input size, precision, stored dtype, and the tiling:
magnifications, tile size, tissue settings, --mpp, a slide table's mpp) and `fingerprint`, their sha256.
A rerun skips a bag only when its file's fingerprint equals the one this run would write; an output folder
holding feature files of other settings is refused before any work, so a folder never mixes two feature
spaces.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from cmamil.data.provenance import settings_fingerprint
from cmamil.errors import InputError
from cmamil.extract.grid import TilingConfig
from cmamil.store import bag_info, is_complete, list_bags

__all__ = ["BagSettings", "check_folder", "finished_counts", "tiling_settings"]

PER_BAG = ("slide_mpp",)  # settings that may differ between the bags of one run (a slide table's mpp column)


class BagSettings:
    """The settings that determine one bag's feature values, their JSON form and fingerprint."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings: dict[str, Any] = json.loads(json.dumps(dict(settings), default=str))
        self.fingerprint = settings_fingerprint(self.settings)

    @property
    def attrs(self) -> dict[str, Any]:
        """What the feature file stores."""
        return {"extract_settings": self.settings, "fingerprint": self.fingerprint}


def tiling_settings(tiling: TilingConfig, slide_mpp: float | None = None) -> dict[str, Any]:
    """The tiling part of a slide bag's settings (`slide_mpp`: the slide table's mpp for this slide)."""
    return {
        "slide_mpp": slide_mpp,
        "magnifications": list(tiling.names),
        "tile_px": tiling.tile_px,
        "min_tissue": list(tiling.min_tissue),
        "tissue": asdict(tiling.tissue),
        "mpp": tiling.mpp,
    }


def check_folder(out: Path, settings: BagSettings) -> None:
    """Refuse an output folder that holds feature files made with other settings (per-bag settings aside)."""
    ours = {k: v for k, v in settings.settings.items() if k not in PER_BAG}
    for path in list_bags(out):
        if not is_complete(path):
            continue
        stored = bag_info(path).attrs.get("extract_settings")
        if not isinstance(stored, dict):
            raise InputError(
                f"{out} holds {path.name}, extracted without a settings fingerprint (an older cmamil or another "
                f"tool); extract into another --out, or pass --overwrite to redo the bags"
            )
        theirs = {k: v for k, v in stored.items() if k not in PER_BAG}
        if theirs != ours:
            raise InputError(
                f"{out} holds features made with other settings ({describe_difference(theirs, ours)}; e.g. "
                f"{path.name}); extract into another --out, or pass --overwrite to redo the bags"
            )


def finished_counts(out_file: Path, settings: BagSettings) -> dict[str, int] | None:
    """Tile counts of a finished bag made with these settings (None when it is to be extracted); a finished
    bag of other per-bag settings is an error rather than a silent skip."""
    if not is_complete(out_file):
        return None
    info = bag_info(out_file)
    if info.attrs.get("fingerprint") != settings.fingerprint:
        stored = info.attrs.get("extract_settings") or {}
        raise InputError(
            f"{out_file} was extracted with other settings ({describe_difference(stored, settings.settings)}); "
            "extract into another --out, or pass --overwrite to redo it"
        )
    return info.counts


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """'encoder_weights: random → 3fa2…, tissue.threshold: null → 0.3' for the (nested) keys whose values differ."""

    def flat(settings: Mapping[str, Any]) -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in settings.items():
            if isinstance(value, Mapping) and value:
                items.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                items[key] = value
        return items

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
        return text if len(text) <= 24 else text[:12] + "…"

    old, new = flat(old), flat(new)
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {short(old.get(k))} → {short(new.get(k))}" for k in keys) or "unknown"
