"""One process or many (torchrun): rank info, process group set-up, the resumable index order.

The order of clips is a pure function of (seed, position), and every rank draws the same global
batch of noise and timesteps and takes its own rows, so a run gives the same result on one
process or under torchrun with the same global batch, and a resumed run continues exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Dist:
    """Join the torchrun process group when launched under torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def teardown(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: torch.Tensor, info: Dist) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world
    return value


class ResumableOrder(torch.utils.data.Sampler):
    """Keys (clip index, position in the run) this rank reads, step after step from `start_step`: the
    global stream is a chain of seeded permutations; each step takes `global_batch` of it, split into
    accumulation micro-steps and, inside each, into equal per-rank slices. The datasets seed every random
    choice of an item (temporal crop, flip, image frames, latent noise) by (seed, index, position), so
    the data depend neither on resuming nor on the number of loader workers."""

    def __init__(self, length: int, global_batch: int, accum: int, info: Dist, seed: int, start_step: int,
                 keyed: bool = True):
        self.keyed = keyed  # False: plain indices, for datasets without keyed access (`accepts_keys`)
        self.length, self.global_batch, self.accum = length, global_batch, accum
        self.info, self.seed, self.start_step = info, seed, start_step
        self.micro = global_batch // (accum * info.world)

    def _global(self, position: int, count: int) -> list[tuple[int, int]]:
        out = []
        while count > 0:
            epoch, offset = divmod(position, self.length)
            perm = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            take = perm[offset:offset + count].tolist()
            out += [(index, position + k) if self.keyed else index for k, index in enumerate(take)]
            position += len(take)
            count -= len(take)
        return out

    def __iter__(self):
        step = self.start_step
        while True:
            batch = self._global(step * self.global_batch, self.global_batch)
            for a in range(self.accum):
                start = (a * self.info.world + self.info.rank) * self.micro
                yield from batch[start:start + self.micro]
            step += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs a number
        return 2**62


def rows(micro_step: int, micro: int, info: Dist) -> slice:
    """Rows of the global batch that this rank uses in accumulation micro-step `micro_step`."""
    start = (micro_step * info.world + info.rank) * micro
    return slice(start, start + micro)
