"""S4D, the diagonal state-space model (Gu et al., 2022), as a pixel-sequence image classifier.

Each S4D layer runs H independent complex-diagonal SSMs x' = Ax + Bu, y = 2·Re(Cx) + Du, discretised by
zero-order hold, as one long causal convolution with the kernel K_ℓ = 2·Re Σ_n C_n (e^{ΔA_n} − 1)/A_n · e^{ΔA_n ℓ},
applied by FFT of length 2L (no wrap-around). The classifier reads an image as a raster-scan sequence of pixels
(or of p×p patches when patch_size > 1), encodes each position linearly, stacks residual S4D layers with
LayerNorm, mean-pools over the sequence and classifies. The kernel is built in float64 (the phase ΔIm(A)·ℓ
reaches 10⁵ rad at L = 50,176) from √L-sized blocks over ℓ, so its memory stays bounded for a 224×224 raster;
kernel and FFT convolution run outside autocast, in float32 or better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmamil.errors import InputError
from cmamil.models import IMAGENET_MEAN, IMAGENET_STD, DataConfig, load_local_weights, small_variant

__all__ = ["S4DClassifier", "S4DConfig", "S4DKernel", "S4DLayer", "causal_fft_conv", "s4d", "vandermonde_kernel"]

SSM_PARAMETERS = ("log_dt", "log_A_real", "A_imag")


def causal_fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = Σ_{s≤t} k_s u_{t−s} of (..., H, L) signals with (H, L) kernels, by FFT of length 2L."""
    length = u.shape[-1]
    n = 2 * length
    product = torch.fft.rfft(u, n=n) * torch.fft.rfft(kernel, n=n)
    return torch.fft.irfft(product, n=n)[..., :length]


def _modes(rate: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Re, Im) of exp(ΔA_n ℓ) in float64, (H, N/2) × (P,) → (H, N/2, P); decay floored at e^-40 (< float32 ulp)."""
    exponent = rate.unsqueeze(-1) * positions
    decay = torch.exp(exponent.real.clamp(min=-40.0))
    return decay * torch.cos(exponent.imag), decay * torch.sin(exponent.imag)


def vandermonde_kernel(weight: torch.Tensor, rate: torch.Tensor, length: int) -> torch.Tensor:
    """K_ℓ = 2·Re Σ_n w_n exp(ΔA_n ℓ) for ℓ < length, as a float32 (H, length) tensor.

    ℓ is split as B·r + j with B = ⌈√length⌉, so exp(ΔA ℓ) = exp(ΔA B r)·exp(ΔA j), and the sum over modes
    becomes two real batched matrix products of O(H·N·√L) factors: the (H, N/2, L) Vandermonde matrix is never
    materialised. Everything runs in float64 (exact phases at L = 50,176, and immune to TF32 matmul settings).
    """
    block = math.isqrt(length - 1) + 1
    rows = -(-length // block)
    steps = torch.arange(block, dtype=torch.float64, device=rate.device)
    outer_re, outer_im = _modes(rate, steps[:rows] * block)
    inner_re, inner_im = _modes(rate, steps)
    left_re = (weight.real.unsqueeze(-1) * outer_re - weight.imag.unsqueeze(-1) * outer_im).transpose(1, 2)
    left_im = (weight.real.unsqueeze(-1) * outer_im + weight.imag.unsqueeze(-1) * outer_re).transpose(1, 2)
    real = left_re @ inner_re - left_im @ inner_im
    return (2 * real.reshape(real.shape[0], rows * block)[:, :length]).float()


class S4DKernel(nn.Module):
    """The (H, L) convolution kernel of H diagonal SSMs with N/2 conjugate-pair modes each (ZOH, Δ = exp(log_dt))."""

    def __init__(
        self, channels: int, d_state: int = 64, init: str = "lin", dt_min: float = 1e-3, dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        modes = d_state // 2
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        index = torch.arange(modes, dtype=torch.float32)
        imag = math.pi * index if init == "lin" else d_state / math.pi * (d_state / (2 * index + 1) - 1)
        self.log_dt = nn.Parameter(log_dt)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(channels, modes, dtype=torch.cfloat)))
        self.log_A_real = nn.Parameter(torch.full((channels, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(imag.repeat(channels, 1))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ΔA, C·B̄) as complex128 (H, N/2): the continuous-to-discrete step done in double precision."""
        dt = torch.exp(self.log_dt.double()).unsqueeze(-1)
        a = torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())
        rate = a * dt
        return rate, torch.view_as_complex(self.C.double()) * (torch.exp(rate) - 1) / a

    def forward(self, length: int) -> torch.Tensor:
        rate, weight = self.discrete()
        return vandermonde_kernel(weight, rate, length)


class S4DLayer(nn.Module):
    """S4D convolution + D skip, GELU, channel dropout, 1×1 conv to 2H and GLU: (B, H, L) → (B, H, L)."""

    def __init__(self, channels: int, d_state: int, init: str, dropout: float) -> None:
        super().__init__()
        self.kernel = S4DKernel(channels, d_state, init)
        self.D = nn.Parameter(torch.randn(channels))
        self.dropout = nn.Dropout1d(dropout)
        self.output = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            y = causal_fft_conv(u, self.kernel(u.shape[-1])) + self.D.unsqueeze(-1) * u
        return F.glu(self.output(self.dropout(F.gelu(y))), dim=-2)


@dataclass(frozen=True)
class S4DConfig:
    """Input (channels, size, patch front end), width H, depth, state size N, A init, dropout, norm placement."""

    in_chans: int = 3
    img_size: int = 224
    patch_size: int = 1
    d_model: int = 128
    n_layers: int = 4
    d_state: int = 64
    init: str = "lin"
    dropout: float = 0.1
    prenorm: bool = False
    ssm_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.init not in ("lin", "inv"):
            raise InputError(f"s4d: init must be 'lin' or 'inv', got '{self.init}'")
        if min(self.in_chans, self.img_size, self.patch_size, self.d_model, self.n_layers) < 1:
            raise InputError("s4d: in_chans, img_size, patch_size, d_model and n_layers must be positive")
        if self.img_size % self.patch_size:
            raise InputError(f"s4d: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.d_state < 2 or self.d_state % 2:
            raise InputError(f"s4d: d_state must be a positive even number, got {self.d_state}")
        if not 0 <= self.dropout < 1 or self.ssm_lr <= 0:
            raise InputError("s4d: dropout must lie in [0, 1) and ssm_lr must be positive")

    @property
    def sequence_length(self) -> int:
        """L, the number of raster positions the SSM runs over."""
        return (self.img_size // self.patch_size) ** 2


class S4DClassifier(nn.Module):
    """Raster scan → Linear encoder → n × [S4D, dropout, residual, LayerNorm] → mean over L → Linear head."""

    def __init__(self, config: S4DConfig, num_classes: int = 0) -> None:
        super().__init__()
        self.config = config
        width = config.d_model
        self.encoder = nn.Linear(config.in_chans * config.patch_size**2, width)
        self.layers = nn.ModuleList(
            S4DLayer(width, config.d_state, config.init, config.dropout)
            for _ in range(config.n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(config.n_layers))
        self.dropouts = nn.ModuleList(nn.Dropout1d(config.dropout) for _ in range(config.n_layers))
        self.num_features = width
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        rgb = config.in_chans == 3
        self.data_config = DataConfig(
            input_size=(config.in_chans, config.img_size, config.img_size),
            mean=IMAGENET_MEAN if rgb else (0.5,) * config.in_chans,
            std=IMAGENET_STD if rgb else (0.5,) * config.in_chans,
        )

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, L, C·p²): row-major raster over pixels, or over p×p patches."""
        if x.shape[1:] != self.data_config.input_size:
            raise InputError(f"s4d was built for inputs {self.data_config.input_size}, got {tuple(x.shape[1:])}")
        if self.config.patch_size > 1:
            x = F.pixel_unshuffle(x, self.config.patch_size)
        return x.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.to_sequence(x)).transpose(1, 2)
        for layer, norm, drop in zip(self.layers, self.norms, self.dropouts):
            z = norm(h.transpose(1, 2)).transpose(1, 2) if self.config.prenorm else h
            h = h + drop(layer(z))
            if not self.config.prenorm:
                h = norm(h.transpose(1, 2)).transpose(1, 2)
        return h.mean(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups: SSM parameters (log_dt, log_A_real, A_imag) at min(ssm_lr, lr) without weight decay."""
        ssm = [p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1] in SSM_PARAMETERS]
        ssm_ids = {id(p) for p in ssm}
        rest = [p for p in self.parameters() if id(p) not in ssm_ids and p.requires_grad]
        return [
            {"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": ssm, "lr": min(self.config.ssm_lr, lr), "weight_decay": 0.0},
        ]


@small_variant(img_size=16, patch_size=2, d_model=16, n_layers=2, d_state=8)
def s4d(
    *,
    num_classes: int = 0,
    weights: str | None = None,
    in_chans: int = 3,
    img_size: int = 224,
    patch_size: int = 1,
    d_model: int = 128,
    n_layers: int = 4,
    d_state: int = 64,
    init: str = "lin",
    dropout: float = 0.1,
    prenorm: bool = False,
    ssm_lr: float = 1e-3,
) -> S4DClassifier:
    """S4D pixel-sequence classifier (201,355 parameters for 1 channel and 11 classes); `weights` is a local file."""
    config = S4DConfig(
        in_chans, img_size, patch_size, d_model, n_layers, d_state, init, dropout, prenorm, ssm_lr
    )
    return load_local_weights(S4DClassifier(config, num_classes=num_classes), weights, name="s4d")
