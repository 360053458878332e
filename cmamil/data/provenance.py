"""Content hashes and fingerprints: what a feature file was made with and what a run was trained on.

`cmamil extract` stores `settings_fingerprint` of everything that determines a bag's feature values in every
feature file. A run records the labels file's content hash, the feature set's fingerprint or an image set's hash
in its config.yaml (`data`, and the digests in the resume `fingerprint`'s `inputs`), so that a rerun on changed
labels, re-extracted features or other images is refused instead of silently keeping the results of the run it
claims to repeat.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["extraction_recipe", "feature_set_fingerprint", "file_sha256", "files_sha256", "image_set_sha256",
           "settings_fingerprint"]

# feature-file attributes that determine feature values, as `cmamil extract` writes them, and those that tell
# one extraction of a slide from another (its source slide, when it was written)
_VALUE_ATTRS = ("encoder", "encoder_weights", "encoder_options", "tile_px", "input_px", "precision", "fingerprint",
                "source", "created")
# feature-file attributes that say how to tile and embed new slides exactly as the training features were made
_RECIPE_ATTRS = ("encoder", "encoder_weights", "encoder_weights_file", "encoder_options", "input_px", "precision",
                 "tile_px", "magnifications", "min_tissue", "tissue", "mpp", "mpp_source")


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """The sha256 of `settings` written as canonical JSON (sorted keys): equal settings, equal fingerprints."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def feature_set_fingerprint(paths: Sequence[Path], magnifications: Sequence[str]) -> dict[str, Any]:
    """Encoder, weights hash, magnifications and tile size of a set of feature files, and one sha256 over every
    file's value-determining attributes, tile counts and feature type (a value that differs between files is
    listed with all its values). Files from other toolkits carry few attributes: for them the sha256 tells
    other tile counts or file sizes apart, not other values of the same shape."""
    from cmamil.store import bag_info

    per_bag = []
    for path in paths:
        info = bag_info(path)
        attrs = info.attrs
        per_bag.append({"bag": path.name, "counts": info.counts, "dtype": info.features_dtype,
                        "bytes": path.stat().st_size if path.is_file() else None,
                        **{k: attrs.get(k) for k in _VALUE_ATTRS if k in attrs}})
    summary: dict[str, Any] = {"magnifications": list(magnifications)}
    for key in ("encoder", "encoder_weights", "tile_px"):
        values = sorted({json.dumps(bag.get(key)) for bag in per_bag})
        summary[key] = json.loads(values[0]) if len(values) == 1 else [json.loads(v) for v in values]
    blob = json.dumps([per_bag, list(magnifications)], sort_keys=True, default=str).encode()
    summary["sha256"] = hashlib.sha256(blob).hexdigest()
    if paths:
        summary["extraction"] = extraction_recipe(bag_info(paths[0]).attrs)
    return summary


def extraction_recipe(attrs: dict[str, Any]) -> dict[str, Any]:
    """The tiling and encoder settings recorded in a feature file's attributes, with which `cmamil predict`
    embeds new slides the same way (only those the file has)."""
    return {k: attrs[k] for k in _RECIPE_ATTRS if k in attrs}


def files_sha256(paths: Sequence[Path], root: Path) -> str:
    """One sha256 over the names (relative to `root`) and contents of files, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()


def image_set_sha256(digests: Sequence[tuple[str, str, str]]) -> str:
    """One sha256 over (class, relative path, content sha256) of every image of a set, in sorted order: moving an
    image to another class folder, or changing, adding or removing one, changes it; moving the set does not."""
    return hashlib.sha256(json.dumps(sorted(map(list, digests))).encode()).hexdigest()
