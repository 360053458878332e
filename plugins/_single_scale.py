"""Instance selection for the single-scale baselines: one chosen magnification, or all of them stacked."""

from __future__ import annotations

import torch

from cmamil.aggregators import Bag
from cmamil.magnification import magnification_order

__all__ = ["resolve_magnifications", "split_by_magnification", "stack_instances"]


def resolve_magnifications(magnifications: tuple[str, ...], magnification: str) -> tuple[str, ...]:
    """'all' → every magnification (coarse to fine); a name → that one, which must be among `magnifications`."""
    if magnification == "all":
        return magnification_order(magnifications)
    if magnification not in magnifications:
        raise ValueError(f"magnification '{magnification}' is not one of {', '.join(magnifications)} or 'all'")
    return (magnification,)


def stack_instances(bag: Bag, mags: tuple[str, ...]) -> tuple[torch.Tensor, list[int]]:
    """The instances of `mags` as one (N, D) tensor, and the number contributed by each magnification."""
    missing = [m for m in mags if m not in bag.features]
    if missing:
        raise ValueError(f"bag '{bag.bag_id}' has no magnification {', '.join(missing)}")
    blocks = [bag.features[m] for m in mags]
    if sum(len(b) for b in blocks) == 0:
        raise ValueError(f"bag '{bag.bag_id}' has no instances at {', '.join(mags)}")
    return torch.cat(blocks), [len(b) for b in blocks]


def split_by_magnification(values: torch.Tensor, mags: tuple[str, ...], sizes: list[int]) -> dict[str, torch.Tensor]:
    """Cut a per-instance vector of the stacked bag back into one vector per magnification."""
    return dict(zip(mags, values.split(sizes)))
