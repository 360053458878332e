"""Registry-generated tests: every registered patch model, built as its small variant, meets the contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmamil import registry
from cmamil.errors import InputError
from cmamil.models import DataConfig, count_parameters, create_model

MODEL_NAMES = registry.models.names()


def build_small(name: str, num_classes: int, **extra) -> torch.nn.Module:
    """The small, fast variant a factory declares through `small_variant` (none: its defaults)."""
    options = dict(getattr(registry.models.load(name), "small_options", {}))
    return create_model(name, num_classes=num_classes, **{**options, **extra})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_logits_features_and_gradients(name):
    torch.manual_seed(0)
    model = build_small(name, num_classes=3).train()
    assert isinstance(model.data_config, DataConfig)
    x = torch.randn(2, *model.data_config.input_size)
    logits = model(x)
    assert logits.shape == (2, 3)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads.values()), "non-finite gradient"
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
    assert features.shape == (2, model.num_features)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_zero_classes_gives_an_encoder(name):
    torch.manual_seed(0)
    encoder = build_small(name, num_classes=0).eval()
    x = torch.randn(2, *encoder.data_config.input_size)
    with torch.no_grad():
        embedded = encoder(x)
        features = encoder.forward_features(x)
    assert embedded.shape == (2, encoder.num_features)
    torch.testing.assert_close(embedded, features)


@pytest.mark.parametrize(
    ("name", "expected"), [("deit_small", 22_050_664), ("swin_tiny", 28_288_354)]
)
def test_timm_vit_parameter_counts(name, expected):
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    assert count_parameters(model) == expected


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_timm_weights_reload_and_reinitialise_a_different_head(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_model("deit_small", num_classes=1000, img_size=64, depth=2).model
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"deit{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    same = create_model("deit_small", num_classes=1000, img_size=64, depth=2, weights=str(path)).model.state_dict()
    assert all(torch.equal(same[k], v) for k, v in state.items())

    other = create_model("deit_small", num_classes=3, img_size=64, depth=2, weights=str(path)).model.state_dict()
    assert other["head.weight"].shape == (3, 384)
    assert all(torch.equal(other[k], v) for k, v in state.items() if not k.startswith("head."))


def test_missing_weights_file_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        create_model("deit_small", num_classes=2, img_size=64, weights=str(tmp_path / "absent.pth"))
