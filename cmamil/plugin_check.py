"""Build a plugin's small variant and run it once: the check behind `plugins list --check` and the tests."""

from __future__ import annotations

import torch

from cmamil import registry
from cmamil.aggregators import Bag, create_aggregator, forward_bag
from cmamil.errors import PluginError
from cmamil.models import create_model

__all__ = ["check_aggregator", "check_model", "random_bag"]


def check_model(name: str, num_classes: int = 3, batch: int = 2) -> torch.nn.Module:
    """Build `name` with its small options, run forward and forward_features, and check shapes."""
    options = getattr(registry.models.load(name), "small_options", {})
    model = create_model(name, num_classes=num_classes, **options).eval()
    x = torch.randn(batch, *model.data_config.input_size)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    if tuple(logits.shape) != (batch, num_classes):
        raise PluginError(
            f"{registry.models.label(name)}: forward gave {tuple(logits.shape)}, expected {(batch, num_classes)}"
        )
    if tuple(features.shape) != (batch, model.num_features):
        raise PluginError(
            f"{registry.models.label(name)}: forward_features gave {tuple(features.shape)}, "
            f"expected {(batch, model.num_features)}"
        )
    return model


def random_bag(in_dim: int, magnifications: tuple[str, ...] = ("5x", "10x", "20x"), n0: int = 3) -> Bag:
    """A random nested bag: each magnification has 4× the instances of the previous, with parent links."""
    features, parents = {}, {}
    for level, mag in enumerate(magnifications):
        n = n0 * 4**level
        features[mag] = torch.randn(n, in_dim)
        parents[mag] = torch.arange(n) // 4 if level else torch.full((n,), -1)
    return Bag(features=features, parents=parents, bag_id="random")


def check_aggregator(name: str, in_dim: int = 16, num_classes: int = 2) -> torch.nn.Module:
    """Build `name` for a random 3-magnification bag, run it, and check the output contract."""
    bag = random_bag(in_dim)
    options = getattr(registry.aggregators.load(name), "small_options", {})
    model = create_aggregator(
        name, in_dim=in_dim, num_classes=num_classes, magnifications=bag.magnifications, **options
    )
    out = forward_bag(model, bag, torch.tensor([1]))
    if tuple(out.logits.shape) != (1, num_classes):
        raise PluginError(
            f"{registry.aggregators.label(name)}: logits {tuple(out.logits.shape)}, expected {(1, num_classes)}"
        )
    return model
