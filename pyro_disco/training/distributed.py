r"""Data-parallel training on ``torch.distributed``: the pieces :func:`~pyro_disco.training.train`
uses when a process group is initialised (``torchrun``; gloo on CPU, NCCL on GPUs).

The global batch of a step is ``B = tokens_per_step // n`` sets, rounded up to a multiple of the
world size ``N``; rank ``r`` draws sets ``r·B/N … (r+1)·B/N − 1``. With
``data_seeding="per-set"`` set ``i`` of a step comes from its own generator, seeded by
``base + i`` where ``base`` is drawn from the run's shared stream (the same on every rank), so
the union of the ranks' sets is exactly the batch one process draws. Every set has the same
``n`` and number of queries, so the mean of the ranks' losses is the one-process loss, and
DistributedDataParallel's gradient average is its gradient:

.. math:: \nabla \frac1N \sum_{r=1}^N L_r = \nabla L_{\text{1 process}, N B/N\ \text{sets}}

up to round-off. Clipping and AdamW then see the same gradient on every rank.

Example (one machine, 2 processes)::

    torchrun --standalone --nproc_per_node=2 --no-python pyro-disco train --dim 2 --out runs/d2
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pyro_disco.training.tasks import MixtureTask, sample_task

__all__ = [
    "world",
    "init_from_env",
    "local_device",
    "rank_sets",
    "sample_sets",
    "draw_base_seed",
    "any_rank",
    "mean_over_ranks",
    "TaskLoss",
]

_SEED_RANGE = 2**62  # base seeds; base + i stays below 2**63 for any batch


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment):
    NCCL for ``device="cuda"``, gloo otherwise. Returns whether a group is (now) initialised."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def local_device(device: str) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process); other devices are kept."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(local)  # NCCL's collectives and current_device() follow it
        return local
    return torch.device(device)


def rank_sets(batch: int, rank: int, world_size: int) -> range:
    """The indices of this rank's sets in a global batch of ``batch`` sets (rounded up to a
    multiple of ``world_size``, so every rank gets as many)."""
    per_rank = -(-batch // world_size)
    return range(rank * per_rank, (rank + 1) * per_rank)


def sample_sets(
    base_seed: int, sets: range, dim: int, num_samples: int, num_queries: int, **task_kwargs: Any
) -> MixtureTask:
    """Sets ``sets`` of a batch, set ``i`` drawn by :func:`sample_task` from a generator seeded
    ``base_seed + i``: any split of a batch across ranks draws the same sets."""
    tasks = [
        sample_task(
            1,
            dim,
            num_samples,
            num_queries,
            generator=torch.Generator().manual_seed(base_seed + i),
            **task_kwargs,
        )
        for i in sets
    ]
    return MixtureTask(*(torch.cat(parts) for parts in zip(*tasks)))


def draw_base_seed(generator: torch.Generator) -> int:
    """The per-step base seed, from the run's shared stream."""
    return int(torch.randint(_SEED_RANGE, (), generator=generator))


def _collective_device() -> torch.device:
    """Where small collectives' tensors live: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (a signal, a non-finite loss): all ranks then take
    the same branch and no collective is left waiting. Without a group: ``flag``."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: list[float]) -> list[float]:
    """The ranks' mean of a few floats (the logged loss terms). Without a group: ``values``."""
    n = world()[1]
    if n == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return (t / n).tolist()


class TaskLoss(nn.Module):
    """``forward(task) -> (loss, parts)``: ``loss_fn(model, task, **loss_kwargs)`` (the training
    loss, :func:`~pyro_disco.training.train.task_loss`) as one module call, so
    DistributedDataParallel sees the whole step: the network's ``encode`` and ``query`` are
    methods, not its ``forward``."""

    def __init__(
        self, model: nn.Module, loss_fn: Callable[..., tuple[Tensor, dict]], **loss_kwargs: Any
    ) -> None:
        super().__init__()
        self.model, self.loss_fn, self.loss_kwargs = model, loss_fn, loss_kwargs

    def forward(self, task: MixtureTask) -> tuple[Tensor, dict]:
        return self.loss_fn(self.model, task, **self.loss_kwargs)
