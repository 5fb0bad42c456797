"""Speed of the built-in default (`latte train`, the moving-mnist preset) on this machine, row by row:

  CPU recipe            the preset as it trains on a CPU (its `cuda:` keys at their CPU values: batch 8);
  preset                the preset as it resolves here (on a GPU its `cuda:` settings: batch 32);
  preset, compiled      the same with train.compile=true (each block compiled on its own).

Each row is a real `latte train` run of --steps steps in a temporary folder, alone in its process,
without sample filmstrips. Steps/s and clips/s are the median of metrics.jsonl's log windows after
the first (the first holds start-up, loader workers and compilation; its wall time is shown apart).

    python benchmarks/demo_speed.py                      # GPU: 600 steps per row
    python benchmarks/demo_speed.py --steps 20 --log-every 5 --device cpu
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from failures import stderr_cause  # benchmarks/failures.py, beside this file

PRESET = "moving-mnist"  # `latte train`'s default
ROWS = {"cpu-recipe": "CPU recipe", "preset": "preset", "compiled": "preset, compiled"}


def cpu_recipe() -> list[str]:
    """--set overrides that give every key of the preset's `cuda:` mapping its value on a CPU."""
    from latte.config import PRESET_DIR, read_yaml, split_cuda
    from latte.train.checks import load_config

    _, cuda = split_cuda(read_yaml(PRESET_DIR / f"{PRESET}.yaml", "preset"), PRESET)
    on_cpu = load_config(PRESET, None, ["train.device=cpu"]).to_dict()
    return [f"{section}.{key}={on_cpu[section][key]}" for section, keys in cuda.items() for key in keys]


class RowFailed(Exception):
    """A row's `latte train` exited non-zero; the message is the line of its stderr that names the error."""


def run_row(overrides: list[str], args, folder: Path) -> dict:
    """One `latte train` run; its log windows from metrics.jsonl and its wall time."""
    command = [sys.executable, "-m", "latte.cli", "train", "--preset", PRESET, "--output-dir", str(folder),
               "--max-steps", str(args.steps),
               "--no-samples", "--set", f"train.device={args.device}", "--set", f"train.log_every={args.log_every}",
               "--set", "train.sample_every=0", "--set", f"train.checkpoint_every={args.steps}",
               *[item for text in overrides for item in ("--set", text)]]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"--- {' '.join(command)} failed (exit {proc.returncode}); its stderr ends:\n{proc.stderr[-4000:]}",
              file=sys.stderr)
        raise RowFailed(stderr_cause(proc.stderr) or f"exit code {proc.returncode}")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    batch = yaml.safe_load((folder / "config.yaml").read_text())["train"]["batch_size"]  # as the run resolved it
    return {"wall_s": wall, "records": records, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per row")
    parser.add_argument("--log-every", type=int, default=100, help="log window (steps)")
    parser.add_argument("--device", default="auto", help="train.device of every row")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    args = parser.parse_args()
    if args.steps < 2 * args.log_every:
        parser.error("--steps must cover at least two log windows (the first holds start-up)")
    rows = args.rows.split(",")
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    print(f"{'':24} {'batch':>5} {'steps/s':>8} {'clips/s':>8} {'peak GB':>8}  first window  whole run")
    overrides = {"cpu-recipe": cpu_recipe(), "preset": [], "compiled": ["train.compile=true"]}
    failed = []
    for row in rows:
        label = ROWS[row]
        with tempfile.TemporaryDirectory(prefix="demo_speed_") as tmp:
            try:
                result = run_row(overrides[row], args, Path(tmp) / "run")
            except RowFailed as error:  # the rows after it still run
                print(f"{label:24} failed: {error}", flush=True)
                failed.append(row)
                continue
        records, batch = result["records"], result["batch"]
        steady = [r["clips_per_s"] for r in records[1:]]
        clips = statistics.median(steady)
        peak = max((r.get("max_memory_gb", 0.0) for r in records), default=0.0)  # CUDA only
        memory = f"{peak:8.2f}" if peak else ""
        first = args.log_every / (records[0]["clips_per_s"] / batch)
        print(f"{label:24} {batch:5d} {clips / batch:8.1f} {clips:8.1f} {memory:>8}  {first:10.1f} s"
              f"  {result['wall_s']:7.1f} s", flush=True)
    if failed:
        raise SystemExit(f"rows that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
