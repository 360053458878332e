"""A bag's plan (its magnification groups, file attributes and tiles) and its embedding into a feature file.

`write_bag` embeds the planned tiles batch by batch and streams the features into the bag's file, which the
store renames into place when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from cmamil.extract.encoder import Encoder
from cmamil.extract.loading import fixed_batches
from cmamil.extract.resume import BagSettings
from cmamil.interrupt import raise_if_interrupted
from cmamil.progress import Progress
from cmamil.store import BagWriter

if TYPE_CHECKING:
    import torch

    from cmamil.extract.features import ExtractConfig

__all__ = ["BagPlan", "Group", "write_bag"]


@dataclass(frozen=True)
class Group:
    """One magnification of a bag: its name, level-0 coords, parent rows and the attributes of its coords."""

    name: str
    coords: np.ndarray
    parent: np.ndarray
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class BagPlan:
    """What to write for one bag: file attributes, its magnification groups, and the tiles to embed."""

    attrs: Mapping[str, Any]
    groups: tuple[Group, ...]
    tiles: Dataset



def write_bag(out_file: Path, plan: BagPlan, encoder: Encoder, config: ExtractConfig,
              settings: BagSettings) -> dict[str, int]:
    """Embed the plan's tiles batch by batch and stream the features into the bag's file (renamed when complete).

    Each batch is submitted before the previous one's features are written, so that on a GPU their copy to the
    host and the file writes overlap the next batch's inference.
    """
    workers = config.num_workers if len(plan.tiles) > 1 else 0
    loader = DataLoader(
        plan.tiles, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=2 if workers else None,
    )
    names = [group.name for group in plan.groups]
    counts = {group.name: len(group.coords) for group in plan.groups}
    attrs = {**plan.attrs, **settings.attrs}
    writer = BagWriter(out_file, attrs=attrs, features_dtype=config.features_dtype, overwrite=True)
    with plan.tiles, writer:
        for group in plan.groups:
            writer.add_magnification(group.name, group.coords, group.parent, group.attrs)
        with Progress(out_file.stem, total=sum(counts.values()), unit="tile", leave=False) as progress:
            pending = None
            for pixels, mags in fixed_batches(loader, config.batch_size, pin=encoder.device.type == "cuda"):
                raise_if_interrupted()
                submitted = encoder.submit(pixels), mags
                if pending is not None:
                    _append(writer, names, *pending, progress)
                pending = submitted
            if pending is not None:
                _append(writer, names, *pending, progress)
    return counts


def _append(
    writer: BagWriter, names: Sequence[str], features: Callable[[], torch.Tensor], mags: torch.Tensor,
    progress: Progress,
) -> None:
    """Write one embedded batch's features to their magnifications' groups."""
    embedded = features()
    for index, name in enumerate(names):
        selected = mags == index
        if selected.any():
            writer.append_features(name, embedded[selected])
    progress.advance(len(embedded))
