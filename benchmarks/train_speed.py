"""Training-step speed at one shape, in one run: ms/step, clips/s, peak memory and MFU of

  latte eager        our model: forward, MSE, backward, AdamW step (fused, as the trainer's);
  latte compiled     the same with each block compiled on its own (--compile; compile time shown apart);
  latte train        the full `latte train` step (Trainer.train_step: device draws, diffusion loss with
                     the learned-sigma VLB term, clipping, EMA; --compile and --parallel as in training);
  diffusers          diffusers' LatteTransformer3DModel configured to the same width, depth and shape;
  official (shipped) tests/official_reference.py's re-statement of the official forward on the same
                     weights: fp32 with TF32 matmuls and written-out softmax attention, plain AdamW;
  official bf16 sdpa the same re-statement under bf16 autocast with scaled_dot_product_attention.

    python benchmarks/train_speed.py --model Latte-XL/2 --batch 5 --compile                 # one GPU
    torchrun --nproc_per_node 8 benchmarks/train_speed.py --model Latte-XL/2 --batch 5 --parallel fsdp
    python benchmarks/train_speed.py --model Latte-S/2 --batch 2 --steps 5                  # CPU
    python benchmarks/train_speed.py --model Latte-XL/2 --batch 32 --grad-checkpointing --rows train  # memory

Clips are 16 x 32 x 32 x 4 latents (256 px through the SD VAE), unconditional. MFU = 3 x forward FLOPs
(latte.models.forward_flops of our model at this shape, used for every row) / step time / peak; the
peak is the GPU's dense bf16 figure or --peak-tflops; on CPU no MFU is shown. --grad-checkpointing
recomputes each block's activations in backward in latte's rows (model.grad_checkpointing, applied
from outside the model as training does); peak memory is per row on CUDA. --parallel only matters
under torchrun with several processes (every rank runs every row; rank 0 prints).

--rounds R > 1 (the CPU default, 3) builds every row first and then times them in turns, R rounds of
--steps steps each in a rotated order, and reports each row's median round: a shared or throttling
CPU drifts by 10-20% between minutes, which would otherwise land on whichever row ran then. With one
round (the CUDA default) each row runs alone, so its peak memory is its own. The last lines give the
speed ratios of latte's rows to the others.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from failures import one_line, show_traceback  # benchmarks/failures.py, beside this file
from model_speed import build_diffusers  # benchmarks/model_speed.py, beside this file

from latte.host_memory import keep_freed_memory
from latte.models import create_model, forward_flops
from latte.train import mfu

HERE = Path(__file__).resolve().parent


def official_reference():
    """tests/official_reference.py (a test helper, not part of the package), loaded by path."""
    spec = importlib.util.spec_from_file_location("official_reference", HERE.parent / "tests" / "official_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(build, steps: int, warmup: int, device: torch.device) -> dict:
    """Time `steps` calls of step = build() after `warmup` calls (the first one reported apart: it includes
    compilation); peak memory counts what the row allocates (model, optimizer, activations)."""
    gc.collect()
    baseline = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    step = build()
    first = warm_up(step, warmup, device)
    ms = timed(step, steps, device)
    peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**30 if device.type == "cuda" else None
    return {"ms": ms, "first_s": first, "peak_gb": peak}


def warm_up(step, warmup: int, device: torch.device) -> float:
    """`warmup` untimed calls; returns the first one's seconds (compilation happens there)."""
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync(device)
    return first


def timed(step, steps: int, device: torch.device) -> float:
    """Mean milliseconds of `steps` calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return 1000 * (time.perf_counter() - start) / steps


def interleaved(builders, steps: int, warmup: int, rounds: int, device: torch.device, failure) -> dict[str, dict]:
    """Every row built and warmed up, then timed in `rounds` rotated turns of `steps` steps; median round per row.
    A row that fails to build or warm up goes to failure(label, error) and is left out."""
    built = []
    for label, build in builders:
        try:
            step = build()
            built.append((label, step, warm_up(step, warmup, device)))
        except Exception as error:
            failure(label, error)
            step = None
        gc.collect()  # past the except clause, whose error held a failed row's frames: its model goes here
    if not built:
        return {}
    rounds_ms: dict[str, list[float]] = {label: [] for label, _, _ in built}
    for r in range(rounds):
        shift = r % len(built)
        for label, step, _ in built[shift:] + built[:shift]:
            rounds_ms[label].append(timed(step, steps, device))
    return {label: {"ms": statistics.median(rounds_ms[label]), "first_s": first, "peak_gb": None,
                    "spread": (min(rounds_ms[label]), max(rounds_ms[label]))} for label, _, first in built}


def model_step(model, inputs: dict, target: torch.Tensor, autocast, output=lambda out: out):
    """forward, MSE on the first C output channels, backward, fused AdamW step (latte's and diffusers' rows
    alike, so the two compare models; the official rows keep the shipped optimizer)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    channels = target.shape[1]

    def step():
        with autocast:
            out = output(model(**inputs))
        F.mse_loss(out[:, :channels].float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def official_step(state: dict, x, t, target, heads: int, patch: int, out_channels: int, autocast, sdpa: bool,
                  tf32: bool = False):
    """The official forward re-statement on leaf tensors (x (B, C, F, H, W) -> the official (B, F, C, H, W));
    tf32: TF32 matmuls during the step, as the official training script enables them on CUDA."""
    forward = official_reference().official_forward
    params = {k: v.detach().to(x.device, copy=True).requires_grad_(v.is_floating_point() and not k.endswith("_embed"))
              for k, v in state.items()}
    optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-4)  # as shipped
    channels = target.shape[1]

    def step():
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32 or previous
        try:
            with autocast:
                out = forward(params, x.transpose(1, 2), t, None, heads, patch, out_channels, sdpa=sdpa)
            F.mse_loss(out[:, :, :channels].float().transpose(1, 2), target).backward()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class RandomLatents(torch.utils.data.Dataset):
    num_classes = 0

    def __init__(self, shape, count: int = 64):
        self.clips = torch.randn(count, *shape)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        return {"video": self.clips[i]}


def trainer_step(args, shape, device: torch.device, output: str):
    """Trainer.train_step on in-memory random latents of `shape` (C, F, H, W)."""
    from latte.train import trainer as trainer_module
    from latte.train.checks import load_config

    world = int(os.environ.get("WORLD_SIZE", "1"))
    overrides = [f"model.name={args.model}", f"data.num_frames={shape[1]}", f"data.resolution={shape[2]}",
                 "data.num_workers=0", f"train.batch_size={args.batch * world}", f"train.output_dir={output}",
                 f"train.device={device.type}", f"train.compile={args.compile}", f"train.parallel={args.parallel}",
                 f"train.mixed_precision={'bf16' if args.bf16 else 'fp32'}", "train.checkpoint_every=1000000",
                 f"model.grad_checkpointing={args.grad_checkpointing}"]
    trainer_module.build_training_data = lambda config: (RandomLatents(shape), None, True)
    trainer = trainer_module.Trainer(load_config(None, None, overrides), log=lambda *a: None)
    loader = trainer._loader()
    return trainer, lambda: trainer.train_step(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Latte-S/2")
    parser.add_argument("--batch", type=int, default=2, help="clips per device")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 20 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile happens here)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of --steps per row, median reported (default: 1 on CUDA, 3 on CPU)")
    parser.add_argument("--compile", action="store_true", help="also time regionally compiled latte")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="latte's rows recompute each block's activations in backward")
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                        help="the `latte train` row, under torchrun")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on CUDA")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: known GPUs)")
    parser.add_argument("--rows", default="eager,compiled,train,diffusers,official,official-sdpa")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    keep_freed_memory()  # the host-memory policy of the latte command (LATTE_SYSTEM_MALLOC=1: glibc's)
    device = torch.device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    args.steps = args.steps or (20 if device.type == "cuda" else 5)
    args.rounds = args.rounds or (1 if device.type == "cuda" else 3)
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    rows = args.rows.split(",")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    show = print if main_rank else (lambda *a, **k: None)

    torch.manual_seed(0)
    shape = (4, args.frames, args.size, args.size)
    model = create_model(args.model, num_frames=args.frames, input_size=args.size)  # stays on the CPU
    c = model.config
    flops = forward_flops(model, batch=args.batch)
    peak = mfu.peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    show(f"{args.model}: {model.num_parameters():,} params; {args.batch} clips x {'x'.join(map(str, shape[1:]))}"
         f"x{shape[0]} latents per device; {device} ({name}), {'bf16 autocast' if args.bf16 else 'fp32'}"
         f"{', activation checkpointing' if args.grad_checkpointing else ''}; "
         f"forward {flops / args.batch / 1e9:.1f} GFLOP/clip; peak "
         f"{'unknown: no MFU' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    x = torch.randn(args.batch, *shape, device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    target = torch.randn_like(x)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    state = model.state_dict()  # on the CPU: each row copies it to its own model

    def latte(compiled: bool):
        from latte.models import compile_blocks
        from latte.train.parallelize import checkpoint_blocks

        twin = create_model(args.model, num_frames=args.frames, input_size=args.size).to(device)
        twin.load_state_dict(state)
        if args.grad_checkpointing:  # before compiling, in parallelize's order
            checkpoint_blocks(twin)
        if compiled:
            compile_blocks(twin)
        return model_step(twin, {"x": x, "t": t}, target, autocast)

    def builders():
        if "eager" in rows:
            yield "latte eager", lambda: latte(False)
        if "compiled" in rows and args.compile:
            yield "latte compiled", lambda: latte(True)
        if "train" in rows:
            yield f"latte train ({args.parallel})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "latte train", \
                lambda: trainer_step(args, shape, device, tempfile.mkdtemp(prefix="train_speed_"))[1]
        if "diffusers" in rows:
            def diffusers():
                theirs = build_diffusers(c.hidden_size, c.num_heads, c.depth, c.patch_size, args.frames, args.size,
                                         c.in_channels).to(device)
                caption = torch.zeros(args.batch, 1, c.hidden_size, device=device)
                inputs = {"hidden_states": x, "timestep": t, "encoder_hidden_states": caption, "return_dict": False}
                return model_step(theirs, inputs, target, autocast, output=lambda out: out[0])
            yield "diffusers", diffusers
        common = (state, x, t, target, c.num_heads, c.patch_size, c.out_channels)
        if "official" in rows:
            yield ("official (fp32, TF32, math attn)" if device.type == "cuda" else "official (fp32, math attn)"), \
                lambda: official_step(*common, contextlib.nullcontext(), sdpa=False, tf32=device.type == "cuda")
        if "official-sdpa" in rows:
            yield f"official ({'bf16' if args.bf16 else 'fp32'}, SDPA)", \
                lambda: official_step(*common, autocast, sdpa=True)

    show(f"{'':34} {'ms/step':>9} {'clips/s':>8} {'peak GB':>8} {'MFU':>6}  first step"
         + ("  (rounds: min-max ms)" if args.rounds > 1 else ""))
    results = {}

    def report(label: str, result: dict) -> None:
        results[label] = result["ms"]
        clips = args.batch / (result["ms"] / 1000)
        utilisation = "" if peak is None else f"{mfu.utilisation(flops / args.batch, clips, peak):6.1%}"
        memory = "" if result["peak_gb"] is None else f"{result['peak_gb']:8.2f}"
        spread = f"  ({result['spread'][0]:.0f}-{result['spread'][1]:.0f})" if "spread" in result else ""
        show(f"{label:34} {result['ms']:9.1f} {clips:8.2f} {memory:>8} {utilisation:>6}  {result['first_s']:.1f} s{spread}")

    failed = []

    def failure(label: str, error: Exception) -> None:  # one broken row (a compiler missing, say) costs no other
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise error  # under torchrun the other ranks would wait in the row's collectives: end them all
        if isinstance(error, torch.OutOfMemoryError):
            show(f"{label:34} out of memory")  # a result (the row does not fit), not a failure
            return
        show(f"{label:34} failed: {one_line(error)}")
        show_traceback(label, error)
        failed.append(label)

    if args.rounds > 1:
        for label, result in interleaved(builders(), args.steps, args.warmup, args.rounds, device, failure).items():
            report(label, result)
    for label, build in builders() if args.rounds == 1 else ():
        try:
            result = measure(build, args.steps, args.warmup, device)  # the row's model and optimizer die here
        except Exception as error:
            failure(label, error)
            continue
        finally:
            gc.collect()
        report(label, result)
    ours = [label for label in results if label.startswith("latte")]
    for label in ours:
        others = [f"{results[other] / results[label]:.2f}x {other}" for other in results if other not in ours]
        if others:
            show(f"{label} speed: " + ", ".join(others))
    if failed:
        raise SystemExit(f"rows that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
