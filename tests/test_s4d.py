"""S4D: counts, kernel vs the explicit recurrence, causal (non-circular) FFT convolution, precision, groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmamil.errors import InputError
from cmamil.models import count_parameters, create_model
from cmamil.plugins.s4d import S4DKernel, causal_fft_conv

SMALL = {"img_size": 16, "patch_size": 2, "d_model": 16, "n_layers": 2, "d_state": 8}


@pytest.mark.parametrize(
    ("options", "classes", "expected"),
    [
        ({"in_chans": 1, "img_size": 28}, 11, 201_355),  # the seed OrganCMNIST configuration
        ({"in_chans": 3, "img_size": 28, "d_model": 256}, 9, 664_841),  # the seed PathMNIST configuration
    ],
)
def test_reference_parameter_counts(options, classes, expected):
    assert count_parameters(create_model("s4d", num_classes=classes, **options)) == expected


def test_layer_count_formula():
    h, n = 32, 16
    with_layer = count_parameters(create_model("s4d", d_model=h, d_state=n, n_layers=2, img_size=8))
    without = count_parameters(create_model("s4d", d_model=h, d_state=n, n_layers=1, img_size=8))
    assert with_layer - without == 2 * h * h + 2 * h * n + 6 * h


def recurrence_impulse_response(kernel: S4DKernel, length: int) -> torch.Tensor:
    """y_t = 2·Re(C x_t) for x_t = Ā x_{t−1} + B̄ u_t driven by a unit impulse, in complex128."""
    dt = torch.exp(kernel.log_dt.detach().double()).unsqueeze(-1)
    a = torch.complex(-torch.exp(kernel.log_A_real.detach().double()), kernel.A_imag.detach().double())
    a_bar, b_bar = torch.exp(dt * a), (torch.exp(dt * a) - 1) / a
    c = torch.view_as_complex(kernel.C.detach().double())
    state = torch.zeros_like(a)
    outputs = []
    for t in range(length):
        state = a_bar * state + b_bar * (1.0 if t == 0 else 0.0)
        outputs.append(2 * (c * state).sum(dim=-1).real)
    return torch.stack(outputs, dim=-1)


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_kernel_equals_the_impulse_response_of_the_recurrence(init):
    torch.manual_seed(0)
    kernel = S4DKernel(4, d_state=16, init=init)
    with torch.no_grad():
        kernel.log_A_real.fill_(math.log(0.05))  # slow decay: the late taps still matter
        computed = kernel(300).double()
    reference = recurrence_impulse_response(kernel, 300)
    assert ((computed - reference).abs().max() / reference.abs().max()).item() <= 1e-5
    assert reference[:, 200:].abs().max() > 1e-2 * reference.abs().max()


def test_kernel_at_a_224_raster_length_keeps_its_phase():
    """L = 50,176 with S4D-Inv's fast modes and a near-undamped slow mode, against float64 Vandermonde."""
    torch.manual_seed(0)
    kernel = S4DKernel(2, d_state=64, init="inv")
    length = 224 * 224
    with torch.no_grad():
        kernel.log_A_real.fill_(math.log(1e-4))
        computed = kernel(length).double()
        rate, weight = kernel.discrete()
        positions = torch.arange(length, dtype=torch.float64)
        reference = torch.stack(
            [2 * (weight[:, n, None] * torch.exp(rate[:, n, None] * positions)).real for n in range(32)]
        ).sum(dim=0)
    assert ((computed - reference).abs().max() / reference.abs().max()).item() <= 1e-5


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{s≤t} k_s u_{t−s} by zero-padding on the left (a time-domain convolution, no FFT)."""
    length = u.shape[-1]
    return F.conv1d(F.pad(u, (length - 1, 0)), k.flip(-1).unsqueeze(1), groups=k.shape[0])


def test_fft_convolution_is_causal_not_circular():
    torch.manual_seed(0)
    u, k = torch.randn(2, 3, 64), torch.randn(3, 64)
    direct = direct_causal_conv(u, k)
    torch.testing.assert_close(causal_fft_conv(u, k), direct, atol=1e-4, rtol=1e-4)
    # an FFT of length L computes the circular convolution, which these inputs tell apart from the causal one
    circular = torch.fft.irfft(torch.fft.rfft(u, n=64) * torch.fft.rfft(k, n=64), n=64)
    assert (circular - direct).abs().max() > 1.0
    impulse_at_end = torch.zeros(1, 3, 64)
    impulse_at_end[..., -1] = 1.0
    response = causal_fft_conv(impulse_at_end, k)
    torch.testing.assert_close(response[..., :-1], torch.zeros(1, 3, 63), atol=1e-5, rtol=0)
    torch.testing.assert_close(response[..., -1], k[:, 0].unsqueeze(0), atol=1e-5, rtol=0)


def test_kernel_and_fft_stay_float32_under_autocast():
    model = create_model("s4d", num_classes=2, **SMALL)
    dtypes = []
    model.layers[0].kernel.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 16, 16))
    assert dtypes == [torch.float32]
    assert torch.isfinite(logits.float()).all()


def test_raster_and_patch_sequences():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pixels = create_model("s4d", img_size=4, d_model=8, d_state=4, n_layers=1).to_sequence(x)
    torch.testing.assert_close(pixels[1], x[1].reshape(3, 16).t())  # row-major, one position per pixel
    patches = create_model("s4d", img_size=4, patch_size=2, d_model=8, d_state=4, n_layers=1).to_sequence(x)
    assert patches.shape == (2, 4, 12)
    torch.testing.assert_close(patches[0, 1], x[0, :, 0:2, 2:4].reshape(12))  # second patch: top right


def test_param_groups_put_ssm_parameters_apart():
    model = create_model("s4d", num_classes=2, **SMALL)
    groups = model.param_groups(lr=0.01, weight_decay=0.05)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert set(ids[0]).isdisjoint(ids[1]) and set(ids[0]) | set(ids[1]) == trainable
    names = {id(p): n.rsplit(".", 1)[-1] for n, p in model.named_parameters()}
    assert sorted(names[i] for i in ids[1]) == sorted(["A_imag", "log_A_real", "log_dt"] * 2)
    assert (groups[0]["lr"], groups[0]["weight_decay"]) == (0.01, 0.05)
    assert (groups[1]["lr"], groups[1]["weight_decay"]) == (0.001, 0.0)
    assert model.param_groups(lr=1e-4, weight_decay=0.05)[1]["lr"] == 1e-4


def test_learns_a_label_planted_in_the_raster_order():
    """Class 1: bright first half, dark second half; class 0 the reverse. Both have the same pixel values, so
    without the causal SSM (mean pooling, no positional encoding) the classes cannot be told apart."""
    torch.manual_seed(0)
    model = create_model("s4d", num_classes=2, in_chans=1, img_size=8, d_model=16, n_layers=1, d_state=8)

    def batch(n):
        y = torch.randint(0, 2, (n,))
        ramp = torch.cat([torch.ones(32), -torch.ones(32)])
        x = (2 * y - 1).float()[:, None] * ramp + 0.5 * torch.randn(n, 64)
        return x.reshape(n, 1, 8, 8), y

    optimizer = torch.optim.AdamW(model.param_groups(lr=0.01, weight_decay=0.01))
    for _ in range(40):
        x, y = batch(32)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    x, y = batch(256)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy > 0.9


def test_bad_options_are_one_line_input_errors():
    with pytest.raises(InputError, match="multiple of patch_size"):
        create_model("s4d", img_size=30, patch_size=4)
    with pytest.raises(InputError, match="init"):
        create_model("s4d", init="legs")
    with pytest.raises(InputError, match="built for inputs"):
        create_model("s4d", img_size=8, n_layers=1)(torch.randn(1, 3, 16, 16))
