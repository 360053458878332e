"""The aggregator contract: a multi-magnification bag in, logits and attention out.

An aggregator's `forward` takes `(bag)` or `(bag, label)` and returns an `AggregatorOutput` or bare
`(1, C)` logits; `forward_bag` calls it either way and always gives an `AggregatorOutput`.

Magnifications are keyed by their names ("5x", "10x", "20x", "100x" …) and ordered coarse to fine.
`parents[mag][i]` is the index of instance i's parent in the next coarser magnification, -1 where
there is none (image sets, or the coarsest scale).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from cmamil import registry
from cmamil.errors import PluginError
from cmamil.magnification import magnification_order

__all__ = [
    "AggregatorOutput",
    "Bag",
    "aggregator_loss",
    "create_aggregator",
    "forward_bag",
]


@dataclass
class Bag:
    """One slide (or patient) as instance features per magnification, with coords and parent links."""

    features: dict[str, torch.Tensor]
    coords: dict[str, torch.Tensor] = field(default_factory=dict)
    parents: dict[str, torch.Tensor] = field(default_factory=dict)
    bag_id: str = ""

    @property
    def magnifications(self) -> tuple[str, ...]:
        """The bag's magnifications, coarse to fine."""
        return magnification_order(self.features)

    def to(self, device: torch.device | str) -> Bag:
        """A copy with every tensor on `device`."""
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Bag(move(self.features), move(self.coords), move(self.parents), self.bag_id)


@dataclass
class AggregatorOutput:
    """Bag logits (1, C), attention per magnification (N,), an optional auxiliary loss, and optional per-tile class
    logits per magnification (N, C) (e.g. an instance classifier's), which heatmaps show as tile scores."""

    logits: torch.Tensor
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_loss: torch.Tensor | None = None
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


def create_aggregator(
    name: str, *, in_dim: int, num_classes: int, magnifications: tuple[str, ...], **options: Any
) -> torch.nn.Module:
    """Build the registered aggregator `name` for bags of `in_dim` features at `magnifications`."""
    return registry.aggregators.build(
        name, options, in_dim=in_dim, num_classes=num_classes, magnifications=tuple(magnifications)
    )


def forward_bag(aggregator: torch.nn.Module, bag: Bag, label: torch.Tensor | None = None) -> AggregatorOutput:
    """Run `aggregator` on one bag, passing `label` only when its forward takes one; bare logits become an
    AggregatorOutput without attention or auxiliary loss, so training and evaluation see one type."""
    output = aggregator(bag, label) if _takes_label(aggregator) else aggregator(bag)
    if isinstance(output, AggregatorOutput):
        return output
    if isinstance(output, torch.Tensor) and output.dim() == 2 and len(output) == 1:
        return AggregatorOutput(logits=output)
    shape = f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else ""
    raise PluginError(
        f"aggregator {type(aggregator).__name__} returned {type(output).__name__}{shape}; its forward must "
        "return (1, num_classes) logits or a cmamil.aggregators.AggregatorOutput"
    )


def _takes_label(aggregator: torch.nn.Module) -> bool:
    """Whether the aggregator's forward accepts a second positional argument (the bag's label)."""
    try:
        inspect.signature(aggregator.forward).bind(None, None)
    except TypeError:
        return False
    return True


def aggregator_loss(aggregator: torch.nn.Module, output: AggregatorOutput, label: torch.Tensor) -> torch.Tensor:
    """The training loss of one bag: the aggregator's own `loss(output, label)` when it defines one (it then
    owns its bag loss, e.g. CE or SVM, and how the auxiliary loss is weighted), else cross-entropy on the logits
    plus the auxiliary loss, if any."""
    if hasattr(aggregator, "loss"):
        return aggregator.loss(output, label)
    loss = torch.nn.functional.cross_entropy(output.logits, label.reshape(1).long())
    return loss if output.aux_loss is None else loss + output.aux_loss
