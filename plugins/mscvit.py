"""MSCViT, multi-scale convolutional ViT (Zhang & Zhang, arXiv 2501.06040), sizes t / xs / s.

A convolutional stem, then four stages of blocks at strides 4, 8, 16 and 32. Each block applies local feature
extraction (depthwise convolutions in place of positional encoding), then a mixer whose attention part (3/4 of the
channels) attends to keys and values pooled at several rates per head group, and whose convolution part (1/4)
runs a Haar wavelet convolution (WTConv), then an inverted-residual FFN. A 1×1 conv to 1280 channels, BN, Swish and
global pooling give the embedding. Layout and parameter counts follow the public reference implementation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from cmamil.errors import InputError
from cmamil.models import DataConfig, load_local_weights, small_variant

__all__ = ["MSCViT", "MSCViTConfig", "WaveletConv", "haar_filters", "mscvit_s", "mscvit_t", "mscvit_xs"]

# Per stage reduction ratio: key/value sources as (pooling rate, share of heads), and 3×3 conv-token branches.
# A rate of None attends to the unpooled tokens through one linear layer (plain multi-head attention).
RATE_PLANS: dict[int, tuple[tuple[tuple[int | None, int], ...], int]] = {
    8: (((8, 2), (4, 2)), 0),
    4: (((4, 4), (2, 4), (1, 4)), 1),
    2: (((2, 4), (1, 4)), 2),
    1: (((None, 1),), 0),
}


def haar_filters(channels: int) -> torch.Tensor:
    """Orthonormal 2-D Haar analysis filters (LL, LH, HL, HH) for each channel: (4·channels, 1, 2, 2)."""
    low = torch.tensor([1.0, 1.0]) / 2**0.5
    high = torch.tensor([1.0, -1.0]) / 2**0.5
    bank = torch.stack([torch.outer(a, b) for a, b in ((low, low), (high, low), (low, high), (high, high))])
    return bank.unsqueeze(1).repeat(channels, 1, 1, 1)


class WaveletConv(nn.Module):
    """WTConv: a depthwise conv plus depthwise convs on the Haar sub-bands of `levels` wavelet levels."""

    def __init__(self, channels: int, kernel_size: int = 3, levels: int = 2) -> None:
        super().__init__()
        self.channels = channels
        # frozen filters are parameters (not buffers) as in the reference, so they appear in its counts
        self.wt_filter = nn.Parameter(haar_filters(channels), requires_grad=False)
        self.iwt_filter = nn.Parameter(haar_filters(channels), requires_grad=False)
        self.base_conv = nn.Conv2d(channels, channels, kernel_size, padding="same", groups=channels)
        self.base_scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.wavelet_convs = nn.ModuleList(
            nn.Conv2d(4 * channels, 4 * channels, kernel_size, padding="same", groups=4 * channels, bias=False)
            for _ in range(levels)
        )
        self.wavelet_scales = nn.ParameterList(
            nn.Parameter(torch.full((1, 4 * channels, 1, 1), 0.1)) for _ in range(levels)
        )

    def dwt(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → sub-bands (B, C, 4, ⌈H/2⌉, ⌈W/2⌉); odd sizes are zero-padded at the end."""
        x = F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        bands = F.conv2d(x, self.wt_filter.to(x.dtype), stride=2, groups=self.channels)
        return bands.reshape(x.shape[0], self.channels, 4, *bands.shape[2:])

    def idwt(self, bands: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Sub-bands (B, C, 4, h, w) → (B, C, H, W) cropped to `size`; inverts `dwt` exactly."""
        flat = bands.reshape(bands.shape[0], 4 * self.channels, *bands.shape[3:])
        x = F.conv_transpose2d(flat, self.iwt_filter.to(flat.dtype), stride=2, groups=self.channels)
        return x[:, :, : size[0], : size[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lows, filtered, sizes = x, [], []
        for conv, scale in zip(self.wavelet_convs, self.wavelet_scales):
            sizes.append(tuple(lows.shape[2:]))
            bands = self.dwt(lows)
            lows = bands[:, :, 0]
            flat = bands.reshape(bands.shape[0], 4 * self.channels, *bands.shape[3:])
            filtered.append((scale * conv(flat)).reshape(bands.shape))
        coarse = torch.zeros_like(filtered[-1][:, :, 0])
        for bands, size in zip(reversed(filtered), reversed(sizes)):
            bands = torch.cat([(bands[:, :, 0] + coarse).unsqueeze(2), bands[:, :, 1:]], dim=2)
            coarse = self.idwt(bands, size)
        return self.base_scale * self.base_conv(x) + coarse


class TokenPool(nn.Module):
    """Depthwise conv with kernel = stride = rate, then LayerNorm and GELU: (B, C, H, W) → (B, HW/rate², C)."""

    def __init__(self, dim: int, rate: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, rate, stride=rate, groups=dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x).flatten(2).transpose(1, 2)))


class ConvTokens(nn.Module):
    """3×3 conv from the attention channels to a quarter of them, LayerNorm, GELU: extra output tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim // 4, 3, padding=1)
        self.norm = nn.LayerNorm(dim // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x).flatten(2).transpose(1, 2)))


class MultiRateAttention(nn.Module):
    """LMSSA on 3/4 of the channels (keys pooled at several rates per head group) ⊕ WTConv on the other 1/4."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.conv_dim = dim // 4
        self.attn_dim = dim - self.conv_dim
        self.heads = heads
        self.head_dim = self.attn_dim // heads
        self.attn_drop = attn_drop
        kernel = 3 if sr_ratio in (8, 4) else 5
        self.wtconv = WaveletConv(self.conv_dim, kernel_size=3, levels=2)
        self.conv = nn.Conv2d(self.conv_dim, self.conv_dim, kernel, padding=kernel // 2)
        self.conv_norm = nn.LayerNorm(self.conv_dim)
        self.q = nn.Linear(self.attn_dim, self.attn_dim, bias=qkv_bias)
        groups, conv_branches = RATE_PLANS[sr_ratio]
        self.group_heads = [heads // share for _, share in groups]
        self.pools = nn.ModuleList(
            nn.Identity() if rate is None else TokenPool(self.attn_dim, rate) for rate, _ in groups
        )
        self.kvs = nn.ModuleList(
            nn.Linear(self.attn_dim, 2 * n * self.head_dim, bias=qkv_bias) for n in self.group_heads
        )
        self.conv_tokens = nn.ModuleList(ConvTokens(self.attn_dim) for _ in range(conv_branches))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        batch, tokens, _ = x.shape
        conv_part, attn_part = x.split([self.conv_dim, self.attn_dim], dim=2)
        conv_map = conv_part.transpose(1, 2).reshape(batch, self.conv_dim, *size)
        conv_out = F.gelu(self.conv_norm(self.conv(self.wtconv(conv_map)).flatten(2).transpose(1, 2)))
        attn_map = attn_part.transpose(1, 2).reshape(batch, self.attn_dim, *size)
        q = self.q(attn_part).reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        outputs, first = [], 0
        for pool, kv, n in zip(self.pools, self.kvs, self.group_heads):
            source = attn_part if isinstance(pool, nn.Identity) else pool(attn_map)
            k, v = kv(source).reshape(batch, -1, 2, n, self.head_dim).permute(2, 0, 3, 1, 4)
            drop = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(q[:, first : first + n], k, v, dropout_p=drop)
            outputs.append(out.transpose(1, 2).reshape(batch, tokens, n * self.head_dim))
            first += n
        outputs += [branch(attn_map) for branch in self.conv_tokens]
        return self.proj_drop(self.proj(torch.cat(outputs + [conv_out], dim=2)))


class IRFFN(nn.Module):
    """Inverted-residual FFN: 1×1 expand → GELU → BN → depthwise 3×3 (+ skip) → GELU → BN → 1×1 → BN."""

    def __init__(self, dim: int, ratio: int, drop: float) -> None:
        super().__init__()
        hidden = dim * ratio
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.BatchNorm2d(hidden))
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.dw_norm = nn.BatchNorm2d(hidden)
        self.reduce = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        batch, _, channels = x.shape
        h = self.drop(self.expand(x.transpose(1, 2).reshape(batch, channels, *size)))
        h = self.dw_norm(F.gelu(self.dwconv(h) + h))
        return self.drop(self.reduce(h).flatten(2).transpose(1, 2))


class Block(nn.Module):
    """Local feature extraction, then pre-norm residual multi-rate attention and IRFFN, on (B, N, C) tokens."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int, config: MSCViTConfig, drop_path: float
    ) -> None:
        super().__init__()
        self.lfe_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.lfe_pw = nn.Conv2d(dim, dim, 1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiRateAttention(dim, heads, sr_ratio, config.qkv_bias, config.attn_drop_rate, config.drop_rate)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = IRFFN(dim, mlp_ratio, config.drop_rate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        batch, _, channels = x.shape
        grid = x.transpose(1, 2).reshape(batch, channels, *size)
        x = self.lfe_pw(self.lfe_dw(grid) + grid).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.ffn(self.norm2(x), size))


class PatchEmbed(nn.Module):
    """2×2 stride-2 conv then LayerNorm: (B, C_in, H, W) → (B, HW/4, C_out) tokens."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 2, stride=2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


@dataclass(frozen=True)
class MSCViTConfig:
    """Widths, heads, FFN ratios, depths per stage, stem width, pooling ratios, input size and dropouts."""

    dims: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    stem_channels: int
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    fc_dim: int = 1280
    img_size: int = 224
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.img_size < 32 or self.img_size % 32:
            raise InputError(f"mscvit: img_size must be a positive multiple of 32, got {self.img_size}")
        for dim, heads, sr in zip(self.dims, self.heads, self.sr_ratios):
            groups, _ = RATE_PLANS.get(sr, ((), 0))
            if not groups or dim % 4 or (dim - dim // 4) % heads or any(heads % share for _, share in groups):
                raise InputError(f"mscvit: stage with width {dim}, {heads} heads and sr_ratio {sr} is not buildable")
        if not all(0 <= p < 1 for p in (self.drop_rate, self.attn_drop_rate, self.drop_path_rate)):
            raise InputError("mscvit: drop rates must lie in [0, 1)")


VARIANTS = {
    "mscvit_t": MSCViTConfig((32, 64, 128, 256), (2, 4, 8, 16), (8, 8, 4, 4), (1, 2, 4, 1), 16),
    "mscvit_xs": MSCViTConfig((48, 96, 192, 384), (2, 4, 8, 16), (8, 8, 4, 4), (1, 1, 3, 2), 24),
    "mscvit_s": MSCViTConfig((64, 128, 256, 512), (2, 4, 8, 16), (8, 8, 4, 4), (2, 2, 4, 2), 32),
}


class MSCViT(nn.Module):
    """Stem → 4 × (patch embedding + blocks) → 1×1 conv, BN, Swish, average pooling → linear head."""

    def __init__(self, config: MSCViTConfig, num_classes: int = 0) -> None:
        super().__init__()
        self.config = config
        stem = config.stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1), nn.GELU(), nn.BatchNorm2d(stem),
            nn.Conv2d(stem, stem, 3, padding=1), nn.GELU(), nn.BatchNorm2d(stem),
            nn.Conv2d(stem, stem, 3, padding=1), nn.GELU(), nn.BatchNorm2d(stem),
        )
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        in_dims = (stem,) + config.dims[:-1]
        self.embeds = nn.ModuleList(PatchEmbed(a, b) for a, b in zip(in_dims, config.dims))
        self.stages = nn.ModuleList()
        for i, (dim, heads, ratio, depth, sr) in enumerate(
            zip(config.dims, config.heads, config.mlp_ratios, config.depths, config.sr_ratios)
        ):
            start = sum(config.depths[:i])
            self.stages.append(
                nn.ModuleList(Block(dim, heads, ratio, sr, config, rates[start + j]) for j in range(depth))
            )
        self.fc = nn.Sequential(nn.Conv2d(config.dims[-1], config.fc_dim, 1), nn.BatchNorm2d(config.fc_dim), nn.SiLU())
        self.num_features = config.fc_dim
        self.head = nn.Linear(config.fc_dim, num_classes) if num_classes else nn.Identity()
        self.data_config = DataConfig(input_size=(3, config.img_size, config.img_size))
        self.apply(_init_weights)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, C₄, H/32, W/32)."""
        if tuple(x.shape[2:]) != (self.config.img_size,) * 2:
            raise InputError(
                f"mscvit was built for {self.config.img_size}×{self.config.img_size} inputs, got "
                f"{x.shape[2]}×{x.shape[3]}; build it with img_size={x.shape[2]} (a multiple of 32)"
            )
        x = self.stem(x)
        for embed, blocks in zip(self.embeds, self.stages):
            size = (x.shape[2] // 2, x.shape[3] // 2)
            x = embed(x)
            for block in blocks:
                x = block(x, size)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *size)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_maps(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linear layers, fan-out Kaiming convs, unit norms, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _build(
    variant: str, num_classes: int, weights: str | None, img_size: int, drop_rate: float, drop_path_rate: float
) -> MSCViT:
    config = dataclasses.replace(
        VARIANTS[variant], img_size=img_size, drop_rate=drop_rate, drop_path_rate=drop_path_rate
    )
    model = MSCViT(config, num_classes=num_classes)
    return load_local_weights(model, weights, name=variant)


@small_variant(img_size=32)
def mscvit_t(
    *, num_classes: int = 0, weights: str | None = None, img_size: int = 224, drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> MSCViT:
    """MSCViT-T (3.84 M parameters with 1000 classes); `weights` is a local state-dict file."""
    return _build("mscvit_t", num_classes, weights, img_size, drop_rate, drop_path_rate)


@small_variant(img_size=32)
def mscvit_xs(
    *, num_classes: int = 0, weights: str | None = None, img_size: int = 224, drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> MSCViT:
    """MSCViT-XS (7.79 M parameters with 1000 classes); `weights` is a local state-dict file."""
    return _build("mscvit_xs", num_classes, weights, img_size, drop_rate, drop_path_rate)


@small_variant(img_size=32)
def mscvit_s(
    *, num_classes: int = 0, weights: str | None = None, img_size: int = 224, drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> MSCViT:
    """MSCViT-S (13.95 M parameters with 1000 classes); `weights` is a local state-dict file."""
    return _build("mscvit_s", num_classes, weights, img_size, drop_rate, drop_path_rate)
