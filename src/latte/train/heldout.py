"""Held-out loss (`train.eval_every`): the objective's training loss of the EMA model on clips the run
never trains on, at a fixed grid of times and with fixed noise.

At small budgets sample readings sit at chance and FVD needs hundreds of videos; this loss is cheap
and has little variance, because nothing in it is random from one evaluation to the next: the clips
(Moving MNIST's test split, whose digits training never sees, or a slice of a folder that training
then skips), the times (`Objective.held_out_times`: the midpoints of BUCKETS equal buckets of the
objective's time range) and the noise (drawn once from its own generator, seeded by SEED) are the same
at every evaluation and in every run of one data config, whatever train.seed. It draws from no random
stream that training uses, so on Moving MNIST a run trains the same weights with it on or off (a
folder run trains without its held-out slice).

It is comparable between runs of one objective and prediction target only: an epsilon MSE, an x0 MSE
and a flow velocity MSE measure different things at differently defined times (docs/evaluation.md).
"""
from __future__ import annotations

import copy
import dataclasses
import time

import torch

from latte.config import Config
from latte.data import build_dataset
from latte.errors import LatteError

BUCKETS = 10  # times per evaluation (fewer where the objective's range has fewer)
SEED = 20_240_229  # held-out clips and noise: the same in every run, whatever train.seed


def split_off(config: Config, dataset) -> tuple[object | None, int]:
    """(held-out clips or None, how many clips they take from the training data). Moving MNIST: its test
    split (disjoint digits; training loses nothing). A folder: train.eval_clips clips spread evenly over
    its clip list, removed from `dataset` in place, so training never reads them (not as image frames of
    joint training either). Off (eval_every 0): (None, 0), the data untouched."""
    t, d = config.train, config.data
    if not t.eval_every:
        return None, 0
    if d.is_moving_mnist:
        held = build_dataset(d.dataset, None, num_frames=d.num_frames, frame_interval=d.frame_interval,
                             resolution=d.resolution, images_per_clip=0, seed=SEED, train=False,
                             split="test", length=t.eval_clips, **d.mnist_kwargs())
        return held, 0
    clips = getattr(dataset, "clips", None)
    if clips is None:  # a latent cache: refused by the config checks (latte.train.checks.check_held_out)
        raise LatteError(f"train.eval_every: dataset {d.dataset} has no clip list to hold a slice out of")
    count = len(clips)
    if 2 * t.eval_clips > count:
        raise LatteError(f"train.eval_clips {t.eval_clips} would hold out more than half of the {count} clips "
                         f"of {d.root}: lower it, or set train.eval_every=0")
    chosen = sorted({int((k + 0.5) * count / t.eval_clips) for k in range(t.eval_clips)})  # spread over classes
    held = copy.copy(dataset)
    held.clips = [clips[i] for i in chosen]
    held.options = dataclasses.replace(dataset.options, train=False, images_per_clip=0)  # first crop, no flip
    held.broken, held.skipped = set(), []
    taken = set(chosen)
    dataset.clips = [c for i, c in enumerate(clips) if i not in taken]
    return held, len(chosen)


class HeldOut:
    """The fixed evaluation of one trainer: `held_out(model)` -> record fields (floats, host-side)."""

    def __init__(self, trainer, dataset):
        self.trainer = trainer
        objective = trainer.diffusion
        self.times = objective.held_out_times(BUCKETS).to(trainer.device)  # (n,)
        self.keys = [f"{float(t):g}" for t in self.times.cpu()]
        self.batches = []  # (x0 (b, C, F, H, W) on the device, model kwargs)
        size = trainer.micro
        with torch.no_grad():
            for start in range(0, len(dataset), size):
                batch = trainer._collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
                x0 = batch["video"].to(trainer.device)
                if trainer.vae is not None and trainer.encode_batches:
                    x0 = trainer.vae.encode(x0, sample=False)  # the posterior's mean: no random draw
                labels = batch.get("label")
                labels = None if labels is None else labels.to(trainer.device)
                shape = trainer._condition_shape(batch, labels)
                keep = None if shape is None else torch.zeros(shape, dtype=torch.bool, device=trainer.device)
                self.batches.append((x0, trainer._model_kwargs(batch, labels, 0, keep)))
        clip_shape = self.batches[0][0].shape[1:]  # (C, F, H, W)
        generator = torch.Generator().manual_seed(SEED)  # on the host: the same noise on any device
        self.noise = torch.randn((len(dataset), len(self.times), *clip_shape),
                                 generator=generator)  # (N, n, C, F, H, W)
        self.count = len(dataset)

    @torch.no_grad()
    def __call__(self, model) -> dict:
        """Per bucket: the mean over the held-out clips of the objective's `loss` and `mse`; the totals are
        their means over the buckets (the uniform-time loss by the midpoint rule)."""
        trainer, started = self.trainer, time.perf_counter()
        sums = {name: torch.zeros(len(self.times), device=trainer.device) for name in ("loss", "mse")}  # (n,)
        row = 0
        for x0, kwargs in self.batches:
            b, frames = x0.shape[0], x0.shape[2]
            noise = self.noise[row:row + b].to(trainer.device)  # (b, n, C, F, H, W)
            for k, t in enumerate(self.times):
                with trainer.autocast:
                    losses = trainer.diffusion.training_losses(model, x0, t.expand(b, frames), model_kwargs=kwargs,
                                                               noise=noise[:, k])
                for name in sums:
                    sums[name][k] += losses[name].float().sum()
            row += b
        by_t = {name: (value / self.count).tolist() for name, value in sums.items()}  # one host sync
        record = {}
        for name, values in by_t.items():
            record[f"heldout_{name}"] = sum(values) / len(values)
            record[f"heldout_{name}_by_t"] = dict(zip(self.keys, values))
        record["heldout_seconds"] = time.perf_counter() - started
        return record
