"""Multi-process training with torchrun: DistributedDataParallel on gloo (CPU) or NCCL (GPU).

    torchrun --standalone --nproc_per_node 2 -m pqmim.train --out runs/x ...

A process started alone (no WORLD_SIZE in the environment) is rank 0 of 1, and every helper here
is then a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DDP around `module` (gradients averaged over ranks), or the module itself when alone.
        Buffers are not broadcast: the product quantizer keeps its own in sync (all-reduce)."""
        if self.world == 1:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; pick this rank's device."""
    device = torch.device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def teardown(ctx: Dist) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (after a step that drew random numbers, e.g. k-means)."""
    if active():
        for b in module.buffers():
            dist.broadcast(b, 0)


def index_stream(n: int, ctx: Dist, seed: int, start: int = 0) -> Iterator[int]:
    """This rank's share of an endless sequence of shuffled epochs over n items, skipping the
    first `start` (so a resumed run continues where it stopped). DistributedSampler shards it:
    the ranks see disjoint items within an epoch, and a new order every epoch."""
    sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed)
    epoch, pos = divmod(start, len(sampler))
    while True:
        sampler.set_epoch(epoch)
        yield from list(sampler)[pos:]
        epoch, pos = epoch + 1, 0
