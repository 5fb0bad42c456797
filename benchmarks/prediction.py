"""Moving MNIST prediction and long videos of a run trained with frame masks (issue 30, "Measured").

    python benchmarks/prediction.py --checkpoint runs/mm-masked [--given 4] [--clips 50] [--samples 4] [--json rows.json]
    python benchmarks/prediction.py --checkpoint runs/mm-masked --long 64 [--per-class 10]
    python benchmarks/prediction.py --checkpoint runs/mm64 --shape standard     # 2 digits, 64x64, 10 given + 10

Prediction: held-out clips (Moving MNIST's test split: digits training never sees, at the run's frames,
resolution, frame interval and digit speeds; clip i is the one train.eval_every's held-out loss reads, seed
latte.train.heldout.SEED) give their first k frames (--given); the model generates the rest, --samples videos
per clip with different noise (video j of clip i: the generator's seed (--seed + i, j)). Per predicted frame:
- MSE: per pixel, frames mapped from [-1, 1] to [0, 1], averaged over pixels and channels (column `mse`);
- MSE per frame as OpenSTL tables it (column `mse_frame`): the same squared error on [0, 1] summed over a
  frame's pixels and channels (= mse x C x H x W; x 4096 for one-channel 64x64 frames), then averaged;
- SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1 on [0, 1],
  averaged over the valid (unpadded) window positions and over channels;
- best-of-N and mean over N: `*_mean` averages every sample; `*_best` takes, per clip, the sample with the lowest
  MSE (for mse, mse_frame) or the highest SSIM (for ssim) over all its predicted frames;
- digit kept: the fraction of predicted frames that the digit classifier of latte.metrics.mnist (trained on real
  frames of the train digit pool, cached; never used in training) reads as the clip's digit (one-digit clips);
- velocity error: |v_pred - v_true| in px/frame, v the step of the brightness centroid from the frame before
  (the first predicted frame's step starts at the last given frame), mean over samples.
Clips longer than the model's window (--frames) are generated window by window; a model whose window is not
longer than the given frames is shown the last --overlap of them (default half a window), as the later windows
of a long video are.
Rows: each predicted frame, the first four predicted frames, all of them; for the model, copying the last given
frame to every later frame (one deterministic "sample"), and the same model unconditioned (no given frames, the
same class label, caption or none; the same noise where the model is shown all the given frames, as the requests
then have the same length and seed; shown the last --overlap, the requests and so their noise differ). Goal: MSE over the first four predicted frames at most half
that of copying (the ratio is printed).

Long videos (--long N): --per-class videos of each digit (class and text models; unconditional: 10 x
--per-class), N frames window by window (each window given the last --overlap frames of the one before; default
half a window); the windows are latte.frame_conditioning.plan_windows', so the joins are known exactly. Printed:
the fraction of frames read as the asked digit (goal 90%), and the centroid jitter (norm of the second difference
c[f+1] - 2 c[f] + c[f-1], latte.metrics.mnist.centroid_jitter) at the two frames around each join (f = j - 1 and j, j the
first frame a window generates) against every other frame; goal: boundary within 1.5x inside (medians).

--shape standard builds the standard setting's clips: two digits (28 px, as MNIST's) on 64x64, 10 given and 10
predicted (OpenSTL lists MSE per frame from 15 to 36 for deterministic models there). Only the shape matches:
the digits and paths are latte's generator's (test pool), not the published test file. It needs a 64x64 model,
best one trained on that shape (data.resolution=64, data.num_frames=20, data.mnist_digits=2,
data.mnist_digit_size=28); the classifier reads one digit, so the digit-kept column is empty for two-digit clips.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from latte.cli_arguments import add_reader_arguments
from latte.data import build_dataset
from latte.data.moving_mnist import DIRECTIONS, caption_of
from latte.devices import PRECISIONS, default_precision, pick_device
from latte.errors import LatteError
from latte.frame_conditioning import default_overlap, pixel_frames, plan_windows
from latte.inference import VideoGenerator, load_run
from latte.metrics.evaluate import stats_cache_dir
from latte.metrics.mnist import cached_classifier, centroid_jitter, centroids, frame_digits, real_motion
from latte.train.heldout import SEED
from latte.video_io import save_videos

COLUMNS = ("method", "frames", "mse_mean", "mse_best", "mse_frame_mean", "mse_frame_best", "ssim_mean", "ssim_best",
           "digit_kept", "velocity_error")
METHODS = ("model", "copy last", "unconditioned")
STANDARD = {"num_digits": 2, "digit_size": 28, "resolution": 64, "frames": 20, "given": 10}
FIRST = 4  # the goal's span: the first four predicted frames


# -- measures --------------------------------------------------------------------------------------------

def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian; SSIM's 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Eq. 13, Gaussian-weighted local statistics) of images (..., H, W) -> (...)."""
    if x.shape != y.shape or x.shape[-1] < size or x.shape[-2] < size:
        raise LatteError(f"SSIM takes two images of one shape, at least {size}x{size}; got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    g = gaussian_window(size, sigma)
    rows, cols = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def local_mean(image: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 1, H - size + 1, W - size + 1)
        return F.conv2d(F.conv2d(image, rows), cols)

    a, b = x.reshape(-1, 1, h, w).double(), y.reshape(-1, 1, h, w).double()  # (B, 1, H, W)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a, var_b = local_mean(a * a) - mu_a ** 2, local_mean(b * b) - mu_b ** 2
    cov = local_mean(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3)).view(lead).float()


def grey(videos: torch.Tensor) -> torch.Tensor:
    """(N, C, F, H, W) in [-1, 1] -> (N, 1, F, H, W): the mean of the channels (Moving MNIST's are equal)."""
    return videos.mean(dim=1, keepdim=True)


def readings(videos: torch.Tensor, clip: torch.Tensor, given: int, label: int | None, net) -> dict:
    """Per sample and predicted frame (S, P) of videos (S, C, F, H, W) against the true clip (C, F, H, W), all in
    [-1, 1], whose first `given` frames were given: mse, mse_frame, ssim, digit_kept (None without a label or
    classifier), velocity_error."""
    pred, true = (videos[:, :, given:] + 1) / 2, (clip[None, :, given:] + 1) / 2  # (S, C, P, H, W) on [0, 1]
    mse = ((pred - true) ** 2).mean(dim=(1, 3, 4))  # (S, P)
    pixels = pred.shape[1] * pred.shape[3] * pred.shape[4]
    quality = ssim(pred, true.expand_as(pred)).mean(dim=1)  # (S, C, P) -> (S, P)
    kept = None
    if label is not None and net is not None:
        kept = (frame_digits(net, grey(videos))[:, given:] == label).float()  # (S, P)
    steps = centroids(grey(videos)).diff(dim=1)[:, given - 1:]  # (S, P, 2) px per frame
    true_steps = centroids(grey(clip[None])).diff(dim=1)[:, given - 1:]  # (1, P, 2)
    velocity = (steps - true_steps).norm(dim=-1)  # (S, P)
    return {"mse": mse, "mse_frame": mse * pixels, "ssim": quality, "digit_kept": kept, "velocity_error": velocity}


def copy_last(clip: torch.Tensor, given: int) -> torch.Tensor:
    """The copy baseline (1, C, F, H, W): the given frames, then the last of them repeated."""
    video = clip.clone()  # (C, F, H, W)
    video[:, given:] = clip[:, given - 1:given]
    return video[None]


def first_span(given: int, frames: int) -> str:
    """The label of the goal's span: the first four predicted frames (fewer when fewer are predicted)."""
    first = min(FIRST, frames - given)
    return f"{given}-{given + first - 1}" if first > 1 else str(given)


def spans(given: int, frames: int) -> list[tuple[str, list[int]]]:
    """(label, predicted-frame positions 0..P-1) of each row: every predicted frame, then the first four and
    all of them (each only where it differs from the rows before)."""
    predicted = frames - given
    rows = [(str(given + p), [p]) for p in range(predicted)]
    if predicted > 1:
        rows.append((first_span(given, frames), list(range(min(FIRST, predicted)))))
    if predicted > FIRST:
        rows.append((f"{given}-{frames - 1}", list(range(predicted))))
    return rows


def summarize(method: str, per_clip: list[dict], given: int, frames: int) -> list[dict]:
    """Rows (COLUMNS) of one method from each clip's readings; clip frames are numbered from 0."""
    stacked = {k: (torch.stack([r[k] for r in per_clip]) if per_clip[0][k] is not None else None)
               for k in per_clip[0]}  # each (clips, S, P)
    clips = torch.arange(len(per_clip))
    by_mse = stacked["mse"].mean(dim=2).argmin(dim=1)  # (clips,) the best sample of each clip
    by_ssim = stacked["ssim"].mean(dim=2).argmax(dim=1)
    best = {"mse": stacked["mse"][clips, by_mse], "mse_frame": stacked["mse_frame"][clips, by_mse],
            "ssim": stacked["ssim"][clips, by_ssim]}  # each (clips, P)
    rows = []
    for label, at in spans(given, frames):
        row = {"method": method, "frames": label}
        for name in ("mse", "mse_frame", "ssim"):
            row[f"{name}_mean"] = stacked[name][..., at].mean().item()
            row[f"{name}_best"] = best[name][..., at].mean().item()
        kept = stacked["digit_kept"]
        row["digit_kept"] = None if kept is None else kept[..., at].mean().item()
        row["velocity_error"] = stacked["velocity_error"][..., at].mean().item()
        rows.append({name: row[name] for name in COLUMNS})
    return rows


# -- generation ------------------------------------------------------------------------------------------

def heldout_clips(generator: VideoGenerator, count: int, frames: int, standard: bool = False) -> list[dict]:
    """`count` test-split clips of the run's Moving MNIST settings and channels, `frames` long (standard: two
    28 px digits on 64x64)."""
    data = generator.config.data
    if not data.is_moving_mnist:
        raise LatteError(f"the prediction benchmark reads Moving MNIST runs; this run trained on {data.dataset}")
    channels, size = pixel_frames(generator.model.config, generator.vae)
    extra = {"num_digits": STANDARD["num_digits"], "digit_size": STANDARD["digit_size"]} if standard else {}
    if standard and size != (STANDARD["resolution"],) * 2:
        raise LatteError(f"--shape standard needs a model of 64x64 frames; this run makes {size[1]}x{size[0]}")
    held = build_dataset(data.dataset, None, num_frames=frames, frame_interval=data.frame_interval,
                         resolution=size[0], images_per_clip=0, seed=SEED, train=False, split="test", length=count,
                         channels=channels, **{**data.mnist_kwargs(), **extra})
    return [held[i] for i in range(count)]


def condition(generator: VideoGenerator, item: dict) -> dict:
    """The request fields that ask for a clip's own class or caption (nothing for unconditional models)."""
    if generator.model.config.is_text:
        return {"prompts": [item["caption"]]}
    return {"class_label": item["label"]} if generator.model.config.num_classes else {}


def context_frames(generator: VideoGenerator, given: int, overlap: int | None) -> int:
    """How many of the given frames the model is shown: all of them when they leave room in its window, else the
    last --overlap (default half a window), as the later windows of a long video are."""
    c = generator.model.config
    if given < c.num_frames:
        return given
    return overlap or default_overlap(c.num_frames, c.temporal_stride)


def predict(generator: VideoGenerator, item: dict, given: int, samples: int, seed: int, options: dict,
            conditioned: bool = True, force: bool = False) -> torch.Tensor:
    """`samples` videos (S, C, F, H, W) in [-1, 1] of a clip's length: its first `given` frames, then frames
    generated from the last context_frames of them (conditioned), or the whole clip generated without them."""
    clip = item["video"]  # (C, F, H, W)
    shown = context_frames(generator, given, options.get("overlap")) if conditioned else given
    fields = {"given": clip[:, given - shown:given], "given_at": tuple(range(shown))} if conditioned else {}
    if not conditioned:  # no given frames to guide
        options = {k: v for k, v in options.items() if k != "image_cfg_scale"}
    request = generator.request(num_videos=samples, batch_size=samples, seed=seed,
                                num_frames=clip.shape[1] - given + shown, **condition(generator, item), **fields,
                                **options)  # the clip's frames from the first one shown
    generator.check(request, force=force)
    videos, _ = generator.generate(request, progress=False)  # (S, C, F - given + shown, H, W)
    if conditioned and shown < given:
        videos = torch.cat([clip[None, :, :given - shown].expand(samples, -1, -1, -1, -1), videos], dim=2)
    return videos


def check_prediction(generator: VideoGenerator, clip: dict, given: int, samples: int, options: dict,
                     force: bool = False) -> None:
    """One-line errors for a prediction this model cannot make, before any work (generation is checked again)."""
    frames = clip["video"].shape[1]
    if not 1 <= given < frames:
        raise LatteError(f"--given must be in [1, {frames - 1}] for {frames}-frame clips, got {given}")
    shown = context_frames(generator, given, options.get("overlap"))
    if shown > given:
        raise LatteError(f"--overlap {shown} is more than the {given} given frames")
    probe = {"given": clip["video"][:, given - shown:given], "given_at": tuple(range(shown))}
    generator.check(generator.request(num_videos=samples, num_frames=frames - given + shown, **probe, **options,
                                      **condition(generator, clip)), force=force)


def measure(generator: VideoGenerator, clips: list[dict], given: int, samples: int, net, options: dict,
            seed: int = 0, force: bool = False, progress: bool = True, shown: list | None = None) -> list[dict]:
    """Rows of every method (METHODS) over held-out clips (a prediction check_prediction passed: each request is
    checked again as it is made); `net` None (two-digit clips): no digit kept. `shown` collects each clip and
    the model's first sample, (2, C, F, H, W), for a filmstrip."""
    frames = clips[0]["video"].shape[1]
    per_method = {name: [] for name in METHODS}
    for i, item in enumerate(tqdm(clips, desc="clips", unit="clip", disable=not progress)):
        clip, label = item["video"], item["label"]
        videos = {"model": predict(generator, item, given, samples, seed + i, options, force=force),
                  "copy last": copy_last(clip, given),
                  "unconditioned": predict(generator, item, given, samples, seed + i, options, conditioned=False,
                                           force=force)}
        if shown is not None:
            shown.append(torch.stack([clip, videos["model"][0]]))
        for name, video in videos.items():
            per_method[name].append(readings(video, clip, given, label, net))
    return [row for name in METHODS for row in summarize(name, per_method[name], given, frames)]


def window_joins(windows: tuple[tuple[int, int], ...]) -> list[int]:
    """The first frame each window after the first generates: where the window before it ended."""
    return [start + length for start, length in windows[:-1]]


def jitter_places(frames: int, joins: list[int]) -> torch.Tensor:
    """(F - 2,) bool over the second differences centred at 1..F-2: True where one spans a join (f = j - 1, j)."""
    boundary = torch.zeros(frames - 2, dtype=torch.bool)
    for j in joins:
        for centre in (j - 1, j):
            if 1 <= centre <= frames - 2:
                boundary[centre - 1] = True
    return boundary


def long_request(generator: VideoGenerator, frames: int, per_class: int, options: dict, seed: int = 0,
                 force: bool = False):
    """The checked request of 10 x per_class `frames`-frame videos (video i asks for digit i % 10)."""
    c = generator.model.config
    asked = {}
    if c.is_text:  # prompt i % 10 asks for digit i % 10
        asked["prompts"] = [caption_of(d, DIRECTIONS[d % len(DIRECTIONS)]) for d in range(10)]
    request = generator.request(num_videos=10 * per_class, seed=seed, num_frames=frames, **asked, **options)
    generator.check(request, force=force)
    if request.overlap is None and frames > c.num_frames:
        raise LatteError("this run trained without frame masks, so long videos are not made window by window: "
                         "pass --overlap (and --force) to try anyway")
    return request


def long_videos(generator: VideoGenerator, request) -> tuple[torch.Tensor, torch.Tensor | None, tuple]:
    """(videos (N, C, F, H, W), asked digits (N,) or None for unconditional models, windows) of a long_request."""
    c = generator.model.config
    videos, labels = generator.generate(request, progress=True)
    if c.is_text:
        labels = torch.arange(len(videos)) % 10
    return videos, labels, plan_windows(request.num_frames, c.num_frames, request.overlap)


def long_readings(videos: torch.Tensor, labels: torch.Tensor | None, windows: tuple, net) -> dict:
    """Digit read and centroid jitter at window joins vs inside windows of long videos (N, C, F, H, W)."""
    frames = videos.shape[2]
    jitter = centroid_jitter(grey(videos))  # (N, F - 2), centred at 1..F-2
    boundary = jitter_places(frames, window_joins(windows))
    at, inside = jitter[:, boundary], jitter[:, ~boundary]
    read, by_quarter = None, None
    if labels is not None and net is not None:
        right = (frame_digits(net, grey(videos)) == labels[:, None]).float()  # (N, F)
        read = right.mean().item()
        by_quarter = [span.mean().item() for span in right.tensor_split(4, dim=1)]  # does the digit drift away?
    ratio = at.median().item() / max(inside.median().item(), 1e-9) if at.numel() and inside.numel() else None
    return {"frames": frames, "videos": len(videos), "windows": [list(w) for w in windows], "digit_read": read,
            "digit_read_by_quarter": by_quarter,
            "jitter_boundary_median": at.median().item() if at.numel() else None,
            "jitter_inside_median": inside.median().item() if inside.numel() else None,
            "jitter_boundary_mean": at.mean().item() if at.numel() else None,
            "jitter_inside_mean": inside.mean().item() if inside.numel() else None, "jitter_ratio": ratio}


# -- report ----------------------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The prediction rows as aligned text, one line per row."""
    head = (f"{'method':<14}{'frames':>8}{'MSE mean':>10}{'MSE best':>10}{'/frame mean':>13}{'/frame best':>13}"
            f"{'SSIM mean':>11}{'SSIM best':>11}{'digit kept':>12}{'vel err px':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<14}{r['frames']:>8}{r['mse_mean']:>10.4f}{r['mse_best']:>10.4f}"
                     f"{r['mse_frame_mean']:>13.1f}{r['mse_frame_best']:>13.1f}{r['ssim_mean']:>11.3f}"
                     f"{r['ssim_best']:>11.3f}{fmt(r['digit_kept'], '.1%'):>12}{r['velocity_error']:>12.2f}")
    return "\n".join(lines)


def goal(rows: list[dict], given: int, frames: int) -> dict:
    """MSE over the first four predicted frames, model / copying (mean over N and best of N)."""
    label = first_span(given, frames)
    first = {r["method"]: r for r in rows if r["frames"] == label}
    copy = first["copy last"]["mse_mean"]
    return {"frames": label, "copy_mse": copy,
            "ratio_mean": first["model"]["mse_mean"] / copy if copy > 0 else None,
            "ratio_best": first["model"]["mse_best"] / copy if copy > 0 else None}


def options_of(args, device) -> dict:
    return {"sampler": args.sampler, "steps": args.steps, "cfg_scale": args.cfg_scale, "overlap": args.overlap,
            "image_cfg_scale": args.image_cfg_scale, "precision": args.precision or default_precision(device)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run folder or checkpoint trained with frame masks")
    parser.add_argument("--shape", choices=("run", "standard"), default="run",
                        help="run: the run's clips; standard: 2 digits, 64x64, 10 given + 10 predicted (default: %(default)s)")
    parser.add_argument("--given", type=int, default=None,
                        help="frames given (default: train.mask_prefix_frames, else 1; standard: 10)")
    parser.add_argument("--frames", type=int, default=None,
                        help="clip length (default: the run's num_frames; standard: 20); longer: window by window")
    parser.add_argument("--clips", type=int, default=50, help="held-out clips (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=4, help="videos per clip, N of best-of-N (default: %(default)s)")
    parser.add_argument("--long", type=int, default=None, metavar="N",
                        help="instead: N-frame videos window by window, digit read and jitter at joins")
    parser.add_argument("--per-class", type=int, default=10, help="--long: videos per digit (default: %(default)s)")
    parser.add_argument("--overlap", type=int, default=None, help="frames shared by windows (default: half a window)")
    parser.add_argument("--sampler", default=None, help="default: the run's sample.sampler")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's sample.steps")
    parser.add_argument("--cfg-scale", type=float, default=None, help="class/text guidance (default: the run's)")
    parser.add_argument("--image-cfg-scale", type=float, default=None, help="guidance of the given frames (default 1: off)")
    parser.add_argument("--seed", type=int, default=0, help="clip i's videos use seed --seed + i (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="default: bf16 on CUDA, fp32 on CPU")
    add_reader_arguments(parser)
    parser.add_argument("--force", action="store_true", help="measure a checkpoint trained without frame masks")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write settings and rows here")
    parser.add_argument("--filmstrip", type=Path, default=None, metavar="PNG",
                        help="prediction: the first --filmstrip-clips clips, each its true clip above the model's "
                             "first sample, the given frames marked")
    parser.add_argument("--filmstrip-clips", type=int, default=3, help="clips in --filmstrip (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("clips", "samples", "per_class", "given", "frames", "long", "filmstrip_clips"):  # 0 is not "the default"
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    generator = load_run(args.checkpoint).to(device, args.precision or default_precision(device))
    config, c = generator.config, generator.model.config
    standard = args.shape == "standard"
    options = options_of(args, device)
    settings = {"checkpoint": str(args.checkpoint), "shape": args.shape, "device": str(device),
                **{k: v for k, v in options.items() if v is not None}}
    size = pixel_frames(c, generator.vae)[1][0]
    if args.long:
        request = long_request(generator, args.long, args.per_class, options, args.seed, args.force)
    else:
        given = args.given if args.given is not None else (
            STANDARD["given"] if standard else config.train.mask_prefix_frames or 1)
        frames = args.frames if args.frames is not None else (STANDARD["frames"] if standard else c.num_frames)
        clips = heldout_clips(generator, args.clips, frames, standard)
        check_prediction(generator, clips[0], given, args.samples, options, args.force)  # before the classifier
    net, accuracy = None, None
    if not standard and config.data.is_moving_mnist and config.data.mnist_digits == 1:  # the classifier reads one digit
        net, accuracy = cached_classifier(size, c.num_frames, args.classifier_steps, stats_cache_dir(args.cache_dir))
        settings["classifier_real_accuracy"] = accuracy
    started = time.perf_counter()
    if args.long:
        videos, labels, windows = long_videos(generator, request)
        result = long_readings(videos, labels, windows, net)
        result["jitter_real_median"] = real_motion(args.long, size, len(videos), **config.data.mnist_kwargs())[1]
        settings["seconds"] = time.perf_counter() - started
        print(f"{args.checkpoint}: {result['videos']} videos of {args.long} frames, windows {windows}, "
              f"{settings['seconds']:.0f} s; classifier on real frames {fmt(accuracy, '.1%')}")
        quarters = " ".join(fmt(q, ".1%") for q in result["digit_read_by_quarter"] or [None])
        print(f"frames read as the asked digit  {fmt(result['digit_read'], '.1%')}   (goal >= 90%); "
              f"by quarter of the video {quarters}")
        print(f"centroid jitter px (median)     at joins {fmt(result['jitter_boundary_median'], '.2f')}   inside "
              f"{fmt(result['jitter_inside_median'], '.2f')}   ratio {fmt(result['jitter_ratio'], '.2f')} "
              f"(goal <= 1.5)   real clips {result['jitter_real_median']:.2f}")
        print(f"centroid jitter px (mean)       at joins {fmt(result['jitter_boundary_mean'], '.2f')}   inside "
              f"{fmt(result['jitter_inside_mean'], '.2f')}")
        payload = {"settings": settings, "long": result}
    else:
        shown = [] if args.filmstrip else None
        rows = measure(generator, clips, given, args.samples, net, options, args.seed, args.force, shown=shown)
        if args.filmstrip:
            pairs = torch.cat(shown[:args.filmstrip_clips])  # (2 k, C, F, H, W): true clip, then the model's
            print(save_videos(args.filmstrip, pairs, given_at=range(given))[0])
        summary = goal(rows, given, frames)
        settings.update(given=given, frames=frames, clips=args.clips, samples=args.samples,
                        seconds=time.perf_counter() - started)
        print(f"{args.checkpoint}: {args.clips} held-out clips of {frames} frames, {given} given, {args.samples} "
              f"samples each, {settings['seconds']:.0f} s; classifier on real frames {fmt(accuracy, '.1%')}")
        print("MSE per pixel on [0, 1]; /frame: summed over a frame's pixels (OpenSTL's MSE per frame); "
              "best: best of the samples per clip")
        print(table(rows))
        print(f"goal: MSE over frames {summary['frames']} / copying the last given frame: "
              f"{fmt(summary['ratio_mean'], '.2f')} mean over samples, {fmt(summary['ratio_best'], '.2f')} best of "
              f"{args.samples} (goal <= 0.5)")
        payload = {"settings": settings, "rows": rows, "goal": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LatteError as exc:
        sys.exit(f"prediction: {exc}")
