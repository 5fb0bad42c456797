"""The training benchmarks that benchmarks/gpu_checks.sh runs, on tiny CPU sizes: each prints its rows
from real runs (figures mean nothing here; that the paths run and report does)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_demo_speed_times_real_latte_train_runs_of_the_preset():
    out = run("demo_speed.py", "--steps", "4", "--log-every", "2", "--device", "cpu", "--rows", "cpu-recipe,preset")
    rows = re.findall(r"^(CPU recipe|preset)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert [(label, batch) for label, batch, _, _ in rows] == [("CPU recipe", "8"), ("preset", "8")], out
    for _, batch, steps_per_s, clips_per_s in rows:  # clips/s = steps/s x batch (steps/s printed to 0.1)
        steps_per_s, clips_per_s, batch = float(steps_per_s), float(clips_per_s), int(batch)
        assert steps_per_s > 0 and abs(clips_per_s - steps_per_s * batch) <= 0.05 * batch + 0.1, out


def test_train_speed_with_activation_checkpointing_times_the_trainer_step():
    out = run("train_speed.py", "--model", "Latte-T/2", "--batch", "2", "--steps", "1", "--warmup", "1",
              "--rounds", "1", "--frames", "4", "--size", "8", "--device", "cpu", "--grad-checkpointing",
              "--rows", "eager,train")
    assert "activation checkpointing" in out.splitlines()[0], out
    assert re.search(r"^latte eager\s+[\d.]+", out, re.M) and re.search(r"^latte train\s+[\d.]+", out, re.M), out


@pytest.mark.parametrize("rounds, rows", [("1", "eager,diffusers,official"),  # one row at a time (CUDA's default)
                                          ("2", "eager,diffusers,official"),  # interleaved (CPU's default)
                                          ("2", "diffusers")])  # every row failing
def test_a_failing_row_is_named_and_the_rows_after_it_still_run(tmp_path, rounds, rows):
    # a one-shot GPU run must not lose every later row to one that breaks (a missing compiler, say):
    # here diffusers fails to import, planted ahead of the real one on the path
    (tmp_path / "diffusers").mkdir()
    (tmp_path / "diffusers" / "__init__.py").write_text('raise ImportError("planted: no diffusers here")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "train_speed.py"), "--model", "Latte-T/2", "--batch", "1",
                           "--steps", "1", "--warmup", "1", "--frames", "4", "--size", "8", "--device", "cpu",
                           "--rounds", rounds, "--rows", rows], capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout
    assert re.search(r"^diffusers\s+failed: ImportError: planted: no diffusers here$", out, re.M), out
    if rows != "diffusers":
        assert re.search(r"^latte eager\s+[\d.]+", out, re.M), out
        assert re.search(r"^official \(fp32, math attn\)\s+[\d.]+", out, re.M), out
    assert proc.returncode == 1 and "rows that failed: diffusers" in proc.stderr, proc.stderr[-2000:]
    assert "--- diffusers failed:" in proc.stderr and "Traceback" in proc.stderr, proc.stderr[-2000:]


def test_a_compile_failure_is_named_by_its_cause_not_by_the_wrapper():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from failures import one_line, stderr_cause
    finally:
        sys.path.remove(str(BENCHMARKS))
    from torch._dynamo.exc import BackendCompilerFailed

    cause = RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
    try:
        raise BackendCompilerFailed(lambda *a: None, cause, None)
    except BackendCompilerFailed as error:  # its own message starts "backend='<lambda>' raised:"
        assert one_line(error) == "RuntimeError: Failed to find C compiler. Please specify via CC environment variable."
    assert one_line(ValueError("two\nlines\n")) == "ValueError: two lines"
    tail = ("Traceback (most recent call last):\n  ...\ntorch._dynamo.exc.BackendCompilerFailed: backend='inductor' "
            "raised:\nRuntimeError: Failed to find C compiler.\n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack "
            "trace (please do this especially if you're reporting a bug to PyTorch).\n")
    assert stderr_cause(tail) == "RuntimeError: Failed to find C compiler."
    assert stderr_cause("latte train: error: no such file\n") == "latte train: error: no such file"


def test_a_failing_sampling_row_is_named_and_the_rows_after_it_still_run():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "sampling_speed.py"), "--model", "Latte-T/2",
                           "--hidden-size", "32", "--depth", "2", "--heads", "2", "--frames", "4", "--size", "8",
                           "--batch", "1", "--rows", "nosuch:2,ddim:2", "--cache", "none", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert re.search(r"^nosuch:2\s+none\s+failed: LatteError: unknown sampler 'nosuch'", out, re.M), out
    assert re.search(r"^ddim:2\s+none\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.M), out
    assert proc.returncode == 1 and "rows that failed: nosuch:2 none" in proc.stderr, proc.stderr[-2000:]


def test_a_failing_demo_row_prints_latte_trains_error_and_the_next_row_still_runs():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "demo_speed.py"), "--steps", "4", "--log-every", "2",
                           "--device", "bogus", "--rows", "cpu-recipe,preset"], capture_output=True, text=True,
                          timeout=600)
    failures = re.findall(r"^(CPU recipe|preset)\s+failed: latte train: error: train.device must be one of", proc.stdout,
                          re.M)
    assert failures == ["CPU recipe", "preset"], proc.stdout
    assert proc.returncode == 1 and "rows that failed: cpu-recipe, preset" in proc.stderr, proc.stderr[-2000:]


def test_the_direction_probe_fails_a_text_run_that_ignores_the_direction(tmp_path):
    """Two training steps cannot have learned the caption's direction: the probe prints a row per kept
    checkpoint and exits 1 naming the run."""
    from test_text_training import TINY_TEXT

    from latte.cli import main

    run_dir = tmp_path / "text"
    assert main(["train", "--preset", "moving-mnist-text", "--output-dir", str(run_dir), "--max-steps", "2",
                 "--no-samples", *[arg for o in TINY_TEXT for arg in ("--set", o)]]) == 0
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "text_direction_probe.py"), "--run", str(run_dir),
                           "--clips", "16"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)$", proc.stdout, re.M)
    assert [int(step) for step, *_ in rows] == [2], proc.stdout
    assert "IGNORES the caption's direction" in proc.stdout and str(run_dir) in proc.stdout


def test_time_to_quality_reads_each_recipe_at_its_marks_draws_the_figure_and_resumes(tmp_path):
    """Two tiny recipes for 3 s each, read at 2 marks: a row per recipe and mark; a rerun skips finished
    recipes; a recipe stopped after its first mark continues from it."""
    out, figure = tmp_path / "out", tmp_path / "ttq.png"
    args = ("--preset", "tiny-test", "--set", "train.device=cpu", "--set", "data.num_workers=0",
            "--recipe", "preset", "--recipe", "flow-uniform", "--minutes", "0.05", "--marks", "2", "--per-class", "1",
            "--classifier-steps", "2", "--cache-dir", str(tmp_path / "cache"), "--output", str(out),
            "--figure", str(figure))
    first = run("time_to_quality.py", *args)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["recipe"], r["mark"]) for r in rows] == [("preset", 1), ("preset", 2), ("flow-uniform", 1),
                                                        ("flow-uniform", 2)], first
    for r in rows:
        assert r["clips"] == 10 and 0 <= r["clip_agreement"] <= 1 and r["jitter_px"] >= 0, r
        assert r["heldout_loss"] > 0 and r["step"] >= 1 and Path(r["checkpoint"]).is_file(), r
    for recipe in ("preset", "flow-uniform"):
        marks = [r for r in rows if r["recipe"] == recipe]
        assert marks[0]["wall_seconds"] < marks[1]["wall_seconds"] and marks[1]["wall_seconds"] >= 3.0, marks
        assert marks[0]["step"] < marks[1]["step"], marks
    flow_config = yaml.safe_load((out / "flow-uniform" / "config.yaml").read_text())
    assert flow_config["diffusion"]["objective"] == "flow" and flow_config["sample"]["sampler"] == "euler"
    assert figure.stat().st_size > 10_000 and re.search(r"^flow-uniform\s+2\s+", first, re.M), first

    figure.unlink()
    again = run("time_to_quality.py", *args)
    assert "[preset] finished earlier: skipped" in again and "[flow-uniform] finished earlier: skipped" in again
    assert figure.is_file()

    # flow-uniform stopped after its first mark: its second mark and checkpoint gone, not done
    state_file = out / "flow-uniform" / "marks.json"
    state = json.loads(state_file.read_text())
    Path(state["marks"].pop()["checkpoint"]).unlink()
    del state["status"]
    state_file.write_text(json.dumps(state))
    resumed = run("time_to_quality.py", *args)
    assert "[preset] finished earlier: skipped" in resumed and "[flow-uniform] finished" not in resumed, resumed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    flow = [r for r in rows if r["recipe"] == "flow-uniform"]
    assert [r["mark"] for r in flow] == [1, 2] and flow[1]["step"] > flow[0]["step"], flow
    assert flow[1]["wall_seconds"] >= 3.0, flow

    plotted = run("time_to_quality.py", "--plot-only", "--output", str(out), "--figure", str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").is_file() and re.search(r"^preset\s+1\s+", plotted, re.M), plotted
