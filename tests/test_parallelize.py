"""train/parallelize.py: activation checkpointing, regional compile, FSDP2 on CPU (gloo), and the
properties they must keep (state_dict keys, results within tolerance of eager one-process training)."""
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from latte.checkpoint_files import load_checkpoint
from latte.models import build_model, create_model, forward_flops
from latte.models.blocks import LatteBlock
from latte.models.conditioning import AdaLNContext, SingleContext, TokenContext
from latte.sampling import generate
from latte.train import mfu, parallelize
from latte.train.checks import load_config
from latte.train.parallelize import checkpoint_blocks
from latte.train.run import sample_request, train

TINY = ["train.device=cpu", "data.num_workers=0"]


def tiny_config(path, *overrides):
    return load_config("tiny-test", None, [f"train.output_dir={path}", *TINY, *overrides])


def free_port() -> str:
    with socket.socket() as probe:  # a port nobody holds now
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def torchrun(output, steps: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               "-m", "latte.cli", "train", "--preset", "tiny-test", "--output-dir", str(output),
               "--max-steps", str(steps), "--set", "train.device=cpu", "--set", "data.num_workers=0",
               "--set", "train.parallel=fsdp", *extra]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    return proc


def test_fsdp_on_two_cpu_processes_matches_one_process_and_resumes_exactly(tmp_path):
    single = train(tiny_config(tmp_path / "one", "train.max_steps=4"), write_samples_at_end=False)
    torchrun(tmp_path / "fsdp", 4, "--no-samples")  # checkpoints at steps 2 and 4
    for copy in ("resumed", "middle"):  # two runs that stopped at step 2
        (tmp_path / copy / "checkpoints").mkdir(parents=True)
        shutil.copy(tmp_path / "fsdp" / "checkpoints" / "step_0000002.pt", tmp_path / copy / "checkpoints")
    torchrun(tmp_path / "resumed", 4)  # also writes the final samples from the gathered EMA
    straight, resumed = load_checkpoint(tmp_path / "fsdp"), load_checkpoint(tmp_path / "resumed")
    assert straight["world_size"] == 2 and straight["config"]["train"]["parallel"] == "fsdp"
    assert list(straight["model"]) == list(single.model.state_dict())  # the keys a plain model has
    for key in ("model", "ema"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"resumed {key}.{name} differs"
            torch.testing.assert_close(tensor, getattr(single, key).state_dict()[name], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "resumed" / "samples" / "final.png").is_file()
    # the single-file checkpoint rebuilds a plain model (as `latte sample` does) ...
    build_model(straight["model_config"]).load_state_dict(straight["ema"])
    # ... and its optimizer state is index-keyed like a one-process run's: one process continues it
    continued = train(tiny_config(tmp_path / "middle", "train.max_steps=4", "train.parallel=fsdp"),
                      write_samples_at_end=False)
    for name, tensor in continued.model.state_dict().items():
        torch.testing.assert_close(tensor, straight["model"][name], rtol=1e-4, atol=1e-5)


# A cold inductor compile of the tiny model (2 block graphs, forward and backward) took 258 s on the 2
# shared CPU cores this was written on; CI runs the same path through dynamo and AOTAutograd only.
INDUCTOR = pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("LATTE_SLOW_TESTS"), reason="cold inductor compile takes minutes on CPU: LATTE_SLOW_TESTS=1")])


@pytest.mark.parametrize("backend", ["aot_eager", INDUCTOR])
def test_compiled_training_matches_eager_and_keeps_state_dict_keys(tmp_path, monkeypatch, backend):
    monkeypatch.setattr(parallelize, "compile_blocks", functools.partial(parallelize.compile_blocks, backend=backend))
    eager = train(tiny_config(tmp_path / "eager", "train.max_steps=2"), write_samples_at_end=False)
    start = time.perf_counter()
    compiled = train(tiny_config(tmp_path / "compiled", "train.max_steps=2", "train.compile=true"),
                     write_samples_at_end=False)
    print(f"tiny model, {backend}: 2 compiled steps (compile included) in {time.perf_counter() - start:.1f} s")
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in compiled.model.blocks)
    stored = load_checkpoint(tmp_path / "compiled")
    assert list(stored["model"]) == list(eager.model.state_dict())
    for name, tensor in eager.model.state_dict().items():
        torch.testing.assert_close(stored["model"][name], tensor, rtol=1e-4, atol=1e-5)
    request = sample_request(eager.config, num_videos=2)
    videos = [generate(run.ema, run.diffusion, request, progress=False)[0] for run in (eager, compiled)]
    torch.testing.assert_close(videos[0], videos[1], rtol=1e-3, atol=1e-3)


def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients_and_keys():
    torch.manual_seed(0)
    plain = create_model("Latte-T/2", depth=2, hidden_size=32, num_heads=2, num_frames=4, input_size=8,
                         num_classes=3, class_dropout=0.0)
    wrapped = create_model("Latte-T/2", depth=2, hidden_size=32, num_heads=2, num_frames=4, input_size=8,
                           num_classes=3, class_dropout=0.0)
    wrapped.load_state_dict(plain.state_dict())
    checkpoint_blocks(wrapped)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    calls = []
    original = LatteBlock.forward

    def counting(self, *args, **kwargs):
        calls.append(self.kind)
        return original(self, *args, **kwargs)

    x, t, y = torch.randn(2, 4, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([0, 2])
    grads = []
    LatteBlock.forward = counting
    try:
        runs = []
        for model in (plain, wrapped):
            calls.clear()
            model(x, t, y).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
            runs.append(len(calls))
        assert runs == [len(plain.blocks), 2 * len(wrapped.blocks)]  # checkpointed blocks ran again in backward
        calls.clear()
        with torch.no_grad():
            wrapped(x, t, y)
        assert len(calls) == len(wrapped.blocks)  # no recomputation without autograd
    finally:
        LatteBlock.forward = original
    torch.testing.assert_close(grads[0], grads[1])


def _block_inputs(kind: str, conditioning: str):
    """A block of `kind` under `conditioning` and its inputs: tokens (B, F, N, D) and the Context."""
    B, F, N, D, K, L = 2, 4, 16, 32, 2, 5
    x = torch.randn(B, F, N, D)
    if conditioning == "adaln":
        ctx = AdaLNContext(F, None, frames=torch.randn(B, F, D))
    elif conditioning == "tokens":
        ctx = TokenContext(F, None, tokens=torch.randn(B, F, K, D))
    else:  # adaLN-single with caption cross-attention
        ctx = SingleContext(F, None, shared=torch.randn(B, F, 6 * D), t_emb=torch.randn(B, F, D),
                            text=torch.randn(B, 1, L, D), text_bias=torch.zeros(B, 1, L))
    block = LatteBlock(kind, D, 2, 4.0, conditioning, cross_attention=conditioning == "adaln-single" and kind != "temporal")
    return block, (x, ctx)


@pytest.mark.parametrize("conditioning", ["adaln", "tokens", "adaln-single"])
def test_no_graph_break_inside_a_block_of_any_kind(conditioning):
    torch._dynamo.reset()
    for kind in ("spatial", "temporal", "factorised", "split"):
        block, args = _block_inputs(kind, conditioning)
        explained = torch._dynamo.explain(block)(*args)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, (kind, explained.break_reasons)
    if conditioning == "adaln":  # and a checkpointed block
        model = create_model("Latte-T/2", depth=2, hidden_size=32, num_heads=2, num_frames=4, input_size=8)
        checkpoint_blocks(model)
        block, (x, ctx_c) = model.blocks[0], _block_inputs("spatial", "adaln")[1]
        explained = torch._dynamo.explain(block)(x, ctx_c)
        assert explained.graph_break_count == 0, explained.break_reasons


def test_bf16_autocast_forward_is_close_to_fp32():
    torch.manual_seed(0)
    model = create_model("Latte-T/2", depth=2, hidden_size=64, num_heads=2, num_frames=4, input_size=16,
                         num_classes=3).eval()
    for p in model.parameters():  # a trained model's outputs are not zero: leave the zero init
        p.data.normal_(0, 0.05)
    x, t, y = torch.randn(2, 4, 4, 16, 16), torch.tensor([10, 900]), torch.tensor([0, 1])
    with torch.no_grad():
        full = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, t, y)
    assert half.dtype == torch.bfloat16
    error = (half.float() - full).norm() / full.norm()
    assert error < 2e-2, float(error)


def test_mfu_is_logged_with_a_given_peak_and_counts_three_forward_passes(tmp_path):
    run = train(tiny_config(tmp_path / "peak", "train.max_steps=2", "train.peak_tflops=0.001"),
                write_samples_at_end=False)
    flops = mfu.train_flops_per_clip(run)
    assert flops == forward_flops(run.model, batch=1)  # the model package's count of the same clip
    records = [json.loads(line) for line in (tmp_path / "peak" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["mfu"] == pytest.approx(3 * flops * record["clips_per_s"] / 1e9)
    train(tiny_config(tmp_path / "cpu", "train.max_steps=1"), write_samples_at_end=False)
    assert "mfu" not in (tmp_path / "cpu" / "metrics.jsonl").read_text()  # no known CPU peak


def test_peak_flops_of_known_gpus(monkeypatch):
    assert mfu.peak_flops(torch.device("cpu")) is None
    assert mfu.peak_flops(torch.device("cpu"), 10.0) == 10e12
    for name, tflops in [("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.5), ("NVIDIA H100 80GB HBM3", 989.4),
                         ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce RTX 4090", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert mfu.peak_flops(torch.device("cuda")) == (None if tflops is None else tflops * 1e12), name


def test_text_model_flops_are_counted_on_the_meta_device():
    from types import SimpleNamespace

    from torch.utils.flop_counter import FlopCounterMode

    from latte.models import create_model

    model = create_model("LatteT2V-T", caption_channels=16).eval()
    trainer = SimpleNamespace(model_config=model.config, text_encoder=SimpleNamespace(max_length=6),
                              config=SimpleNamespace(data=SimpleNamespace(images_per_clip=0)))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # a real forward on the CPU
        model(torch.zeros(1, 4, 4, 8, 8), torch.zeros(1, dtype=torch.long),
              encoder_hidden_states=torch.zeros(1, 1, 6, 16), encoder_attention_mask=torch.ones(1, 1, 6, dtype=torch.long))
    real = counter.get_total_flops()
    # SDPA is counted by formula on the meta device, through its CPU kernel's parts here: within a few %
    assert mfu.train_flops_per_clip(trainer) == pytest.approx(real, rel=0.05) and real > 0
