"""Solver error, sample quality and cost of every sampler and step count on one trained model.

    python benchmarks/sampling_quality.py --checkpoint RUN [--videos 20] [--rows ddim:50,dpm-solver:20]
        [--reference ddim:500] [--fvd-fid] [--digits] [--output table.json]

Every row samples the same videos (same seeds, same labels or prompts, same guidance) and reports
- PSNR / SSIM of its frames (in [0, 1]) against the reference solution of the same model (default
  DDIM with 500 steps: the finest grid of the first-order solver the other rows approximate; the
  `ddim:250` row against it bounds the reference's own error, which halves with each doubling);
- with --fvd-fid: FVD (I3D) and frame FID (Inception-v3) against real clips, with latte's detectors
  and its real-statistics cache (clips shorter than I3D's 9-frame minimum have each frame repeated
  the same way for real and generated clips); on Moving MNIST the real clips come from the dataset.
  A first row `real` scores as many other real clips as there are videos: the floor that the
  sample count alone puts under FVD and FID. --fid-frames K takes FID on K evenly spaced frames
  per clip (Inception is the costliest detector on a CPU);
- with --digits (class-conditional Moving MNIST): the share of frames that a small digit classifier,
  trained here on real frames, reads as the asked digit (benchmarks/moving_mnist_quality.py);
- wall time and network evaluations (NFE: model calls, each one batched pass over the conditional
  and unconditional halves when guided);
- for a row with cache=pab: PSNR against the same row without the cache (listed earlier in --rows).
With --bootstrap N (and --fvd-fid) the last lines give each row's FVD ratio to --baseline (default:
the first row) with a 90% interval over N paired resamples of the videos: how much of a difference
between two rows the sample count alone could make.
A row is SAMPLER:STEPS with optional :KEY=VALUE fields: grid=diffusers (the scheduler's own
timesteps), cache=pab, cache_options=... (kinds separated by ';'), precision=bf16, or any diffusers scheduler setting
(e.g. dpm-solver:20:use_karras_sigmas=true). The reference row takes the same form.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from latte.commands.sample import load_for_sampling, text_encoder_for
from latte.diffusion.samplers import parse_option_value
from latte.host_memory import keep_freed_memory
from latte.sampling import SampleRequest, generate

DEFAULT_ROWS = ("ddpm:250,ddim:25,ddim:50,ddim:100,dpm-solver:10,dpm-solver:15,dpm-solver:20,dpm-solver:25,"
                "unipc:10,unipc:15,unipc:20,deis:10,deis:15,deis:20")
REQUEST_KEYS = ("grid", "cache", "cache_options", "precision")


def parse_row(spec: str) -> dict:
    """'dpm-solver:20:grid=diffusers' -> {'sampler', 'steps', request fields, 'scheduler_options'}."""
    sampler, steps, *fields = spec.split(":")
    row = {"name": spec, "sampler": sampler, "steps": int(steps), "scheduler_options": {}}
    for field in fields:
        key, _, value = field.partition("=")
        if key in REQUEST_KEYS:
            row[key] = value.replace(";", ",")  # cache_options: ';' between kinds (',' separates rows)
        else:
            row["scheduler_options"][key] = parse_option_value(value)
    return row


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over videos of the PSNR (dB) of frames in [0, 1]; a, b (N, C, F, H, W) in [-1, 1]."""
    mse = (((a - b) / 2) ** 2).flatten(1).mean(1).clamp(min=1e-12)
    return (10 * torch.log10(1 / mse)).mean().item()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of frames in [0, 1]."""
    x = ((a + 1) / 2).transpose(1, 2).flatten(0, 2)[:, None]  # (N*F*C, 1, H, W)
    y = ((b + 1) / 2).transpose(1, 2).flatten(0, 2)[:, None]
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5**2))
    window = (g[:, None] * g[None]).float()
    window = (window / window.sum())[None, None]

    def blur(t):
        return F.conv2d(t, window)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean().item()


def draw(model, diffusion, vae, text_encoder, base: SampleRequest, row: dict, device) -> tuple[torch.Tensor, float, float]:
    """Videos of one row, wall seconds and this process's CPU seconds (the figure to compare on a shared CPU)."""
    request = SampleRequest(**{**base.__dict__, "sampler": row["sampler"], "steps": row["steps"],
                               "scheduler_options": row["scheduler_options"] or None,
                               **{k: row[k] for k in REQUEST_KEYS if k in row}})
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    videos, _ = generate(model, diffusion, request, vae=vae, device=device, progress=False, text_encoder=text_encoder)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return videos, time.perf_counter() - start, time.process_time() - cpu_start


class FrechetScorer:
    """FVD and frame FID of generated videos against real clips, with latte.metrics' detectors and cache."""

    def __init__(self, real: str, frames: int, resolution: int, num_real: int, device: torch.device,
                 fid_frames: int | None = None):
        from latte.metrics.clips import ClipProtocol, open_real
        from latte.metrics.evaluate import EvalOptions, build_detectors

        self.repeat = math.ceil(16 / frames) if frames < 9 else 1  # I3D needs >= 9 frames
        count = min(fid_frames or frames, frames)
        self.fid_index = torch.linspace(0, frames - 1, count).round().long()  # frames FID sees
        self.spec = real
        self.protocol = ClipProtocol(frames=frames, stride=1, resolution=resolution, num_clips=num_real, seed=0)
        self.detectors, _ = build_detectors(EvalOptions(fake="", real=real, metrics=("fvd", "fid"),
                                                        protocol=self.protocol, device=str(device)), device)
        self.real_clips = open_real(real, self.protocol)
        self.real = self._real_stats()

    def _features(self, clips: torch.Tensor, metric: str):
        if metric == "fvd":
            clips = clips.repeat_interleave(self.repeat, dim=1)  # (N, F*repeat, H, W, 3)
        else:
            clips = clips[:, self.fid_index]  # (N, K, H, W, 3)
        return self.detectors[metric](clips)

    def _real_stats(self) -> dict:
        from latte.metrics.evaluate import cache_key, load_cached_stats, save_cached_stats, stats_cache_dir

        stats = {}
        for metric in ("fvd", "fid"):
            key = cache_key(self.real_clips, self.protocol, self.detectors[metric])
            frames = "" if metric == "fvd" else f"-frames{self.fid_index.tolist()}"
            tag = hashlib.sha256(f"{key}-repeat{self.repeat}{frames}".encode()).hexdigest()[:32]
            path = stats_cache_dir() / f"{metric}-{tag}.npz"
            cached = load_cached_stats(path)
            if cached is None:
                cached = self._gaussian(self.real_clips, metric)
                save_cached_stats(path, cached)
            stats[metric] = cached
        return stats

    def other_real(self, count: int) -> tuple[dict[str, float], np.ndarray]:
        """FVD and FID of `count` other real clips (another draw seed): the floor at this sample count."""
        from dataclasses import replace

        from latte.metrics.clips import open_real

        return self.score(open_real(self.spec, replace(self.protocol, num_clips=count, seed=self.protocol.seed + 1)))

    def __call__(self, videos: torch.Tensor) -> tuple[dict[str, float], np.ndarray]:
        from latte.metrics.clips import resize_center_crop
        from latte.metrics.videos import to_uint8

        return self.score(torch.stack([resize_center_crop(c, self.protocol.resolution) for c in to_uint8(videos)]))

    def _batches(self, clips, metric: str):
        """Detector features of clips (a uint8 (N, F, R, R, 3) tensor or a ClipSet), 8 clips at a time
        (detector batches bound the memory)."""
        for start in range(0, len(clips), 8):
            yield np.asarray(self._features(torch.stack([clips[i] for i in range(start, min(start + 8, len(clips)))]),
                                            metric), dtype=np.float64)

    def _gaussian(self, clips, metric: str):
        """Feature mean and covariance of clips, accumulated batch by batch."""
        from latte.metrics.stats import RunningStats

        running = RunningStats(self.detectors[metric].dim)
        for features in self._batches(clips, metric):
            running.update(features)
        return running.gaussian()

    def score(self, clips) -> tuple[dict[str, float], np.ndarray]:
        """FVD and FID of clips (uint8 (N, F, R, R, 3), or a ClipSet of such clips), and their FVD features
        (N, dim), kept for the bootstrap (FID's per-frame features are not kept)."""
        from latte.metrics.stats import frechet_distance

        fvd_features = np.concatenate(list(self._batches(clips, "fvd")))
        fid = self._gaussian(clips, "fid")
        real = self.real
        return {"fvd": frechet_distance(real["fvd"].mean, real["fvd"].cov, fvd_features.mean(0),
                                        np.cov(fvd_features, rowvar=False)),
                "fid": frechet_distance(real["fid"].mean, real["fid"].cov, fid.mean, fid.cov)}, fvd_features

    def fvd_ratio_intervals(self, rows: dict[str, np.ndarray], baseline: np.ndarray, resamples: int,
                            seed: int = 0) -> dict[str, tuple[float, float]]:
        """Per row, the 5th and 95th percentile of FVD(row) / FVD(baseline) over paired bootstrap resamples
        of the videos: the same video indices for every row and the baseline (they share seeds and
        labels), the real statistics fixed. The spread that the sample count alone leaves in the ratio.
        The resamples and the baseline's distances are computed once for all rows."""
        from latte.metrics.stats import FrechetToRows

        fvd = FrechetToRows(self.real["fvd"].mean, self.real["fvd"].cov)
        rng = np.random.default_rng(seed)
        picks = [rng.integers(0, len(baseline), len(baseline)) for _ in range(resamples)]
        base = np.array([fvd(baseline[pick]) for pick in picks])
        intervals = {}
        for name, features in rows.items():
            low, high = np.percentile(np.array([fvd(features[pick]) for pick in picks]) / base, [5, 95])
            intervals[name] = (float(low), float(high))
        return intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--videos", type=int, default=20, help="videos per row (labels cycle through the classes)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="videos per model batch (default: all in one)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated SAMPLER:STEPS[:KEY=VALUE...] rows")
    parser.add_argument("--reference", default="ddim:500")
    parser.add_argument("--cfg-scale", type=float, default=None, help="default: the run's sample.cfg_scale")
    parser.add_argument("--prompt", action="append", default=[], help="text models: prompts (videos cycle through them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fvd-fid", action="store_true", help="also FVD and frame FID against real clips")
    parser.add_argument("--real", default=None, help="real clips for FVD/FID (default: the run's dataset, for moving-mnist)")
    parser.add_argument("--real-clips", type=int, default=256)
    parser.add_argument("--fid-frames", type=int, default=None, help="FID on this many evenly spaced frames per clip")
    parser.add_argument("--digits", action="store_true", help="Moving MNIST: digit classifier accuracy per row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="with --fvd-fid: N paired resamples give each row's FVD ratio to --baseline a 90%% interval")
    parser.add_argument("--baseline", default=None, help="the row FVD ratios are taken to (default: the first of --rows)")
    args = parser.parse_args()
    if args.fid_frames is not None and args.fid_frames < 1:
        parser.error(f"--fid-frames must be >= 1, got {args.fid_frames}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    specs = [s for s in args.rows.split(",") if s] + [args.reference]
    args.baseline = args.baseline or specs[0]
    if args.bootstrap and (not args.fvd_fid or args.baseline not in specs):
        parser.error(f"--bootstrap needs --fvd-fid and a --baseline among the rows, got {args.baseline!r}")
    keep_freed_memory()  # the host-memory policy of the latte command (LATTE_SYSTEM_MALLOC=1: glibc's)

    device = torch.device(args.device)
    model, diffusion, config, vae = load_for_sampling(args.checkpoint)
    text_encoder = text_encoder_for(config, device) if args.prompt else None
    base = SampleRequest(num_videos=args.videos, batch_size=min(args.batch_size or args.videos, args.videos),
                         seed=args.seed, prompts=args.prompt or None,
                         cfg_scale=config.sample.cfg_scale if args.cfg_scale is None else args.cfg_scale)
    print(f"{args.videos} videos per row, guidance {base.cfg_scale}, device {device}, reference {args.reference}")
    draw(model, diffusion, vae, text_encoder, SampleRequest(**{**base.__dict__, "num_videos": 2, "batch_size": 2}),
         parse_row("ddim:2"), device)  # warm-up: the first row's time should not include first-call costs
    reference, ref_time, ref_cpu = draw(model, diffusion, vae, text_encoder, base, parse_row(args.reference), device)
    print(f"reference {args.reference}: {ref_time:.1f} s ({ref_cpu:.1f} s CPU)")
    scorer = classifier = None
    if args.fvd_fid:
        real = args.real or (f"{config.data.dataset}:." if config.data.dataset == "moving-mnist" else None)
        if real is None:
            parser.error("--fvd-fid needs --real for this run's dataset")
        scorer = FrechetScorer(real, reference.shape[2], reference.shape[-1], args.real_clips, device, args.fid_frames)
    if args.digits:
        from moving_mnist_quality import train_classifier

        classifier, ceiling = train_classifier(reference.shape[-1], reference.shape[2], 60.0)
        print(f"digit classifier: {ceiling:.1%} on held-out real frames")
    labels = torch.tensor([i % max(model.config.num_classes, 1) for i in range(args.videos)])

    results, drawn, features = [], {args.reference: reference}, {}
    header = f"{'row':<38} {'NFE':>4} {'time s':>7} {'cpu s':>7} {'PSNR dB':>8} {'SSIM':>6}"
    header += f" {'FVD':>7} {'FID':>7}" * bool(scorer) + f" {'digits':>6}" * bool(classifier) + "  vs uncached"
    print(header)
    if scorer:
        scores, _ = scorer.other_real(args.videos)
        floor = {"row": "real", **scores}
        results.append(floor)
        print(f"{'real (' + str(args.videos) + ' other real clips)':<38} {'':>4} {'':>7} {'':>7} {'':>8} {'':>6}"
              f" {floor['fvd']:>7.1f} {floor['fid']:>7.1f}", flush=True)
    for spec in specs:
        row = parse_row(spec)
        videos, seconds, cpu = (reference, ref_time, ref_cpu) if spec == args.reference else draw(
            model, diffusion, vae, text_encoder, base, row, device)
        result = {"row": spec, "nfe": row["steps"], "seconds": seconds, "cpu_seconds": cpu,
                  "psnr": psnr(videos, reference) if spec != args.reference else math.inf,
                  "ssim": ssim(videos, reference)}
        if scorer:
            scores, features[spec] = scorer(videos)
            result.update(scores)
        if classifier:
            frames = ((videos[:, :1] + 1) / 2).transpose(1, 2).flatten(0, 1)  # (N*F, 1, H, W)
            with torch.no_grad():
                predicted = classifier.eval()(frames).argmax(1).view(args.videos, -1)
            result["digits"] = (predicted == labels[:, None]).float().mean().item()
        drawn[spec] = videos
        uncached = ":".join(f for f in spec.split(":") if not f.startswith("cache"))
        if "cache" in row and uncached in drawn:
            result["psnr_vs_uncached"] = psnr(videos, drawn[uncached])
        results.append(result)
        line = f"{spec:<38} {result['nfe']:>4} {seconds:>7.1f} {cpu:>7.1f} {result['psnr']:>8.2f} {result['ssim']:>6.3f}"
        line += f" {result.get('fvd', 0):>7.1f} {result.get('fid', 0):>7.1f}" * bool(scorer)
        line += f" {result.get('digits', 0):>6.1%}" * bool(classifier)
        line += f"  {result['psnr_vs_uncached']:.2f} dB" if "psnr_vs_uncached" in result else ""
        print(line, flush=True)
    if args.bootstrap:
        print(f"FVD / FVD of {args.baseline}, 90% interval of {args.bootstrap} paired resamples of the videos:")
        base_fvd = next(r["fvd"] for r in results if r["row"] == args.baseline)
        intervals = scorer.fvd_ratio_intervals({name: rows for name, rows in features.items() if name != args.baseline},
                                               features[args.baseline], args.bootstrap)
        for result in results:
            if result["row"] in intervals:
                low, high = intervals[result["row"]]
                result["fvd_ratio"], result["fvd_ratio_interval"] = result["fvd"] / base_fvd, [low, high]
                print(f"{result['row']:<38} {result['fvd_ratio']:.3f}  [{low:.3f}, {high:.3f}]", flush=True)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"checkpoint": args.checkpoint, "videos": args.videos, "cfg_scale": base.cfg_scale,
                       "reference": args.reference, "rows": results}, handle, indent=2)


if __name__ == "__main__":
    main()
