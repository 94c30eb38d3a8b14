"""Data-parallel training over several processes with ``torch.distributed``.

Launched by ``torchrun`` (which sets RANK, WORLD_SIZE and LOCAL_RANK), every process trains on
its shard of each global batch and the gradients are averaged with one all-reduce of a flat
buffer before every optimiser step (nccl on CUDA, gloo on CPU). This is what
``DistributedDataParallel`` does, written out because EnergyFlow's loss differentiates the
energy with ``torch.autograd.grad(create_graph=True)``, which DDP's gradient hooks do not
support. Parameters start identical (same seed, then broadcast from rank 0) and receive
identical averaged gradients, so every rank holds the same weights after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import datetime
import os
from typing import Any, Iterable

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from energyflow_ros.core.config import ConfigError

__all__ = ['DistContext', 'resolve_device', 'init_distributed', 'broadcast_module',
           'all_reduce_gradients', 'all_gather_objects', 'gather_rng_state',
           'restore_rng_state', 'barrier', 'shutdown']

DEVICES = ('auto', 'cpu', 'cuda')


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes checkpoints, metrics and the progress bar).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when gradients are averaged across processes."""
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """Turn ``'auto'``, ``'cpu'`` or ``'cuda'`` into a device for this process.

    Raises:
        ConfigError: an unknown preference, or ``'cuda'`` without a usable GPU.
    """
    if preference not in DEVICES:
        raise ConfigError(f'TrainConfig.device = {preference!r} is invalid: expected one of '
                          f'{list(DEVICES)}')
    if preference == 'auto':
        preference = 'cuda' if torch.cuda.is_available() else 'cpu'
    if preference == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError("TrainConfig.device = 'cuda' but torch sees no CUDA device; use "
                              "'cpu' or 'auto'")
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return torch.device('cpu')


def init_distributed(preference: str) -> DistContext:
    """Join the process group torchrun described in the environment (or run alone).

    Args:
        preference: the train config's device field.
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        # Rank 0 evaluates alone while the others wait in the next collective: allow long
        # evaluations before the process group times out.
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                                timeout=datetime.timedelta(hours=2))
    return DistContext(rank, world, local_rank, device)


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def all_reduce_gradients(parameters: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Replace every parameter's gradient by its mean over ranks (one flat all-reduce).

    A parameter without a gradient contributes zeros, so all ranks stay consistent.
    """
    if not ctx.distributed:
        return
    params = [p for p in parameters if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when running alone)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_rng_state(ctx: DistContext, generator: torch.Generator) -> dict[str, Any]:
    """Global torch/CUDA/numpy RNG states and every rank's ``generator`` state (collective).

    Returns:
        ``torch``, ``cuda`` (this process's GPU; None off GPU), ``numpy`` and ``generators``
        (one per rank).
    """
    # this process's device only: a state per visible GPU could not be restored on a machine
    # with fewer (torch raises IndexError), and the other GPUs are not this process's
    cuda = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == 'cuda' else None
    return {'torch': torch.get_rng_state(), 'cuda': cuda, 'numpy': np.random.get_state(),
            'generators': all_gather_objects(generator.get_state(), ctx),
            'device': ctx.device.type}


def restore_rng_state(state: dict[str, Any], ctx: DistContext,
                      generator: torch.Generator, reseed: int) -> bool:
    """Inverse of :func:`gather_rng_state` for a job with the same number of ranks.

    A generator state saved on another device type (a CUDA run resumed on a CPU machine, or
    the reverse) cannot be loaded: the generator is then seeded with ``reseed`` instead.

    Returns:
        Whether every state was restored (False: the run continues, but not bit-identically
        to an uninterrupted one).
    """
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    cuda = state.get('cuda')
    if isinstance(cuda, (list, tuple)):     # earlier checkpoints: one state per visible GPU
        index = ctx.device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and ctx.device.type == 'cuda':
        torch.cuda.set_rng_state(cuda, ctx.device)
    if state.get('device', ctx.device.type) == ctx.device.type:
        try:
            generator.set_state(state['generators'][ctx.rank])
            return True
        except RuntimeError:  # a checkpoint from before 'device' was recorded
            pass
    generator.manual_seed(reseed)
    return False
