"""Solver error, sample quality and cost of every sampler and step count on one trained model.

    python benchmarks/sampling_quality.py --checkpoint RUN [--videos 20] [--rows ddim:50,dpm-solver:20]
        [--reference ddim:500] [--fvd-fid] [--digits] [--output table.json] [--store DIR [--chunks N]]

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
Rows are drawn chunk by chunk (a chunk: --batch-size videos through every row). With --store DIR each
chunk's videos and detector features go to DIR as they are done, and the same command run again
resumes where it stopped (a run of thousands of videos can span several sessions; --chunks N stops
after N more chunks, --chunks 0 only reports). DIR refuses a run with another model, seed, guidance,
batch size or detector setting; new rows can be added to it. It keeps the videos in float32 (for
PSNR), C*F*H*W*4 bytes per video and row: 32 KB for the built-in model's, 12.6 MB at 16 x 256 x 256.
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
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F

from latte.diffusion.samplers import parse_option_value
from latte.errors import LatteError
from latte.files import atomic_path, atomic_write_text
from latte.host_memory import keep_freed_memory
from latte.inference import load_run, text_encoder_for
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


def draw(model, diffusion, vae, text_encoder, base: SampleRequest, row: dict, device,
         indices: list[int] | None = None) -> tuple[torch.Tensor, float, float]:
    """Videos `indices` (default: all) of one row, wall seconds and this process's CPU seconds (the
    figure to compare on a shared CPU)."""
    request = SampleRequest(**{**base.__dict__, "sampler": row["sampler"], "steps": row["steps"],
                               "scheduler_options": row["scheduler_options"] or None,
                               **{k: row[k] for k in REQUEST_KEYS if k in row}})
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    videos, _ = generate(model, diffusion, request, indices, vae=vae, device=device, progress=False,
                         text_encoder=text_encoder)
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

    def other_real(self, count: int, draw: int = 0) -> dict[str, np.ndarray]:
        """Features of `count` other real clips (the draw of seed protocol seed + 1 + draw): scored like
        generated videos, they give the floor that the sample count alone puts under FVD and FID."""
        from dataclasses import replace

        from latte.metrics.clips import open_real

        seed = self.protocol.seed + 1 + draw
        return self.features(open_real(self.spec, replace(self.protocol, num_clips=count, seed=seed)))

    def generated(self, videos: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of generated videos (N, C, F, H, W) in [-1, 1]."""
        from latte.metrics.clips import resize_center_crop
        from latte.metrics.videos import to_uint8

        return self.features(torch.stack([resize_center_crop(c, self.protocol.resolution) for c in to_uint8(videos)]))

    def _batches(self, clips, metric: str):
        """Detector features of clips (a uint8 (N, F, R, R, 3) tensor or a ClipSet), 8 clips at a time
        (detector batches bound the memory)."""
        for start in range(0, len(clips), 8):
            yield np.asarray(self._features(torch.stack([clips[i] for i in range(start, min(start + 8, len(clips)))]),
                                            metric), dtype=np.float32)

    def _gaussian(self, clips, metric: str):
        """Feature mean and covariance of clips, accumulated batch by batch."""
        from latte.metrics.stats import RunningStats

        running = RunningStats(self.detectors[metric].dim)
        for features in self._batches(clips, metric):
            running.update(features)
        return running.gaussian()

    def features(self, clips) -> dict[str, np.ndarray]:
        """float32 detector features of clips (uint8 (N, F, R, R, 3), or a ClipSet of such clips):
        "fvd" (N, dim) one row per clip, "fid" (N*K, dim) one row per frame FID sees."""
        return {metric: np.concatenate(list(self._batches(clips, metric))).reshape(-1, self.detectors[metric].dim)
                for metric in ("fvd", "fid")}

    def score(self, features: dict[str, np.ndarray]) -> dict[str, float]:
        """FVD and FID of clips from their features against the real statistics."""
        from latte.metrics.stats import frechet_distance

        scores = {}
        for metric in ("fvd", "fid"):
            rows = features[metric].astype(np.float64)
            scores[metric] = frechet_distance(self.real[metric].mean, self.real[metric].cov, rows.mean(0),
                                              np.cov(rows, rowvar=False))
        return scores

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


class ChunkStore:
    """Each row's videos, detector features and times, chunk by chunk: in memory, or with a folder in
    FOLDER/ROW/CHUNK.npz (written atomically as each is done) so that a stopped run resumes. The folder's
    identity.json names what every chunk depends on; a run that differs in any of it is refused."""

    def __init__(self, folder: str | None, identity: dict | None):
        self.folder, self.memory = (Path(folder) if folder else None), {}
        if self.folder is None:
            return
        path = self.folder / "identity.json"
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (ValueError, OSError) as exc:
                raise LatteError(f"{path} is unreadable ({exc}): give another folder") from exc
            for key in sorted(set(stored) | set(identity)):
                if stored.get(key) != identity.get(key):
                    raise LatteError(f"--store {folder} holds videos drawn with {key}={stored.get(key)!r}, this run "
                                     f"asks {identity.get(key)!r}: give another folder")
        else:
            atomic_write_text(path, json.dumps(identity, indent=2, sort_keys=True), "store identity")

    def _path(self, row: str, chunk: int) -> Path:
        return self.folder / quote(row, safe="") / f"{chunk:05d}.npz"

    def has(self, row: str, chunk: int) -> bool:
        return (row, chunk) in self.memory or (self.folder is not None and self._path(row, chunk).exists())

    def get(self, row: str, chunk: int) -> dict[str, np.ndarray]:
        if (row, chunk) in self.memory:
            return self.memory[row, chunk]
        with np.load(self._path(row, chunk)) as data:
            return dict(data)

    def put(self, row: str, chunk: int, data: dict) -> None:
        if self.folder is None:
            self.memory[row, chunk] = data
            return
        with atomic_path(self._path(row, chunk), "store chunk") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **data)

    def rows(self, row: str, chunks: int) -> dict[str, np.ndarray]:
        """The row's first `chunks` chunks, joined (times summed)."""
        parts = [self.get(row, k) for k in range(chunks)]
        return {key: (sum(float(p[key]) for p in parts) if parts[0][key].ndim == 0
                      else np.concatenate([p[key] for p in parts])) for key in parts[0]}


def model_digest(model) -> str:
    """sha256 of the model's parameters and buffers: what a stored chunk was drawn with."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    parser.add_argument("--store", default=None, metavar="DIR",
                        help="keep each chunk's videos and features in DIR; the same command resumes from it")
    parser.add_argument("--chunks", type=int, default=None, metavar="N",
                        help="with --store: draw at most N more chunks, then report what DIR holds (0: report only)")
    args = parser.parse_args()
    if args.fid_frames is not None and args.fid_frames < 1:
        parser.error(f"--fid-frames must be >= 1, got {args.fid_frames}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    chunk_size = min(args.batch_size or args.videos, args.videos)
    if args.store and args.videos % chunk_size:
        parser.error(f"--store needs --videos ({args.videos}) to be a multiple of --batch-size ({chunk_size})")
    if args.chunks is not None and (not args.store or args.chunks < 0):
        parser.error("--chunks needs --store and a count >= 0")
    specs = [s for s in args.rows.split(",") if s]
    specs += [args.reference] * (args.reference not in specs)
    args.baseline = args.baseline or specs[0]
    if args.bootstrap and (not args.fvd_fid or args.baseline not in specs):
        parser.error(f"--bootstrap needs --fvd-fid and a --baseline among the rows, got {args.baseline!r}")
    keep_freed_memory()  # the host-memory policy of the latte command (LATTE_SYSTEM_MALLOC=1: glibc's)

    device = torch.device(args.device)
    generator = load_run(args.checkpoint)
    model, diffusion, config, vae = generator.model, generator.diffusion, generator.config, generator.vae
    text_encoder = text_encoder_for(config, device) if args.prompt else None
    base = SampleRequest(num_videos=args.videos, batch_size=chunk_size, seed=args.seed, prompts=args.prompt or None,
                         cfg_scale=config.sample.cfg_scale if args.cfg_scale is None else args.cfg_scale)
    print(f"{args.videos} videos per row, guidance {base.cfg_scale}, device {device}, reference {args.reference}")
    # warm-up (the first row's time should not include first-call costs); it also gives the videos' shape
    warm_up, _, _ = draw(model, diffusion, vae, text_encoder, SampleRequest(**{**base.__dict__, "batch_size": 2}),
                         parse_row("ddim:2"), device, [0, 1])
    frames, resolution = warm_up.shape[2], warm_up.shape[-1]
    scorer = None
    if args.fvd_fid:
        real = args.real or (f"{config.data.dataset}:." if config.data.dataset == "moving-mnist" else None)
        if real is None:
            parser.error("--fvd-fid needs --real for this run's dataset")
        scorer = FrechetScorer(real, frames, resolution, args.real_clips, device, args.fid_frames)
    identity = args.store and {  # what a stored chunk depends on (the model hash costs a pass over its weights)
        "model": model_digest(model), "seed": args.seed, "cfg_scale": base.cfg_scale, "prompts": args.prompt,
        "batch_size": chunk_size, "vae": None if vae is None else type(vae).__name__,
        "detectors": scorer and {"real": scorer.spec, "repeat": scorer.repeat, "fid_frames": scorer.fid_index.tolist(),
                                 **{m: d.sha256 for m, d in scorer.detectors.items()}}}
    try:
        store = ChunkStore(args.store, identity)
    except LatteError as error:
        parser.error(str(error))

    total, done, started = args.videos // chunk_size, 0, time.perf_counter()
    for k in range(total):
        todo = [spec for spec in specs if not store.has(spec, k)] + ["real"] * bool(scorer and not store.has("real", k))
        if todo and args.chunks is not None and done >= args.chunks:
            break
        indices = list(range(k * chunk_size, (k + 1) * chunk_size))
        for spec in todo:
            if spec == "real":  # the floor: as many other real clips, scored like the videos
                store.put("real", k, scorer.other_real(chunk_size, draw=k))
                continue
            videos, seconds, cpu = draw(model, diffusion, vae, text_encoder, base, parse_row(spec), device, indices)
            store.put(spec, k, {"videos": videos.numpy(), "seconds": np.array(seconds), "cpu_seconds": np.array(cpu),
                                **(scorer.generated(videos) if scorer else {})})
        if todo:
            done += 1
            if total > 1:
                elapsed = time.perf_counter() - started
                print(f"chunk {k + 1}/{total} drawn ({done} this run, {elapsed / done:.0f} s each)", flush=True)
    complete = next((k for k in range(total) if not all(store.has(s, k) for s in specs + ["real"] * bool(scorer))),
                    total)
    if complete == 0:
        print("no chunk is complete yet")
        return
    report(args, base, specs, store, complete, scorer, model.config.num_classes)


def report(args, base: SampleRequest, specs: list[str], store: ChunkStore, chunks: int, scorer,
           num_classes: int) -> None:
    """The table over the first `chunks` chunks of every row."""
    count = chunks * base.batch_size
    if count < args.videos:
        print(f"{count} of {args.videos} videos of every row are drawn: the table covers those")
    stored = {spec: store.rows(spec, chunks) for spec in specs}
    reference = torch.from_numpy(stored[args.reference]["videos"])
    classifier = None
    if args.digits:
        from latte.metrics.mnist import train_readers

        classifier, ceiling = train_readers(reference.shape[-1], reference.shape[2])
        print(f"digit classifier: {ceiling:.1%} on held-out real frames")
    labels = torch.tensor([i % max(num_classes, 1) for i in range(count)])

    results = []
    header = f"{'row':<38} {'NFE':>4} {'time s':>7} {'cpu s':>7} {'PSNR dB':>8} {'SSIM':>6}"
    header += f" {'FVD':>7} {'FID':>7}" * bool(scorer) + f" {'digits':>6}" * bool(classifier) + "  vs uncached"
    print(header)
    if scorer:
        floor = {"row": "real", **scorer.score(store.rows("real", chunks))}
        results.append(floor)
        print(f"{'real (' + str(count) + ' other real clips)':<38} {'':>4} {'':>7} {'':>7} {'':>8} {'':>6}"
              f" {floor['fvd']:>7.1f} {floor['fid']:>7.1f}", flush=True)
    for spec in specs:
        row, data = parse_row(spec), stored[spec]
        videos = torch.from_numpy(data["videos"])
        result = {"row": spec, "nfe": row["steps"], "seconds": data["seconds"], "cpu_seconds": data["cpu_seconds"],
                  "psnr": psnr(videos, reference) if spec != args.reference else math.inf,
                  "ssim": ssim(videos, reference)}
        if scorer:
            result.update(scorer.score(data))
        if classifier:
            frames = ((videos[:, :1] + 1) / 2).transpose(1, 2).flatten(0, 1)  # (N*F, 1, H, W)
            with torch.no_grad():
                predicted = classifier.eval()(frames).argmax(1).view(count, -1)
            result["digits"] = (predicted == labels[:, None]).float().mean().item()
        uncached = ":".join(f for f in spec.split(":") if not f.startswith("cache"))
        if "cache" in row and uncached in stored:
            result["psnr_vs_uncached"] = psnr(videos, torch.from_numpy(stored[uncached]["videos"]))
        results.append(result)
        line = (f"{spec:<38} {result['nfe']:>4} {result['seconds']:>7.1f} {result['cpu_seconds']:>7.1f}"
                f" {result['psnr']:>8.2f} {result['ssim']:>6.3f}")
        line += f" {result.get('fvd', 0):>7.1f} {result.get('fid', 0):>7.1f}" * bool(scorer)
        line += f" {result.get('digits', 0):>6.1%}" * bool(classifier)
        line += f"  {result['psnr_vs_uncached']:.2f} dB" if "psnr_vs_uncached" in result else ""
        print(line, flush=True)
    if args.bootstrap:
        print(f"FVD / FVD of {args.baseline}, 90% interval of {args.bootstrap} paired resamples of the videos:")
        base_fvd = next(r["fvd"] for r in results if r["row"] == args.baseline)
        others = {name: data["fvd"] for name, data in stored.items() if name != args.baseline}
        intervals = scorer.fvd_ratio_intervals(others, stored[args.baseline]["fvd"], args.bootstrap)
        for result in results:
            if result["row"] in intervals:
                low, high = intervals[result["row"]]
                result["fvd_ratio"], result["fvd_ratio_interval"] = result["fvd"] / base_fvd, [low, high]
                print(f"{result['row']:<38} {result['fvd_ratio']:.3f}  [{low:.3f}, {high:.3f}]", flush=True)
    if args.output:
        table = {"checkpoint": args.checkpoint, "videos": count, "cfg_scale": base.cfg_scale,
                 "reference": args.reference, "rows": results}
        atomic_write_text(args.output, json.dumps(table, indent=2), "table")


if __name__ == "__main__":
    main()
