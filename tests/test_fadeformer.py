"""FadeFormer: the grid Laplacian, its Chebyshev power, where α enters, counts, shapes and backbone weights."""

from __future__ import annotations

import math

import pytest
import torch

from cmamil.errors import InputError
from cmamil.models import count_parameters, create_model
from cmamil.plugins.fadeformer import FadeAttn, chebyshev_laplacian, grid_laplacian

TINY = {"backbone": "vit_tiny_patch16_224", "img_size": 32, "depth": 1}


def test_lambda_max_of_the_14x14_dense_gaussian_grid():
    _, lambda_max = chebyshev_laplacian(14, 14, 3)
    assert lambda_max == pytest.approx(6.2799, abs=1e-4)


def test_grid_laplacian_is_dense_with_self_loops():
    laplacian = grid_laplacian(14, 14)
    adjacency = torch.diag(torch.diag(laplacian)) - laplacian
    corner_degree = sum(math.exp(-(i * i) / 2) for i in range(14)) ** 2  # separable Gaussian, self-loop included
    assert laplacian[0, 0].item() == pytest.approx(corner_degree - 1.0)  # D − A removes the self-loop weight 1
    assert adjacency[0, 3].item() == pytest.approx(math.exp(-4.5))  # distance 3 along a row
    assert torch.allclose(laplacian.sum(dim=1), torch.zeros(196, dtype=torch.float64), atol=1e-12)


def test_cubed_rescaled_laplacian_flips_the_constant_and_passes_the_top_mode():
    operator, _ = chebyshev_laplacian(14, 14, 3)
    ones = torch.ones(196)
    torch.testing.assert_close(operator @ ones, -ones, atol=1e-5, rtol=0)
    top = torch.linalg.eigh(grid_laplacian(14, 14)).eigenvectors[:, -1].float()
    torch.testing.assert_close(operator @ top, top, atol=1e-5, rtol=0)


def test_alpha_mixes_attention_and_diffusion_before_the_projection():
    torch.manual_seed(0)
    layer = FadeAttn(16, heads=2, order=3, alpha=0.5).eval()
    assert layer.alpha.requires_grad and layer.alpha.shape == () and layer.alpha.item() == 0.5
    with torch.no_grad():
        layer.alpha.fill_(0.3)
        x = torch.randn(2, 16, 4, 4)
        q, k, v = (t.reshape(4, 8, 16).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=1))
        attended = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1) @ v
        diffused = chebyshev_laplacian(4, 4, 3)[0] @ v
        mixed = (0.3 * attended + 0.7 * diffused).transpose(1, 2).reshape(2, 16, 4, 4)
        torch.testing.assert_close(layer(x), layer.proj(mixed), atol=1e-5, rtol=1e-5)


def test_reference_parameter_counts():
    with torch.device("meta"):
        assert count_parameters(create_model("fadeformer", num_classes=2)) == 88_162_563
        assert count_parameters(create_model("fadeformer", num_classes=11)) == 88_169_484


def test_vit_small_backbone_at_224_runs_on_a_14x14_grid():
    torch.manual_seed(0)
    model = create_model("fadeformer", num_classes=4, backbone="vit_small_patch16_224", depth=2).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.forward_grid(x).shape == (1, 384, 14, 14)
        assert model(x).shape == (1, 4)
    assert model.num_features == 384
    assert model.data_config.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_backbone_weights_are_loaded(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model = create_model("fadeformer", num_classes=2, weights=str(path), **TINY)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("head."))


def test_sign_flip_reaches_the_output_of_a_constant_value_map():
    """With α = 0 the layer is proj(L̂³V): a spatially constant V comes out negated before the projection."""
    layer = FadeAttn(8, heads=2, alpha=0.0).eval()
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.copy_(torch.arange(24, dtype=torch.float32))
        layer.proj.weight.copy_(torch.eye(8).reshape(8, 8, 1, 1))
        layer.proj.bias.zero_()
        out = layer(torch.randn(1, 8, 5, 5))
    expected = -torch.arange(16, 24, dtype=torch.float32).reshape(1, 8, 1, 1).expand(1, 8, 5, 5)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_bad_options_are_one_line_input_errors():
    with pytest.raises(InputError, match="not a timm ViT"):
        create_model("fadeformer", backbone="resnet50")
    with pytest.raises(InputError, match="heads"):
        create_model("fadeformer", num_classes=2, heads=7, **TINY)
