"""One training core for every kind of model: configs, the k-fold runner, the epoch loop and the run folder.

`run_training(BagTrainConfig(...))` trains a MIL aggregator on feature files, `run_training(PatchTrainConfig(...))`
a patch classifier on image folders; both write the run folder of `cmamil.training.run_folder`, which
`load_trained`, `cmamil report`, `cmamil evaluate` and `cmamil predict` read.
"""

import importlib
from typing import Any

# public name -> module; imported on first use, so that importing the CLI stays free of torch
_HOMES = {
    "BagTrainConfig": "config",
    "PatchTrainConfig": "config",
    "TrainConfig": "config",
    "RunFolder": "run_folder",
    "run_training": "runner",
    "format_summary": "summary",
    "summarize_run": "summary",
    "TrainedModel": "trained",
    "load_trained": "trained",
}

__all__ = [
    "BagTrainConfig",
    "PatchTrainConfig",
    "RunFolder",
    "TrainConfig",
    "TrainedModel",
    "format_summary",
    "load_trained",
    "run_training",
    "summarize_run",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"cmamil.training.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'cmamil.training' has no attribute {name!r}")
