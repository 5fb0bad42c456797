"""Step time and peak memory of full, temporal-only and LoRA fine-tuning.

    python benchmarks/finetune_speed.py                       # CPU: Latte-S/2, 4x8x32x32 latents, batch 1
    python benchmarks/finetune_speed.py --gpu                 # GPU: Latte-1 at 512 px (4x16x64x64 latents),
                                                              # 120 random T5-width (4096) caption tokens, bf16

Each mode runs in its own process, so one mode's allocations never count towards another's. A step is
what `latte train` does: diffusion loss, backward, gradient clipping, AdamW over the trained parameters,
EMA update of the trained parameters (frozen ones are shared with the EMA copy, never duplicated).
Memory: "state" is the exact size of the training state (gradients, AdamW moments, EMA copies of the
trained tensors); "saved" the activations autograd keeps for backward (each storage once, weights
excluded; counted through saved_tensors_hooks); "added" is the peak during the steps minus what the process held before the first
step (training state, activations, allocator slack); "peak" the whole process (CPU) or device (GPU):
- CPU: resident set size; peak from getrusage(RUSAGE_SELF).ru_maxrss, baseline from /proc/self/statm.
- GPU: torch.cuda.max_memory_allocated() minus torch.cuda.memory_allocated() before the first step.
Weights are random: speed and memory do not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

MODES = ("all", "temporal", "lora")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(args):
    """(model, conditioning kwargs, latents x) for the benchmark's model on its device."""
    from latte.models import TEXT_MODELS, create_model
    from latte.train.parallelize import checkpoint_blocks

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    if args.model in TEXT_MODELS:
        model = create_model(args.model, input_size=args.size, num_frames=args.frames, in_channels=4,
                             caption_channels=args.caption_width)
        text = torch.randn(args.batch, args.caption_tokens, args.caption_width, generator=gen)
        kwargs = {"encoder_hidden_states": text.to(device),
                  "encoder_attention_mask": torch.ones(args.batch, args.caption_tokens, device=device)}
    else:
        model = create_model(args.model, num_frames=args.frames, input_size=args.size, in_channels=4)
        kwargs = {}
    if args.grad_checkpointing:  # applied from outside the model, as training does
        checkpoint_blocks(model)
    x = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=gen).to(device)
    return model.to(device), kwargs, x


def run_mode(args) -> dict:
    from latte.diffusion import GaussianDiffusion
    from latte.train import ema as ema_module
    from latte.train import finetune

    torch.manual_seed(0)
    model, kwargs, x = build(args)
    section = SimpleNamespace(trainable=args.mode, lora_rank=args.lora_rank if args.mode == "lora" else None,
                              lora_alpha=None, lora_dropout=0.0, lora_targets=None)
    finetune.apply_trainable(model, section)
    trained = [p for p in model.parameters() if p.requires_grad]
    ema = ema_module.make_ema(model)
    pairs = ema_module.ema_pairs(model, ema)
    optimizer = torch.optim.AdamW(trained, lr=1e-4, fused=x.is_cuda)
    diffusion = GaussianDiffusion(learn_sigma=model.config.learn_sigma)
    cuda = x.is_cuda
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda)
    # one forward/backward on a 2-frame 8x8 crop first: code loaded lazily on first use (peft's, autograd's)
    # then counts in the baseline, not as training memory
    with autocast:
        model(x[:, :, :2, :8, :8], torch.zeros(args.batch, dtype=torch.long, device=x.device), **kwargs).sum().backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):  # activation storages autograd keeps for backward (weights excluded), each counted once
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def step(keep_grads=False):
        t = torch.randint(0, 1000, (args.batch,), device=x.device)
        saved.clear()
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = diffusion.training_losses(model, x, t, model_kwargs=kwargs)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        if not keep_grads:
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1e-4)
        if cuda:
            torch.cuda.synchronize()

    model.train()
    for _ in range(args.warmup):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        step(keep_grads=i == args.steps - 1)
    wall, cpu = (time.perf_counter() - wall) / args.steps, (time.process_time() - cpu) / args.steps
    # exact bytes of the training state (gradients, AdamW moments, EMA copies of the trained tensors)
    moments = [v for slot in optimizer.state.values() for v in slot.values() if torch.is_tensor(v) and v.dim()]
    state = sum(t.numel() * t.element_size() for t in [p.grad for p in trained] + moments + [e for e, _ in pairs])
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": args.mode, "trained": sum(p.numel() for p in trained),
            "total": sum(p.numel() for p in model.parameters()), "step_s": wall, "cpu_s": cpu,
            "model_gb": base / 2**30, "state_gb": state / 2**30, "saved_gb": sum(saved.values()) / 2**30,
            "added_gb": (peak - base) / 2**30,
            "peak_gb": peak / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="Latte-1 at 512 px on CUDA (sets the defaults below)")
    parser.add_argument("--model", default=None, help="Latte-S/2 (CPU default), Latte-1 (GPU default), any registry name")
    parser.add_argument("--frames", type=int, default=None, help="default: 8 (CPU), 16 (GPU)")
    parser.add_argument("--size", type=int, default=None, help="latent size; default: 32 (CPU, 256 px), 64 (GPU, 512 px)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--caption-tokens", type=int, default=120)
    parser.add_argument("--caption-width", type=int, default=4096, help="T5-XXL width")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default: 2 (CPU), 10 (GPU)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.gpu
    args.device = "cuda" if gpu else "cpu"
    args.model = args.model or ("Latte-1" if gpu else "Latte-S/2")
    args.frames = args.frames or (16 if gpu else 8)
    args.size = args.size or (64 if gpu else 32)
    args.steps = args.steps or (10 if gpu else 2)
    if gpu and not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device")
    if args.child:
        args.mode = args.child
        print(json.dumps(run_mode(args)))
        return
    print(f"{args.model}, {args.batch} x 4x{args.frames}x{args.size}x{args.size} latents, {args.device}"
          f"{', bf16 autocast' if gpu else ', fp32'}, LoRA rank {args.lora_rank}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per mode, each mode in its own process")
    print(f"{'mode':9} {'trained params':>16} {'step s':>8} {'cpu s':>8} {'model GB':>9} {'state GB':>9} "
          f"{'saved GB':>9} {'added GB':>9} {'peak GB':>8}")
    forwarded = [a for a in sys.argv[1:]]
    for mode in args.modes.split(","):
        proc = subprocess.run([sys.executable, __file__, *forwarded, "--child", mode], capture_output=True, text=True)
        if proc.returncode:
            print(f"{mode:9} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{r['mode']:9} {r['trained']:>16,} {r['step_s']:>8.2f} {r['cpu_s']:>8.2f} {r['model_gb']:>9.2f} "
              f"{r['state_gb']:>9.3f} {r['saved_gb']:>9.3f} {r['added_gb']:>9.2f} {r['peak_gb']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
