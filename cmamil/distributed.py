"""Scale-out on torch.distributed: who this process is, the process group, and rank-0-only writing.

The one module that reads a launcher's environment: `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK), else an `srun`
step (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID), else one process. `process_group` joins the group
(nccl on GPUs, gloo on CPU) for the length of a run. A `World` also names the ranks that share one piece of
work (a `team`): all ranks for data-parallel patch training, this rank alone for a fold of fold-parallel MIL
training; only the team's first rank writes, and collectives run only in teams of several ranks. torch is imported
on use, so that the command line can ask for the rank without it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from cmamil.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["SINGLE", "World", "current_world", "detect_world", "gather", "main_writes", "process_group",
           "rank_device", "replicate", "share_buffers", "summary_writer", "wait"]

T = TypeVar("T")

# Ranks wait at a barrier while peers train their folds, which can take hours; a rank that dies makes
# torchrun stop the others, so waiting long never hangs a failed run.
TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes, and its rank on its own node (which GPU it drives)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the shared outputs (rank 0)."""
        return self.rank == 0


SINGLE = World()


def detect_world() -> World:
    """The launcher's view of this process: torchrun's variables, an srun step's, else one process."""
    env = os.environ
    if "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_STEP_NUM_TASKS" in env:  # set by srun for each task, not in a batch script's own shell
        names = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")
    else:
        return SINGLE
    try:
        rank, size, local = (int(env.get(name, 0)) for name in names)
    except ValueError:
        raise InputError(f"launcher variables {', '.join(f'{n}={env.get(n)!r}' for n in names)} are not "
                         "integers; launch with torchrun or srun") from None
    if not 0 <= rank < size:
        raise InputError(f"{names[0]}={rank} is not below {names[1]}={size}; launch with torchrun or srun")
    return World(rank, size, local)


def current_world() -> World:
    """This process in the joined process group, or one process when none was joined."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), detect_world().local_rank)


def rank_device(device: torch.device) -> torch.device:
    """A bare 'cuda' means this process's GPU on its node (its local rank; ranks share GPUs when they outnumber
    them); other devices as given."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", detect_world().local_rank % max(torch.cuda.device_count(), 1))
    return device


@contextmanager
def process_group(device: torch.device, data_parallel: bool = True) -> Iterator[World]:
    """Join the launcher's process group for the block and leave it after: nccl when ranks average gradients on
    GPUs (`data_parallel` on CUDA), gloo otherwise (CPU, or ranks that only exchange small messages, and may then
    share a GPU). One process, or a group already joined by an enclosing block, joins nothing."""
    import torch
    import torch.distributed as dist

    world = detect_world()
    if world.size == 1 or dist.is_initialized():
        yield current_world()
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise InputError(f"{world.size} processes were launched but MASTER_ADDR/MASTER_PORT are not set; launch "
                         "with torchrun (or srun torchrun), or export them (first node's host name, a free port)")
    backend = "nccl" if device.type == "cuda" and data_parallel else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank_device(device))
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


def wait(team: World) -> None:
    """Wait until every rank of the team gets here (nothing to wait for alone)."""
    if team.size > 1:
        import torch.distributed as dist

        dist.barrier()


def gather(team: World, value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank of the team."""
    if team.size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * team.size
    dist.all_gather_object(values, value)
    return values


def main_writes(team: World, write: Callable[[], T]) -> T | None:
    """Run `write` on the team's first rank only, then let every rank go on once it is done."""
    result = write() if team.main else None
    wait(team)
    return result


def replicate(team: World, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel for a team of several ranks (gradients averaged over them);
    the model itself alone."""
    if team.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def share_buffers(team: World, model: torch.nn.Module) -> None:
    """Give every rank the first rank's buffers (BatchNorm running statistics, which each rank updates from its
    own batches), so that all ranks evaluate, and rank 0 saves, one and the same model."""
    if team.size > 1:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class _Silent:
    """Stands in for a SummaryWriter on ranks that do not write: every call does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def summary_writer(team: World, log_dir: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard writer (a context manager, see `cmamil.training.tblog.event_writer`) on the team's first rank;
    a writer that writes nothing on the others."""
    if not team.main:
        return _Silent()
    from cmamil.training.tblog import event_writer

    return event_writer(log_dir, purge_step)
