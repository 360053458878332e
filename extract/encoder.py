"""A patch model ready to embed tiles: built once, on its device, with its preprocessing and provenance.

Tiles arrive as uint8 `(B, H, W, 3)` batches (what the DataLoader workers produce; 4× less to move than
float32); normalisation runs on the device, and the `(B, 3, H, W)` view of an HWC batch is already channels-last,
the layout convolutional encoders run fastest in. Reduced precision (fp16, bf16) is autocast: on CUDA always,
on a CPU only where oneDNN computes in it natively (bf16: AVX512-BF16 or AMX; fp16: AVX512-FP16 or AMX-FP16),
since elsewhere it is emulated and many times slower than fp32. On a 2-core AVX512-BF16 CPU, bf16 extracted
ResNet-50-trunc 1.5× and ViT-S/16 2.4× faster than fp32 end to end, with features within 0.5 % and 0.9 % of fp32's
(relative norm of the difference on a real slide's tiles, random weights). On CUDA, `submit` copies the features
back to pinned host memory in the background, so the next batch starts before the previous one's features reach
the CPU. `compile=True` runs the model through `torch.compile` for one fixed batch shape (`warm_up` compiles it and
reports how long that took; a short last batch is padded to that shape), with inductor's freezing: the weights
become constants, so batch norm folds into the convolutions and on a CPU the weights are packed once.

On CPU a batch runs through the model in sub-batches of at most `CPU_SUB_BATCH_PIXELS` input pixels (16 tiles
of 224 px): a CPU gains nothing from more rows per call, while a whole batch's activations dominate the process's
memory. Measured on 2 cores, batch 64 at 224 px: ResNet-50-trunc 14.3–14.6 tiles/s and 2.2 GiB peak whole,
14.8–15.6 tiles/s and 0.9–1.2 GiB in sixteens; ViT-S/16 9.2 tiles/s and 1.31 GiB whole, 9.9 and 0.97 GiB in
sixteens. Small tiles (the demo's 64 px) still run as one call: splitting them cost 10 %.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from cmamil.data.provenance import file_sha256
from cmamil.errors import InputError, PluginError
from cmamil.notices import notice

__all__ = ["CPU_SUB_BATCH_PIXELS", "PRECISIONS", "Encoder", "cpu_computes_natively", "weights_digest"]

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_SUB_BATCH_PIXELS = 16 * 224 * 224


def weights_digest(weights: str | Path | None) -> str:
    """Provenance of encoder weights: 'random', 'hub', or the sha256 of a local weights file."""
    if weights is None:
        return "random"
    if str(weights) == "hub":
        return "hub"
    try:
        return file_sha256(Path(weights).expanduser())
    except OSError as exc:
        raise InputError(f"weights file '{weights}' cannot be read ({exc.strerror}); pass a local .pth or "
                         ".safetensors file, 'hub', or nothing for random weights") from exc


def _device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; a bare 'cuda' under torchrun means this rank's GPU (LOCAL_RANK)."""
    from cmamil.distributed import rank_device
    from cmamil.environment import resolve_device

    return rank_device(resolve_device(name))


def cpu_computes_natively(precision: str) -> bool:
    """Whether oneDNN runs this precision natively on this CPU (rather than emulating it); fp32 always."""
    if precision == "fp32":
        return True
    if precision == "bf16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def _frozen(compiled: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Call a compiled forward with inductor's freezing on (it is read when the graph compiles, at the first call;
    passed as a `torch.compile` option it is not applied)."""
    from torch._inductor import config

    def forward(x: torch.Tensor) -> torch.Tensor:
        with config.patch(freezing=True):
            return compiled(x)

    return forward


def _is_convolutional(model: nn.Module) -> bool:
    """More than one 2-d convolution (a ViT has just its patch embedding): channels-last pays off."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


class Encoder:
    """Embed uint8 tile batches with a registered patch model (`deit_small`, `timm:resnet18` …).

    `input_px` overrides the model's `data_config` input size (tiles are resized to it); `options` go to the
    model factory (e.g. `img_size=64` for a ViT fed 64-px tiles). Random weights (`weights=None`) are drawn from
    `seed`, so that two runs with the same seed embed tiles identically.
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
        input_px: int | None = None,
        device: str = "auto",
        precision: str = "fp32",
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        from cmamil.models import create_model

        if precision not in PRECISIONS:
            raise InputError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
        self.device = _device(device)
        if self.device.type == "cpu" and not cpu_computes_natively(precision):
            raise InputError(f"--precision {precision} needs CUDA or a CPU that computes in {precision} natively "
                             f"(this one would emulate it, many times slower than fp32); use fp32")
        self.name = name
        self.options = dict(options or {})
        self.precision = precision
        self.weights = "random" if weights is None else str(weights)
        self.seed = seed
        self.weights_sha256 = weights_digest(weights)
        if self.weights == "hub":
            notice(f"downloading the published weights of {name} from the Hugging Face hub (offline, this fails "
                   "after the hub's timeouts; pass a local --weights file instead)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(name, num_classes=0, weights=None if weights is None else str(weights),
                                 **self.options)
        self.data_config = model.data_config
        self.input_px = int(input_px or self.data_config.input_size[-1])
        self.num_features = int(model.num_features)
        self.channels_last = _is_convolutional(model)
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model
        mean = torch.tensor(self.data_config.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.data_config.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std
        self.batch_size: int | None = None
        self.compiled = False
        self._forward = model.forward_features
        self._check_input()
        if compile:
            self._forward, self.compiled = _frozen(torch.compile(model.forward_features, dynamic=False)), True

    def _check_input(self) -> None:
        """Embed one blank tile, so a model that cannot take `input_px` fails here with one line."""
        try:
            features = self(torch.zeros(1, self.input_px, self.input_px, 3, dtype=torch.uint8))
        except (RuntimeError, AssertionError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PluginError(
                f"encoder {self.name} cannot embed {self.input_px}-px tiles ({reason}); pass --input-px with the "
                f"model's size {self.data_config.input_size[-1]}, or a model option such as img_size"
            ) from exc
        if features.shape != (1, self.num_features):
            raise PluginError(
                f"encoder {self.name} returned features of shape {tuple(features.shape)} for one tile, "
                f"expected (1, {self.num_features}) (num_features)"
            )

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) → normalised float32 (B, 3, H, W) on the device (channels-last memory)."""
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x.mul_(self._scale).sub_(self._shift)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (B, D) features of a prepared batch, on the device (autocast in fp16/bf16; on CPU in
        sub-batches of at most `CPU_SUB_BATCH_PIXELS` pixels)."""
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            rows = max(1, CPU_SUB_BATCH_PIXELS // (x.shape[-2] * x.shape[-1]))
            if self.device.type == "cuda" or len(x) <= rows:
                return self._forward(x)
            return torch.cat([self._forward(part) for part in x.split(rows)])

    def warm_up(self, batch_size: int) -> float:
        """Run one blank batch of `batch_size` (compiling a compiled model for that shape); returns its seconds."""
        start = time.perf_counter()
        self.batch_size = batch_size
        self(torch.zeros(batch_size, self.input_px, self.input_px, 3, dtype=torch.uint8))
        seconds = time.perf_counter() - start
        if self.compiled:
            log.info("encoder %s compiled for batches of %d in %.1f s", self.name, batch_size, seconds)
        return seconds

    def submit(self, pixels: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Start embedding a uint8 (B, H, W, 3) batch; the returned function gives its (B, D) float32 CPU
        features (on CUDA it waits for their background copy to pinned memory)."""
        count = len(pixels)
        if self.compiled and self.batch_size and count < self.batch_size:
            pixels = torch.cat([pixels, pixels.new_zeros(self.batch_size - count, *pixels.shape[1:])])
        with torch.inference_mode():
            features = self.embed(self.prepare(pixels))[:count].float()
            if self.device.type != "cuda":
                return lambda: features
            host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            host.copy_(features, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()

        def result() -> torch.Tensor:
            copied.synchronize()
            return host

        return result

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features (B, D) float32 on the CPU of a uint8 (B, H, W, 3) tile batch."""
        return self.submit(pixels)()

    @property
    def attrs(self) -> dict[str, Any]:
        """Provenance stored in every feature file: model, weights and their hash, preprocessing, precision."""
        import timm

        return {
            "encoder": self.name,
            "encoder_weights": self.weights_sha256,
            "encoder_weights_file": "" if self.weights in ("random", "hub") else str(Path(self.weights).resolve()),
            "encoder_seed": self.seed if self.weights == "random" else None,
            "encoder_options": self.options,
            "input_px": self.input_px,
            "mean": list(self.data_config.mean),
            "std": list(self.data_config.std),
            "interpolation": self.data_config.interpolation,
            "precision": self.precision,
            "feature_dim": self.num_features,
            "versions": {"torch": torch.__version__, "timm": timm.__version__},
        }
