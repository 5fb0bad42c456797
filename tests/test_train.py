import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from latte.checkpoint_files import list_checkpoints, load_checkpoint
from latte.cli import main
from latte.diffusion import GaussianDiffusion
from latte.errors import LatteError
from latte.train import trainer as trainer_module
from latte.train.checks import load_config
from latte.train.run import train

TINY = ["train.device=cpu", "data.num_workers=0"]


def tiny_config(tmp_path: Path, *overrides: str):
    return load_config("tiny-test", None, [f"train.output_dir={tmp_path}", *TINY, *overrides])


def final_state(path: Path) -> dict:
    return load_checkpoint(path)


def test_config_errors_are_one_line_and_name_the_key():
    for override, needle in [("optim.lrr=1", "optim.lrr"), ("optim.lr=abc", "optim.lr"), ("colour.x=1", "colour"),
                             ("train.mixed_precision=fp8", "mixed_precision"), ("nodot=1", "SECTION.KEY")]:
        with pytest.raises(LatteError) as err:
            load_config("tiny-test", None, [override])
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path):
    for argv in (["train", "--set", "optim.lrr=1"], ["train", "--config", str(tmp_path / "missing.yaml")],
                 ["sample", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "x.mp4")]):
        proc = subprocess.run([sys.executable, "-m", "latte.cli", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "error" in proc.stderr


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "--preset", "tiny-test", "--dry-run", "--set", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "dataset: moving-mnist" in out


def test_a_cuda_mapping_applies_on_a_gpu_only_and_before_the_later_layers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, whatever this machine has
    cpu = load_config("moving-mnist")
    assert cpu.train.batch_size == 8 and cpu.data.num_workers == 1  # no GPU: the CPU recipe
    gpu = load_config("moving-mnist", None, ["train.device=cuda"])
    assert gpu.train.batch_size == 32 and gpu.data.num_workers == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto picks a GPU where one is visible
    assert load_config("moving-mnist").train.batch_size == 32
    assert load_config("moving-mnist", None, ["train.device=cpu"]).train.batch_size == 8
    assert load_config("moving-mnist", None, ["train.batch_size=8"]).train.batch_size == 8  # --set wins
    own = tmp_path / "own.yaml"  # a later file's own settings win over the preset's cuda: settings ...
    own.write_text("train:\n  batch_size: 16\n  max_steps: 7\ncuda:\n  train:\n    max_steps: 9\n")
    assert load_config("moving-mnist", str(own)).train.batch_size == 16
    assert load_config("moving-mnist", str(own)).train.max_steps == 9  # ... and its own cuda: wins over them
    assert load_config("moving-mnist", str(own), ["train.device=cpu"]).train.max_steps == 7
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for text, needle in [("cuda:\n  train:\n    batch_sise: 4\n", "train.batch_sise"),  # checked on any machine
                         ("cuda:\n  train:\n    device: cpu\n", "train.device"), ("cuda: 3\n", "mapping"),
                         ("cuda: []\n", "mapping"), ("cuda: false\n", "mapping")]:
        own.write_text(text)
        with pytest.raises(LatteError, match=needle):
            load_config(None, str(own))
    capsys.readouterr()
    assert main(["train", "--dry-run", "--set", "train.device=cuda"]) == 0  # the dry run shows the GPU recipe
    assert "batch_size: 32" in capsys.readouterr().out


def test_resumed_training_equals_uninterrupted_training_bitwise(tmp_path):
    straight = train(tiny_config(tmp_path / "a", "train.max_steps=4"), write_samples_at_end=False)
    train(tiny_config(tmp_path / "b", "train.max_steps=2"), write_samples_at_end=False)
    resumed = train(tiny_config(tmp_path / "b", "train.max_steps=4"), write_samples_at_end=False)
    assert resumed.step == straight.step == 4
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    assert a["samples_seen"] == b["samples_seen"] == 16


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    train(tiny_config(tmp_path, "train.max_steps=1"), write_samples_at_end=False)
    with pytest.raises(LatteError, match="another config"):
        train(tiny_config(tmp_path, "train.max_steps=2", "optim.lr=0.1"), write_samples_at_end=False)


def test_a_checkpoint_from_before_a_key_existed_resumes_with_that_keys_default():
    from latte.config import resume_differences

    config = tiny_config("unused")
    stored = config.to_dict()
    del stored["diffusion"]["loss_weighting"]  # written before the key was added
    assert resume_differences(stored, config) == []
    changed = tiny_config("unused", "diffusion.loss_weighting=min-snr")
    assert resume_differences(stored, changed) == ["diffusion.loss_weighting: checkpoint 'none', now 'min-snr'"]


def test_checkpoints_are_pruned_and_written_atomically(tmp_path):
    train(tiny_config(tmp_path, "train.max_steps=6", "train.checkpoint_every=1", "train.keep_checkpoints=2"),
          write_samples_at_end=False)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_0000005.pt", "step_0000006.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".tmp"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and '"clips_per_s"' in lines[0] and '"tokens_per_s"' in lines[0]


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "train.max_steps=5", "train.checkpoint_every=2")
    original = GaussianDiffusion.training_losses
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        out = original(self, *args, **kwargs)
        if calls["n"] >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_losses", poisoned)
    with pytest.raises(LatteError, match="non-finite at step 3.*step_0000002.pt"):
        train(config, write_samples_at_end=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002.pt"]
    assert load_checkpoint(tmp_path)["step"] == 2


class FewClips(torch.utils.data.Dataset):
    num_classes = 0

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.clips = torch.rand(4, 1, 4, 16, 16, generator=gen) * 2 - 1

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"video": self.clips[i]}


def test_loss_goes_down_when_overfitting_a_few_clips(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "build_training_data", lambda config: (FewClips(), None, True))
    config = tiny_config(tmp_path, "train.max_steps=150", "train.checkpoint_every=1000", "train.log_every=25",
                         "optim.lr=3e-3", "model.hidden_size=64", "model.learn_sigma=false")
    trainer = trainer_module.Trainer(config)
    (tmp_path).mkdir(exist_ok=True)
    trainer.fit()

    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0], losses


def test_two_process_ddp_matches_one_process(tmp_path):
    common = ["--preset", "tiny-test", "--max-steps", "3", "--no-samples", "--set", "train.device=cpu",
              "--set", "data.num_workers=0", "--set", "train.checkpoint_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "latte.cli", "train", "--output-dir", str(tmp_path / "one"), *common],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    with socket.socket() as probe:  # a port nobody holds now, not a fixed one another run may still hold
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                          "-m", "latte.cli", "train", "--output-dir", str(tmp_path / "two"), *common],
                         capture_output=True, text=True, env=env)
    assert ddp.returncode == 0, ddp.stderr[:3000] + "\n...\n" + ddp.stderr[-1000:]  # the root cause comes first
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert two["world_size"] == 2
    for name, tensor in one["model"].items():
        torch.testing.assert_close(tensor, two["model"][name], rtol=1e-4, atol=1e-5)


def test_sample_writes_an_mp4_that_decodes_to_the_frame_count_and_is_seeded(tmp_path):
    train(tiny_config(tmp_path / "run", "train.max_steps=2"), write_samples_at_end=False)
    out = tmp_path / "video.mp4"
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--output", str(out), "--num-videos", "1",
                 "--steps", "3", "--seed", "5", "--device", "cpu"]) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f for f in container.decode(stream)]
        assert len(frames) == 4 and stream.codec_context.name == "h264"
    for name in ("a.npz", "b.npz"):
        assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / name),
                     "--num-videos", "2", "--steps", "3", "--seed", "5", "--sampler", "ddpm", "--device", "cpu"]) == 0
    import numpy as np

    a, b = np.load(tmp_path / "a.npz")["videos"], np.load(tmp_path / "b.npz")["videos"]
    assert a.shape == (2, 1, 4, 16, 16) and np.array_equal(a, b)


def test_folder_sampling_is_resumable(tmp_path):
    train(tiny_config(tmp_path / "run", "train.max_steps=1"), write_samples_at_end=False)
    folder = tmp_path / "many"
    args = ["sample", "--checkpoint", str(tmp_path / "run"), "--output", str(folder), "--steps", "2",
            "--sampler", "ddim", "--device", "cpu", "--batch-size", "2"]
    assert main(args + ["--num-videos", "3"]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}
    assert sorted(first) == ["000000.mp4", "000001.mp4", "000002.mp4"]
    assert main(args + ["--num-videos", "5"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}
    assert len(after) == 5 and all(after[n] == t for n, t in first.items())
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    classes = load_checkpoint(tmp_path / "run")["model_config"]["num_classes"]
    assert [r["path"] for r in rows] == sorted(after) and [r["seed"] for r in rows] == list(range(len(rows)))
    assert [r["label"] for r in rows] == [i % classes for i in range(5)]


def test_convert_official_checkpoint_then_sample_from_it(tmp_path):
    from latte.models import create_model

    source = create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=3, in_channels=1)
    torch.save({"ema": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ffs.pt")
    assert main(["convert", "--from", "official", "--to", "latte", str(tmp_path / "ffs.pt"), str(tmp_path / "ffs-latte.pt")]) == 0
    assert main(["sample", "--checkpoint", str(tmp_path / "ffs-latte.pt"), "--output", str(tmp_path / "s.npz"),
                 "--num-videos", "1", "--sampler", "ddim", "--steps", "2", "--device", "cpu"]) == 0
    import numpy as np

    assert np.load(tmp_path / "s.npz")["videos"].shape == (1, 1, 4, 8, 8)
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    proc = subprocess.run([sys.executable, "-m", "latte.cli", "convert", "--from", "official", "--to", "latte",
                           str(tmp_path / "other.pt"), str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "not a Latte checkpoint" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = train(tiny_config(tmp_path / "full", "train.max_steps=2"), write_samples_at_end=False)
    accum = train(tiny_config(tmp_path / "accum", "train.max_steps=2", "train.grad_accum=2"), write_samples_at_end=False)
    for (name, a), b in zip(full.model.state_dict().items(), accum.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_ema_warmup_caps_the_decay_at_the_start(tmp_path):
    from latte.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, "train.ema_decay=0.9999", "train.ema_warmup=true"), log=lambda *a: None)
    start = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.train_step(iter(trainer._loader()))  # step 0: decay min(0.9999, 1/10) = 0.1
    for name, param in trainer.model.named_parameters():
        expected = 0.1 * start[name] + 0.9 * param.detach()
        torch.testing.assert_close(trainer.ema.state_dict()[name], expected)


def test_lr_warms_up_holds_and_decays_to_zero_over_the_last_steps(tmp_path):
    from latte.train.trainer import Trainer

    config = tiny_config(tmp_path, "optim.lr=1e-3", "optim.warmup_steps=4", "optim.decay_steps=10",
                         "train.max_steps=40")
    trainer = Trainer(config, log=lambda *a: None)
    lrs = [trainer.lr_at(step) for step in range(40)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:30] == pytest.approx([1e-3] * 26)
    assert lrs[30:] == pytest.approx([1e-3 * k / 10 for k in range(10, 0, -1)])  # the last step still moves
    trainer.train_step(iter(trainer._loader()))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    with pytest.raises(LatteError, match="decay_steps"):
        tiny_config(tmp_path, "optim.decay_steps=41", "train.max_steps=40")


def test_timestep_power_draws_high_noise_steps_more_often(tmp_path):
    from latte.train.trainer import Trainer

    def drawn(power: str) -> torch.Tensor:
        trainer = Trainer(tiny_config(tmp_path / power, f"diffusion.timestep_power={power}", "train.batch_size=64"),
                          log=lambda *a: None)
        return torch.cat([trainer._draw(torch.Size([64, 1]), None)[0] for _ in range(40)]).float()  # 2560 steps

    uniform, high = drawn("1.0"), drawn("0.4")
    T = 1000
    assert high.min() >= 0 and high.max() <= T - 1
    # P(t >= 0.7 T) is 0.3 for uniform draws and 1 - 0.7 ** 2.5 = 0.59 for u ** 0.4
    assert abs((uniform >= 700).float().mean() - 0.30) < 0.04
    assert abs((high >= 700).float().mean() - (1 - 0.7 ** 2.5)) < 0.04
    with pytest.raises(LatteError, match="timestep_power"):
        tiny_config(tmp_path, "diffusion.timestep_power=0")


def test_timestep_power_until_returns_to_uniform_draws_at_that_step(tmp_path):
    from latte.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, "diffusion.timestep_power=0.25", "diffusion.timestep_power_until=30",
                                  "train.max_steps=40", "train.batch_size=64"), log=lambda *a: None)

    def drawn(step: int) -> torch.Tensor:
        trainer.step = step
        return torch.cat([trainer._draw(torch.Size([64, 1]), None)[0] for _ in range(40)]).float()

    # P(t >= 0.7 T): 1 - 0.7 ** 4 = 0.76 before step 30, 0.30 (uniform) from it on
    assert abs((drawn(29) >= 700).float().mean() - (1 - 0.7 ** 4)) < 0.04
    assert abs((drawn(30) >= 700).float().mean() - 0.30) < 0.04
    with pytest.raises(LatteError, match="timestep_power_until"):
        tiny_config(tmp_path, "diffusion.timestep_power_until=-1")
    tiny_config(tmp_path, "diffusion.timestep_power_until=41", "train.max_steps=40")  # a short run keeps the power
