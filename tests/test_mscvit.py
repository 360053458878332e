"""MSCViT: reference parameter counts, the Haar wavelet round trip, and the mscvit_t shape trace at 224."""

from __future__ import annotations

import pytest
import torch

from cmamil.errors import InputError
from cmamil.models import count_parameters, create_model
from cmamil.plugins.mscvit import WaveletConv


@pytest.mark.parametrize(
    ("name", "reference"), [("mscvit_t", 3_838_000), ("mscvit_xs", 7_786_000), ("mscvit_s", 13_952_000)]
)
def test_parameter_counts_match_the_reference_table(name, reference):
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
    assert abs(count_parameters(model) - reference) <= 0.001 * reference


def test_frozen_wavelet_filters_are_counted_but_not_trained():
    with torch.device("meta"):
        model = create_model("mscvit_t", num_classes=1000)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # two (4c, 1, 2, 2) Haar banks per block on c = C/4 channels: 32c; c = 8, 16, 32, 64 over depths 1, 2, 4, 1
    assert frozen == 32 * (8 * 1 + 16 * 2 + 32 * 4 + 64 * 1)


@pytest.mark.parametrize("size", [(8, 12), (7, 9)])
def test_haar_dwt_then_inverse_reconstructs_the_input(size):
    torch.manual_seed(0)
    wavelet = WaveletConv(3)
    x = torch.randn(2, 3, *size)
    bands = wavelet.dwt(x)
    assert bands.shape == (2, 3, 4, (size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(wavelet.idwt(bands, size), x, atol=1e-6, rtol=0)


def test_haar_bands_of_a_constant_image():
    bands = WaveletConv(2).dwt(torch.full((1, 2, 4, 4), 3.0))
    torch.testing.assert_close(bands[:, :, 0], torch.full((1, 2, 2, 2), 6.0))  # orthonormal LL: sum / 2
    torch.testing.assert_close(bands[:, :, 1:], torch.zeros(1, 2, 3, 2, 2))


def test_mscvit_t_shape_trace_at_224():
    torch.manual_seed(0)
    model = create_model("mscvit_t", num_classes=5).eval()
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, args, out):
            shapes.setdefault(name, tuple(out.shape))

        return hook

    model.stem.register_forward_hook(record("stem"))
    for i, embed in enumerate(model.embeds, start=1):
        embed.register_forward_hook(record(f"pe{i}"))
    attention = model.stages[0][0].attn
    attention.wtconv.register_forward_hook(record("conv_part"))
    attention.q.register_forward_hook(record("q"))
    attention.pools[0].register_forward_hook(record("r8"))
    attention.pools[1].register_forward_hook(record("r4"))
    model.fc[0].register_forward_hook(record("fc"))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
        features = model.forward_features(torch.randn(1, 3, 224, 224))
    assert shapes == {
        "stem": (1, 16, 112, 112),
        "pe1": (1, 3136, 32),
        "conv_part": (1, 8, 56, 56),
        "q": (1, 3136, 24),
        "r8": (1, 49, 24),
        "r4": (1, 196, 24),
        "pe2": (1, 784, 64),
        "pe3": (1, 196, 128),
        "pe4": (1, 49, 256),
        "fc": (1, 1280, 7, 7),
    }
    assert features.shape == (1, 1280)
    assert logits.shape == (1, 5)


def test_wrong_input_size_and_bad_img_size_are_one_line_errors():
    model = create_model("mscvit_t", num_classes=2, img_size=32)
    with pytest.raises(InputError, match="built for 32×32"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(InputError, match="multiple of 32"):
        create_model("mscvit_t", img_size=100)


def test_local_weights_round_trip_and_new_head(tmp_path):
    torch.manual_seed(0)
    source = create_model("mscvit_t", num_classes=3, img_size=32)
    path = tmp_path / "mscvit_t.pth"
    torch.save(source.state_dict(), path)
    same = create_model("mscvit_t", num_classes=3, img_size=32, weights=str(path)).state_dict()
    assert all(torch.equal(same[k], v) for k, v in source.state_dict().items())
    other = create_model("mscvit_t", num_classes=7, img_size=32, weights=str(path)).state_dict()
    assert other["head.weight"].shape == (7, 1280)
    assert all(torch.equal(other[k], v) for k, v in source.state_dict().items() if not k.startswith("head."))
    with pytest.raises(InputError, match="do not fit"):
        create_model("mscvit_xs", num_classes=3, img_size=32, weights=str(path))
