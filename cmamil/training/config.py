"""The options of a training run: one frozen dataclass shared by every kind, and one per kind of input.

`TrainConfig` holds what the one training loop and the run folder need (schedule, early stopping, seeds,
devices). `BagTrainConfig` adds the inputs of MIL aggregator training on per-bag feature files and keeps the
CMA-MIL/CLAM protocol defaults; `PatchTrainConfig` adds image folders, batching and augmentation and keeps the
MagFusion protocol defaults. The CLI derives which options apply to which input from these fields, and the
run folder's config.yaml stores `to_dict()`.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from cmamil.errors import InputError

__all__ = [
    "AUGMENTATIONS",
    "FOLD_RULE",
    "MONITORS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "BagTrainConfig",
    "PatchTrainConfig",
    "TrainConfig",
    "config_fields",
]

MONITORS = ("auc", "f1_macro", "balanced_accuracy", "accuracy", "loss")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "plateau")
AUGMENTATIONS = ("none", "basic", "strong")
BAG_BY = ("slide", "patient")
FOLD_RULE = ("With --folds K every class needs at least K patients (slides or images when there are no patient "
             "ids), so that each test fold holds every class; with --val-fraction > 0 a class of n also needs "
             "n − ⌈n/K⌉ ≥ 2, so that each fold's training part can give validation one (4 for --folds 2).")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options every training run shares; subclasses set the protocol defaults of their kind of input."""

    KIND: ClassVar[str] = ""
    # options that may change between a run and its resumption without changing what is trained
    RUNTIME: ClassVar[tuple[str, ...]] = ("out", "device", "num_workers", "overwrite", "progress", "figures")

    model: str
    out: Path
    folds: int | None = 5
    epochs: int = 50
    lr: float = 2e-4
    weight_decay: float = 1e-5
    optimizer: str = "adam"
    scheduler: str = "constant"
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    warmup_epochs: int = 0
    clip_grad: float = 0.0
    amp: bool = False
    weighted_sampling: bool = False
    monitor: str = "auc"
    patience: int = 20
    min_epochs: int = 10
    val_fraction: float = 0.2
    no_group: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 2
    overwrite: bool = False
    progress: bool = True
    figures: bool = True

    def __post_init__(self) -> None:
        for name in ("out", *self._path_fields()):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        checks = [
            (self.folds is None or self.folds >= 2, f"--folds must be at least 2, got {self.folds}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be non-negative, got {self.weight_decay}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS, f"--scheduler must be one of {', '.join(SCHEDULERS)}"),
            (0 < self.plateau_factor < 1, f"--plateau-factor must lie in (0, 1), got {self.plateau_factor}"),
            (self.plateau_patience >= 0, f"--plateau-patience must be >= 0, got {self.plateau_patience}"),
            (self.scheduler != "plateau" or self.val_fraction > 0,
             "--scheduler plateau steps on the validation metric; it needs --val-fraction > 0"),
            (self.monitor in MONITORS, f"--monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}"),
            (self.patience >= 1 and self.min_epochs >= 0, "--patience must be >= 1 and --min-epochs >= 0"),
            (self.warmup_epochs >= 0 and self.clip_grad >= 0, "--warmup-epochs and --clip-grad must be >= 0"),
            (0.0 <= self.val_fraction < 1.0, f"--val-fraction must lie in [0, 1), got {self.val_fraction}"),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def _path_fields(cls) -> tuple[str, ...]:
        return ()

    @classmethod
    def _input_fields(cls) -> tuple[str, ...]:
        """Fields naming input files or folders (recorded resolved)."""
        return cls._path_fields()

    @property
    def kind(self) -> str:
        """'bags' or 'patches': which task trains this config."""
        return self.KIND

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings, tuples as lists) for config.yaml; input paths resolved, so that a run
        started from another folder, or given absolute paths, records (and resumes) as the same run."""
        values = asdict(self)
        for name in self._input_fields():
            value = values[name]
            if value is not None:
                values[name] = tuple(p.resolve() for p in value) if isinstance(value, tuple) else value.resolve()
        return {k: _plain(v) for k, v in values.items()}

    def fingerprint(self) -> dict[str, Any]:
        """The options that determine what is trained (everything but the runtime ones)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME}


@dataclass(frozen=True, kw_only=True)
class BagTrainConfig(TrainConfig):
    """MIL aggregator training on per-bag feature files (defaults: the CMA-MIL/CLAM protocol)."""

    KIND: ClassVar[str] = "bags"

    features: Path
    labels: Path
    magnifications: tuple[str, ...] | None = None
    splits: Path | None = None
    standardize: bool = False
    slide_table: Path | None = None
    bag_by: str = "slide"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds is None:
            raise InputError("bag training needs --folds (k-fold cross-validation)")
        if self.bag_by not in BAG_BY:
            raise InputError(f"--bag-by must be one of {', '.join(BAG_BY)}, got {self.bag_by!r}")
        if self.magnifications is not None:
            object.__setattr__(self, "magnifications", tuple(self.magnifications))

    @classmethod
    def _path_fields(cls) -> tuple[str, ...]:
        return ("features", "labels", "splits", "slide_table")


@dataclass(frozen=True, kw_only=True)
class PatchTrainConfig(TrainConfig):
    """Patch-classifier training on image folders (defaults: the MagFusion protocol)."""

    KIND: ClassVar[str] = "patches"
    RUNTIME: ClassVar[tuple[str, ...]] = (*TrainConfig.RUNTIME, "images", "explain", "embeddings")

    images: tuple[Path, ...]
    folds: int | None = None
    epochs: int = 100
    lr: float = 3e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: int = 5
    clip_grad: float = 1.0
    amp: bool = True
    monitor: str = "f1_macro"
    group_by: str | None = None
    split_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    batch_size: int = 32
    label_smoothing: float = 0.0
    augment: str = "basic"
    mixup: float = 0.0
    cutmix: float = 0.0
    input_px: int | None = None
    weights: str | None = None
    explain: int = 8
    embeddings: int = 500

    @classmethod
    def _input_fields(cls) -> tuple[str, ...]:
        return ("images",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(Path(p) for p in self.images))
        super().__post_init__()
        checks = [
            (bool(self.images), "give at least one image root (--images)"),
            (self.val_fraction > 0, f"--val-fraction must lie in (0, 1) for patch models, got {self.val_fraction}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.augment in AUGMENTATIONS, f"--augment must be one of {', '.join(AUGMENTATIONS)}"),
            (0.0 <= self.label_smoothing < 1.0, "--label-smoothing must lie in [0, 1)"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix must be non-negative"),
            (self.input_px is None or self.input_px >= 8, f"--input-px must be at least 8, got {self.input_px}"),
            (self.explain >= 0 and self.embeddings >= 0, "--explain and --embeddings must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.group_by is not None and self.no_group:
            raise InputError("--group-by and --no-group contradict each other; give one")
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise InputError(f"--group-by {self.group_by!r} is not a valid regular expression: {exc}") from exc
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        if self.split_names is not None:
            object.__setattr__(self, "split_names", tuple(self.split_names))
            if len(self.split_names) != 3:
                raise InputError(f"--split-names needs three names (train,val,test), got {list(self.split_names)}")


def config_fields(config_class: type[TrainConfig]) -> dict[str, Any]:
    """Every option of `config_class` with its default (None where it has none)."""
    out = {}
    for item in fields(config_class):
        if item.default is not MISSING:
            out[item.name] = item.default
        else:
            out[item.name] = None if item.default_factory is MISSING else item.default_factory()
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
