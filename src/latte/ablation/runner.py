"""Running a study: every option (and seed) is an ordinary training run, in its own folder.

Each run is built and trained by latte.train.trainer.Trainer exactly as `latte train` does (same
checkpoints, same resume), with the EMA model scored every --eval-every steps (on rank 0 under
torchrun). A run's folder D/<study>/<option>-seed<k> holds its checkpoints, metrics.jsonl,
evals.jsonl and ablate.json (status). Running the study again skips runs whose ablate.json says
done with the same steps and evaluation settings, resumes the others from their latest
checkpoint, and retries failed ones. A run whose resolved config, seed, steps and evaluation equal
those of a finished run of another study in the same output folder (every study's default option,
for one) is not trained again: that run's folder is copied (checkpoints hard-linked where the disk
allows) and its record says where it came from. A failing run is recorded with its one-line error
and the study goes on.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed
import yaml

from latte.ablation.evaluation import EvalSettings, Evaluator
from latte.ablation.studies import Option, Study
from latte.config import Config
from latte.data.cache import atomic_write_text
from latte.errors import LatteError
from latte.models import Latte, forward_flops
from latte.train.checks import held_out_refusal, load_config, validate

STATE_FILE = "ablate.json"
EVALS_FILE = "evals.jsonl"


@dataclass
class StudyPlan:
    study: Study
    preset: str | None
    config_file: str | None
    overrides: list[str]  # the user's --set, applied before each option's own
    output: Path  # D/<study>
    seeds: int = 1
    max_steps: int | None = None
    eval_every: int | None = None  # None: a quarter of the run
    eval: EvalSettings = field(default_factory=EvalSettings)

    def run_dir(self, option: Option, seed_index: int) -> Path:
        return self.output / f"{option.name}-seed{seed_index}"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line cut short by a crash is skipped."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_evals(run_dir: Path) -> list[dict]:
    """Evaluation records by step (a step evaluated again after a resume keeps its last record)."""
    by_step = {int(r["step"]): r for r in read_jsonl(run_dir / EVALS_FILE) if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def option_config(plan: StudyPlan, option: Option, seed_index: int) -> Config:
    """The run's config: user config, then the option's overrides, then the study's own settings."""
    config = load_config(plan.preset, plan.config_file, [*plan.overrides, *option.overrides])
    t = config.train
    t.output_dir = str(plan.run_dir(option, seed_index))
    t.seed += seed_index
    if plan.max_steps is not None:
        t.max_steps = plan.max_steps
    t.sample_every = eval_every(plan, config)  # Trainer.fit calls the evaluation hook at these steps
    if not t.eval_every and config.data.is_moving_mnist and held_out_refusal(config) is None:
        t.eval_every = t.sample_every  # held-out loss on the test split (a folder's slice only when asked)
    t.checkpoint_every = min(t.checkpoint_every, t.sample_every)  # a resumed run loses no evaluated steps
    validate(config)
    return config


def eval_every(plan: StudyPlan, config: Config) -> int:
    every = plan.eval_every or max(1, config.train.max_steps // 4)
    if every < 1:
        raise LatteError(f"--eval-every must be >= 1, got {every}")
    return every


def run_measurements(trainer, run_dir: Path) -> dict:
    """Size, cost and speed of a finished run: parameters, forward GFLOPs per clip, median clips/s, final loss,
    and the held-out loss of its last evaluation (train.eval_every)."""
    everything = read_jsonl(run_dir / "metrics.jsonl")
    records = [r for r in everything if "loss" in r]
    held = [r for r in everything if "heldout_loss" in r]
    speeds = sorted(r["clips_per_s"] for r in records if r.get("clips_per_s"))
    tail = records[-max(1, len(records) // 10):]
    model = trainer.model
    return {"parameters": model.num_parameters(),
            "gflops_per_clip": forward_flops(model) / 1e9 if isinstance(model, Latte) else None,
            "clips_per_s": speeds[len(speeds) // 2] if speeds else None,
            "final_loss": sum(r["loss"] for r in tail) / len(tail) if tail else None,
            "heldout_loss": max(held, key=lambda r: r["step"])["heldout_loss"] if held else None}


def run_identity(config: dict) -> dict:
    """What makes two runs the same run: the resolved config without the folder it writes to."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "output_dir"}}


def same_run_elsewhere(plan: StudyPlan, config: Config, record: dict) -> Path | None:
    """A finished run of another study under the same output folder that this run would repeat exactly."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun every rank trains (no rank may decide alone)
        return None
    wanted = run_identity(yaml.safe_load(config.to_yaml()))
    for state in sorted(plan.output.parent.glob(f"*/*/{STATE_FILE}")):
        other = state.parent
        prior = read_json(state)
        if other.parent == plan.output or other.name.startswith(".") or not prior or prior.get("status") != "done":
            continue
        if prior.get("eval") != record["eval"]:  # seed, steps and evaluation interval are in the config
            continue
        try:
            if run_identity(yaml.safe_load((other / "config.yaml").read_text())) == wanted:
                return other
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
    return None


def copy_run(source: Path, run_dir: Path, config: Config, record: dict) -> dict:
    """`source`'s folder as this run's (checkpoints hard-linked, or copied across disks), written under a
    temporary name and renamed, so a crash leaves no half-copied run."""
    def link_or_copy(src, dst):
        if str(src).endswith(".pt"):
            try:
                return os.link(src, dst)
            except OSError:
                pass
        return shutil.copy2(src, dst)

    staging = run_dir.with_name(f".{run_dir.name}.copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=link_or_copy, ignore=shutil.ignore_patterns(".latte.lock"))
    atomic_write_text(staging / "config.yaml", config.to_yaml())
    prior = read_json(source / STATE_FILE)
    measured = {k: prior.get(k) for k in ("parameters", "gflops_per_clip", "clips_per_s", "final_loss",
                                          "heldout_loss", "status", "seconds")}
    done = {**record, **measured, "reused_from": f"{source.parent.name}/{source.name}"}
    atomic_write_text(staging / STATE_FILE, json.dumps(done, indent=2) + "\n")
    os.replace(staging, run_dir)
    return done


def one_line_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(exc, LatteError) else f"{type(exc).__name__}: {message}".rstrip(": ")


def run_option(plan: StudyPlan, option: Option, seed_index: int, log=print) -> dict:
    """Train and evaluate one (option, seed) run, or skip it when finished earlier; never raises for a
    failing run (its record says failed, with the error)."""
    # local: the trainer imports torch.distributed.tensor (~0.7 s), and `latte --help` imports this module
    from latte.train.trainer import Trainer, describe

    run_dir = plan.run_dir(option, seed_index)
    # run_dir: the run's folder inside the study folder, so a study folder can be moved (docs/ablations/)
    record = {"option": option.name, "seed_index": seed_index, "run_dir": run_dir.name, "overrides": option.overrides}
    label = f"[{plan.study.name} {option.name} seed {seed_index}]"
    main = is_main_process()
    try:
        config = option_config(plan, option, seed_index)
        record.update(seed=config.train.seed, max_steps=config.train.max_steps, eval_every=config.train.sample_every,
                      eval=plan.eval.signature())
        prior = read_json(run_dir / STATE_FILE)
        if prior and prior.get("status") == "done" and all(prior.get(k) == record[k] for k in
                                                          ("max_steps", "eval_every", "eval", "overrides")):
            log(f"{label} finished earlier: skipped")
            return {**prior, "run_dir": record["run_dir"], "evals": read_evals(run_dir)}
        source = None if run_dir.exists() else same_run_elsewhere(plan, config, record)
        if source is not None:
            done = copy_run(source, run_dir, config, record)
            log(f"{label} the same run as {done['reused_from']} (same config, seed, steps and readings): copied, not trained")
            return {**done, "evals": read_evals(run_dir)}
        start = time.perf_counter()
        trainer = Trainer(config, log=lambda *_: None)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
            log(f"{label} {describe(trainer)}")
        evaluator = Evaluator(trainer, plan.eval)
        done = {r["step"] for r in read_evals(run_dir)}

        def evaluate(tr) -> None:
            if tr.step in done:
                return
            result = evaluator(tr)
            with open(run_dir / EVALS_FILE, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.add(tr.step)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items() if not k.startswith(("real", "class")))
            log(f"{label} step {tr.step}: {shown or 'no metric'} ({result['seconds']:.0f} s)")

        trainer.fit(on_sample=evaluate)
        if main:
            evaluate(trainer)  # the final step (fit evaluates only the steps before it)
            record.update(run_measurements(trainer, run_dir))
        record.update(status="done", seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 (a failing option must not stop the study)
        record.update(status="failed", error=one_line_error(exc))
        log(f"{label} failed: {record['error']}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / STATE_FILE, json.dumps(record, indent=2) + "\n")
    sys.stdout.flush()
    return {**record, "evals": read_evals(run_dir)}


def run_study(plan: StudyPlan, log=print, on_progress=None) -> list[dict]:
    """Every option x seed in order; `on_progress(results)` after each run (the report is rewritten)."""
    results = []
    try:
        for option in plan.study.options:
            for seed_index in range(plan.seeds):
                results.append(run_option(plan, option, seed_index, log))
                if on_progress is not None and is_main_process():
                    on_progress(results)
    finally:  # under torchrun the runs share one process group (joined again per run, it can hang)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return results
