"""The training benchmarks that benchmarks/gpu_checks.sh runs, on tiny CPU sizes: each prints its rows
from real runs (figures mean nothing here; that the paths run and report does)."""
import re
import subprocess
import sys
from pathlib import Path

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
