"""train.eval_every: the held-out loss (latte.train.heldout) on tiny CPU runs."""
import json
from pathlib import Path

import pytest
import torch
from test_data_video import write_video

from latte.checkpoint_files import load_checkpoint
from latte.data import build_dataset
from latte.diffusion import GaussianDiffusion
from latte.errors import LatteError
from latte.train import heldout
from latte.train.checks import load_config
from latte.train.run import train
from latte.train.trainer import Trainer

TINY = ["train.device=cpu", "data.num_workers=0", "train.eval_clips=6"]
GRID = [str(t) for t in range(50, 1000, 100)]  # DDPM's 10 bucket midpoints


def tiny_config(path: Path, *overrides: str):
    return load_config("tiny-test", None, [f"train.output_dir={path}", *TINY, *overrides])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def held_out(path: Path) -> dict[int, dict]:
    """Held-out fields by step, without the timings."""
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("heldout") and k != "heldout_seconds"}
            for r in records(path) if "heldout_loss" in r}


def test_ddpm_times_are_bucket_midpoints_over_its_whole_range():
    assert GaussianDiffusion().held_out_times(10).tolist() == list(range(50, 1000, 100))
    assert GaussianDiffusion(num_timesteps=4).held_out_times(10).tolist() == [0, 1, 2, 3]  # fewer distinct times
    assert GaussianDiffusion().held_out_times(10).dtype == GaussianDiffusion().draw_times(1, 1).dtype


def test_records_come_at_their_steps_with_one_value_per_time_bucket(tmp_path):
    train(tiny_config(tmp_path, "train.max_steps=5", "train.eval_every=2", "train.log_every=3"),
          write_samples_at_end=False)
    rows = records(tmp_path)
    assert [(r["step"], "loss" in r, "heldout_loss" in r) for r in rows] == [
        (2, False, True), (3, True, False), (4, False, True), (5, True, True)]  # at the end too, in the log record
    for row in rows:
        if "heldout_loss" not in row:
            continue
        for name in ("loss", "mse"):
            by_t = row[f"heldout_{name}_by_t"]
            assert list(by_t) == GRID
            assert row[f"heldout_{name}"] == pytest.approx(sum(by_t.values()) / len(by_t))
        assert row["heldout_loss"] > row["heldout_mse"] > 0  # learned sigma: the vb term is part of the loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("heldout/loss")] == [2, 4, 5]
    assert "heldout_mse_by_t/950" in events.Tags()["scalars"]


def test_two_evaluations_of_the_same_weights_agree_and_the_set_does_not_depend_on_the_seed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "a", "train.eval_every=1"), log=lambda *_: None)
    first, second = trainer.held_out(trainer.ema), trainer.held_out(trainer.ema)
    del first["heldout_seconds"], second["heldout_seconds"]
    assert first == second
    other = Trainer(tiny_config(tmp_path / "b", "train.eval_every=1", "train.seed=7"), log=lambda *_: None)
    assert torch.equal(other.held_out.noise, trainer.held_out.noise)
    for (x, kwargs), (y, other_kwargs) in zip(trainer.held_out.batches, other.held_out.batches):
        assert torch.equal(x, y) and torch.equal(kwargs["y"], other_kwargs["y"])
    train_digits = set(trainer.dataset.base.pool.tolist())  # Moving MNIST: the test split's digits never train
    test_digits = heldout.split_off(trainer.config, trainer.dataset)[0].base.pool
    assert not train_digits & set(test_digits.tolist())


def test_the_evaluation_leaves_training_alone_and_a_resumed_run_reports_the_same(tmp_path):
    on = train(tiny_config(tmp_path / "on", "train.max_steps=4", "train.eval_every=1"), write_samples_at_end=False)
    off = train(tiny_config(tmp_path / "off", "train.max_steps=4"), write_samples_at_end=False)
    assert on.step == off.step == 4
    a, b = load_checkpoint(tmp_path / "on"), load_checkpoint(tmp_path / "off")
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    for stream in ("torch", "noise"):  # the training streams stand where they would without the evaluation
        assert torch.equal(a["rng"][stream], b["rng"][stream])
    assert [r["loss"] for r in records(tmp_path / "on")] == [r["loss"] for r in records(tmp_path / "off")]

    train(tiny_config(tmp_path / "resumed", "train.max_steps=2", "train.eval_every=1"), write_samples_at_end=False)
    train(tiny_config(tmp_path / "resumed", "train.max_steps=4", "train.eval_every=1"), write_samples_at_end=False)
    straight, resumed = held_out(tmp_path / "on"), held_out(tmp_path / "resumed")
    assert sorted(straight) == [1, 2, 3, 4] and resumed == straight
    assert straight[4] != straight[1]  # the weights moved, and the loss says so


@pytest.fixture
def folder(tmp_path) -> Path:
    for i in range(6):
        write_video(tmp_path / "clips" / f"c{i}.mp4", 6, first=i)
    return tmp_path / "clips"


def test_a_folder_holds_out_a_slice_that_training_never_reads(tmp_path, folder):
    config = tiny_config(tmp_path / "run", "data.dataset=folder", f"data.root={folder}", "train.eval_every=2",
                         "train.eval_clips=2", "data.images_per_clip=1")
    dataset = build_dataset("folder", folder, num_frames=4, frame_interval=1, resolution=16, images_per_clip=1)
    everything = [c.path for c in dataset.clips]
    held, taken = heldout.split_off(config, dataset)
    assert taken == 2 and len(dataset) == 4 and len(held) == 2
    assert sorted([c.path for c in held.clips] + [c.path for c in dataset.clips]) == sorted(everything)
    assert not held.options.train and held.options.images_per_clip == 0 and dataset.options.train
    assert "images" in dataset[(0, 0)] and "images" not in held[0]  # joint frames only from the kept clips

    trainer = train(config, write_samples_at_end=False)
    assert len(trainer.dataset) == 4 and list(held_out(tmp_path / "run")) == [2, 4]
    with pytest.raises(LatteError, match="2 clips of the folder held out, this run holds out 0"):
        train(tiny_config(tmp_path / "run", "data.dataset=folder", f"data.root={folder}", "train.max_steps=6",
                          "data.images_per_clip=1"), write_samples_at_end=False)
    with pytest.raises(LatteError, match="more than half of the 6 clips"):
        heldout.split_off(tiny_config(tmp_path / "x", "data.dataset=folder", f"data.root={folder}", "train.eval_every=1",
                                      "train.eval_clips=4"),
                          build_dataset("folder", folder, num_frames=4, frame_interval=1, resolution=16))


def test_settings_without_held_out_clips_are_refused_in_one_line(tmp_path):
    for overrides, needle in ((["train.eval_every=-1"], "train.eval_every must be in"),
                              (["train.eval_clips=0"], "train.eval_clips must be in"),
                              (["train.eval_every=5", f"data.cache={tmp_path}"], "latent cache has no held-out slice")):
        with pytest.raises(LatteError, match=needle) as err:
            tiny_config(tmp_path, *overrides)
        assert "\n" not in str(err.value)


def test_an_objective_without_held_out_times_refuses_eval_every_in_one_line(tmp_path, monkeypatch):
    from latte.diffusion import objectives
    from latte.diffusion.objective import Objective

    class NoGrid(GaussianDiffusion):
        name = "nogrid"
        held_out_times = Objective.held_out_times  # what an objective gets unless it defines its own

    monkeypatch.setitem(objectives.OBJECTIVES, "nogrid", NoGrid)
    with pytest.raises(LatteError, match="objective nogrid defines no held-out times: set train.eval_every=0"):
        NoGrid().held_out_times(10)
    with pytest.raises(LatteError, match="diffusion.objective nogrid defines no held-out times"):
        tiny_config(tmp_path, "diffusion.objective=nogrid", "train.eval_every=1")
    assert tiny_config(tmp_path, "diffusion.objective=nogrid").train.eval_every == 0  # off: no grid needed
