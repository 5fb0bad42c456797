"""Evaluation along an ablation run: EMA samples every --eval-every steps, scored against real clips.

FVD (I3D) and frame FID (Inception-v3) reuse the `latte eval` machinery (latte.metrics.evaluate):
the same detectors, the same real-statistics cache (computed once per data config and clip count,
then read from disk by every other run of the study). Real and generated sides have the same clip
count, since Fréchet distances from few clips are biased upwards by an amount that depends on it.
On Moving MNIST with class labels the digit-classifier and motion readings of latte.metrics.mnist
are taken as well. A metric that cannot be computed for this run is recorded with the reason.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latte.data import build_dataset
from latte.errors import LatteError
from latte.inference import VideoGenerator
from latte.metrics.clips import ClipProtocol, ClipSet, tree_fingerprint
from latte.metrics.evaluate import EvalOptions, build_detectors, exact_float32, real_statistics, stats_cache_dir
from latte.metrics.mnist import READER_STEPS, cached_classifier, digit_readings, motion, real_motion
from latte.metrics.stats import RunningStats, frechet_distance
from latte.metrics.videos import to_uint8

# I3D halves time three times (stride-2 conv and pools, TF "SAME") and ends in a 2-frame average pool:
# ceil(ceil(ceil(F/2)/2)/2) >= 2 needs F >= 9 frames.
I3D_MIN_FRAMES = 9
METRICS = ("fvd", "fid", "mnist")
EVAL_SEED = 1234  # sampling noise of evaluation clips: the same for every option and step


@dataclass
class EvalSettings:
    clips: int = 64
    metrics: tuple[str, ...] = METRICS
    sampler_steps: int | None = None  # None: the config's sample.steps
    batch_size: int = 16
    classifier_steps: int = READER_STEPS
    cache_dir: str | None = None

    def signature(self) -> dict:
        """What makes two runs' evaluations comparable (stored with each finished run)."""
        data = dataclasses.asdict(self)
        data.pop("cache_dir")
        data["metrics"] = list(self.metrics)
        return data


class TrainingClips(ClipSet):
    """The run's training data as uint8 clips (T, R, R, 3): video frames only, first crop, no flip."""

    def __init__(self, data, protocol: ClipProtocol):
        own = data.mnist_kwargs() if data.is_moving_mnist else {}
        self.data, self.protocol = data, protocol
        self.dataset = build_dataset(data.dataset, data.root, num_frames=data.num_frames,
                                     frame_interval=data.frame_interval, resolution=data.resolution, flip=False,
                                     train=False, **own)
        order = np.random.default_rng(protocol.seed).permutation(len(self.dataset))
        self.indices = [int(order[i]) for i in range(min(protocol.num_clips, len(order)))]
        self.source = f"{data.dataset}:{data.root}" if data.root else data.dataset
        self.available = len(self.dataset)

    def fingerprint(self) -> dict:
        d = self.data
        own = d.mnist_kwargs() if d.is_moving_mnist else {}
        return {"kind": "latte-training-data", "dataset": d.dataset, "num_frames": d.num_frames,
                "frame_interval": d.frame_interval, "resolution": d.resolution, **own,
                "root": tree_fingerprint(Path(d.root)) if d.root else None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        video = self.dataset[self.indices[index]]["video"]  # (C, F, H, W) in [-1, 1]
        return to_uint8(video[None])[0]  # (F, H, W, 3)


class Evaluator:
    """Scores the EMA model of a Trainer; `evaluator(trainer)` -> {"step", "metrics", "unavailable", "seconds"}."""

    def __init__(self, trainer, settings: EvalSettings):
        config = trainer.config
        self.settings, self.device = settings, trainer.device
        self.data = data = config.data
        self.frames = data.num_frames
        self.protocol = ClipProtocol(frames=self.frames, stride=1, resolution=data.resolution,
                                     num_clips=max(settings.clips, 1), seed=0)
        self.unavailable: dict[str, str] = {}
        self.frechet = [m for m in ("fvd", "fid") if m in settings.metrics]
        for metric in self.frechet:
            reason = None
            if data.cache:
                reason = "the run trains on a latent cache: there are no real pixel clips to compare with"
            elif settings.clips < 2:
                reason = f"Fréchet distances need at least 2 clips per side, --eval-clips is {settings.clips}"
            elif metric == "fvd" and self.frames < I3D_MIN_FRAMES:
                reason = f"I3D needs clips of at least {I3D_MIN_FRAMES} frames, this run's have {self.frames}"
            if reason:
                self.unavailable[metric] = reason
        if "mnist" in settings.metrics:
            if not data.is_moving_mnist or trainer.text_encoder is not None or not trainer.num_classes:
                self.unavailable["mnist"] = "digit readings need a class-conditional Moving MNIST run"
        self._detectors = None
        self._real = None
        self._classifier = None
        self._real_motion = None

    # -- Fréchet metrics ------------------------------------------------------------------------
    def _frechet_setup(self) -> tuple[dict, dict]:
        """Detectors and real statistics of the Fréchet metrics still available (loaded once per run)."""
        if self._detectors is None:
            wanted = tuple(m for m in self.frechet if m not in self.unavailable)
            options = EvalOptions(fake="(generated during training)", real=None, metrics=wanted,
                                  protocol=self.protocol, batch_size=self.settings.batch_size,
                                  device=self.device.type, cache_dir=self.settings.cache_dir)
            try:
                self._detectors, _ = build_detectors(options, self.device)
                real = TrainingClips(self.data, self.protocol)
                with exact_float32(self.device):
                    self._real, _, _ = real_statistics(options, real, self._detectors)
            except LatteError as exc:  # missing detector weights or real data: the reason goes in the report
                for metric in wanted:
                    self.unavailable[metric] = str(exc)
                self._detectors, self._real = {}, {}
        return self._detectors, self._real

    def _frechet(self, fake: torch.Tensor, results: dict) -> None:
        detectors, real = self._frechet_setup()
        running = {m: RunningStats(d.dim) for m, d in detectors.items()}
        with exact_float32(self.device):
            for chunk in fake.split(self.settings.batch_size):
                for metric, detector in detectors.items():
                    running[metric].update(detector(chunk))
        for metric, stats in running.items():
            ours = stats.gaussian()
            results[metric] = frechet_distance(real[metric].mean, real[metric].cov, ours.mean, ours.cov)

    # -- Moving MNIST readings --------------------------------------------------------------------
    def _mnist(self, videos: torch.Tensor, labels: torch.Tensor, config, results: dict) -> None:
        if self._classifier is None:
            cache = stats_cache_dir(self.settings.cache_dir)
            self._classifier = cached_classifier(config.data.resolution, self.frames,
                                                 self.settings.classifier_steps, cache)
            self._real_motion = real_motion(self.frames, config.data.resolution, max(len(videos), 2),
                                            **config.data.mnist_kwargs())
        net, real_accuracy = self._classifier
        accuracy, agreement = digit_readings(net, videos[:, :1], labels)
        step, jitter = motion(videos[:, :1])
        results.update(digit_accuracy=accuracy, clip_agreement=agreement, step_px=step, jitter_px=jitter,
                       classifier_real_accuracy=real_accuracy, real_step_px=self._real_motion[0],
                       real_jitter_px=self._real_motion[1])

    # -- one evaluation ---------------------------------------------------------------------------
    def __call__(self, trainer) -> dict:
        start = time.perf_counter()
        config = trainer.config
        results: dict = {}
        wanted = [m for m in self.settings.metrics if m not in self.unavailable]
        if wanted and self.settings.clips >= 1:
            prompts = None
            if trainer.text_encoder is not None:
                count = min(self.settings.clips, len(trainer.dataset))
                prompts = [trainer.dataset[i]["caption"] for i in range(count)]
            generator = VideoGenerator(model=trainer.ema, diffusion=trainer.diffusion, config=config, vae=trainer.vae,
                                       device=trainer.device, text_encoder=trainer.text_encoder)
            request = generator.request(num_videos=self.settings.clips, steps=self.settings.sampler_steps,
                                        seed=EVAL_SEED, batch_size=min(self.settings.clips, self.settings.batch_size),
                                        prompts=prompts)  # the run's sampler, its steps unless --eval-steps, its cfg
            videos, labels = generator.generate(request, progress=False)
            if any(m in wanted for m in ("fvd", "fid")):
                self._frechet(to_uint8(videos), results)  # (N, F, H, W, 3)
            if "mnist" in wanted and "mnist" not in self.unavailable:
                self._mnist(videos, labels, config, results)
        return {"step": trainer.step, "metrics": results, "unavailable": dict(self.unavailable),
                "seconds": time.perf_counter() - start}
