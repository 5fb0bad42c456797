"""Time to quality: candidate recipes trained for the same wall time on this machine, read at fixed marks.

    python benchmarks/time_to_quality.py --minutes 15                        # preset, flow-uniform, flow-logit-normal
    python benchmarks/time_to_quality.py --minutes 15 --recipe preset --recipe wide=flow-uniform:model.hidden_size=192
    python benchmarks/time_to_quality.py --plot-only                          # redraw docs/time-to-quality.png

A recipe is [LABEL=]BASE[:SECTION.KEY=VALUE,...] on top of --preset and the --set overrides: BASE is
`preset` (the preset as it is: for moving-mnist DDPM x0 + min-SNR) or `flow-uniform` / `flow-logit-normal`
(latte.ablation.studies.objective_options: diffusion.objective=flow, DDPM-only keys back to their defaults,
model.learn_sigma=false, a flow sampler). Recipes train one after another (never in parallel: the timings
would disturb each other), each for --minutes of wall time counted from building the trainer (readings
excluded). At --marks equal steps of that budget the run writes a checkpoint, appends its wall seconds and
step to <output>/<recipe>/marks.json, and reads the EMA model:
- class runs: 10 clips per digit (100) sampled as the recipe's config samples (sampler, steps, guidance),
  read by latte.ablation.evaluation.Evaluator: the frame accuracy and clip agreement of the digit
  classifier of latte.metrics.mnist (trained on real frames, cached; never used in training), the
  centroid step and jitter against real clips; FVD/FID with --frechet (FVD needs 9 frames or more);
- text runs: the 80 prompts of benchmarks/moving_mnist_text_quality.py (every digit x every direction),
  each clip read for its digit, its direction and both;
- the held-out loss of train.eval_every's fixed set (also appended to the run's metrics.jsonl), which
  compares runs of one objective only.
Rerunning the command continues unfinished recipes from their last mark and skips finished ones.
Rows go to <output>/results.jsonl; a table is printed; the figure (quality against wall time, one
line per recipe, one panel per reading) is drawn from the results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch
from moving_mnist_text_quality import directions, majority_digits  # beside this file

from latte.ablation.evaluation import EVAL_SEED, EvalSettings, Evaluator
from latte.ablation.runner import one_line_error, read_json
from latte.ablation.studies import objective_options
from latte.cli_arguments import add_reader_arguments, positive_int
from latte.config import Config
from latte.data.cache import atomic_write_text
from latte.data.moving_mnist import DIRECTIONS, caption_of
from latte.errors import LatteError
from latte.inference import VideoGenerator
from latte.metrics.evaluate import stats_cache_dir
from latte.metrics.mnist import cached_classifier
from latte.train.checks import held_out_refusal, load_config, validate

BUILT_IN = ("preset", "flow-uniform", "flow-logit-normal")
NEVER = 10**9  # a step count the budget always stops first
STATE_FILE = "marks.json"
RESULTS_FILE = "results.jsonl"
# (reading, panel title), in panel order; a panel is drawn when some row has the reading
PANELS = (("clip_agreement", "clips read as the asked digit"), ("digit_accuracy", "frames read as the asked digit"),
          ("jitter_px", "centroid jitter px (real: dashed)"), ("both_right", "text: digit and direction right"),
          ("digit_right", "text: digit right"), ("direction_right", "text: direction right"),
          ("fvd", "FVD"), ("heldout_loss", "held-out loss (one objective only)"))

FRACTIONS = ("clip_agreement", "digit_accuracy", "both_right", "digit_right", "direction_right")


class BudgetSpent(Exception):
    """Raised from the trainer's per-step hook at the last mark: the recipe's wall time is used up."""


@dataclasses.dataclass
class Recipe:
    label: str  # folder and legend name
    base: str  # one of BUILT_IN
    overrides: list[str]  # --set overrides of the recipe itself


def parse_recipe(spec: str) -> Recipe:
    """[LABEL=]BASE[:KEY=VALUE,...]; a value may hold commas (the next item starts at SECTION.KEY=)."""
    head, _, tail = spec.partition(":")
    label, _, base = head.rpartition("=")
    base = base.strip()
    if base not in BUILT_IN:
        raise LatteError(f"--recipe {spec!r}: the base must be one of {', '.join(BUILT_IN)}, got {base!r}")
    overrides = [o.strip() for o in re.split(r",(?=\s*[A-Za-z_]+\.[A-Za-z_]+=)", tail) if o.strip()] if tail else []
    for item in overrides:
        if not re.fullmatch(r"[A-Za-z_]+\.[A-Za-z_]+=.*", item):
            raise LatteError(f"--recipe {spec!r}: {item!r} is not SECTION.KEY=VALUE")
    label = label.strip() or (base + "".join(f"+{o.split('.', 1)[1]}" for o in overrides))
    return Recipe(re.sub(r"[^A-Za-z0-9._+=-]+", "-", label).strip("-"), base, overrides)


def recipe_config(args, recipe: Recipe) -> Config:
    """The recipe's run config: preset, --set, the base's and the recipe's overrides, then the budget's own
    train keys (no step limit unless the recipe sets one, checkpoints only at the marks, the held-out loss
    only at the marks)."""
    common = load_config(args.preset, None, args.set)
    base = [] if recipe.base == "preset" else next(o.overrides for o in objective_options(common)
                                                   if o.name == recipe.base)
    config = load_config(args.preset, None, [*args.set, *base, *recipe.overrides])
    check_demo_kind(common, config, recipe)
    t = config.train
    t.output_dir = str(Path(args.output) / recipe.label)
    if not any(o.startswith("train.max_steps=") for o in recipe.overrides):
        t.max_steps = NEVER
    t.sample_every = 1  # the hook that watches the clock runs after every step
    t.checkpoint_every, t.keep_checkpoints = NEVER, args.marks + 1
    t.eval_every = NEVER if config.data.is_moving_mnist and held_out_refusal(config) is None else 0
    validate(config)
    return config


def check_demo_kind(common: Config, config: Config, recipe: Recipe) -> None:
    """The demo stays a video of today's kind: a recipe keeps the frame size and digit motion of --preset and
    --set, and at least their frames."""
    p, d = common.data, config.data
    if d.resolution != p.resolution or d.num_frames < p.num_frames or d.mnist_kwargs() != p.mnist_kwargs():
        raise LatteError(f"recipe {recipe.label}: the demo stays a video of today's kind (at least {p.num_frames} "
                         f"frames of {p.resolution}x{p.resolution}, the digit motion {p.mnist_kwargs()})")


def settings_signature(args, recipe: Recipe) -> dict:
    """What makes a finished recipe's marks valid for this command (stored in marks.json)."""
    return {"preset": args.preset, "set": list(args.set), "base": recipe.base, "overrides": recipe.overrides,
            "minutes": args.minutes, "marks": args.marks, "per_class": args.per_class,
            "per_prompt": args.per_prompt, "frechet": args.frechet, "classifier_steps": args.classifier_steps}


class TextReader:
    """digit / direction / both readings of a text run's EMA model on the text benchmark's 80 prompts."""

    def __init__(self, config: Config, per_prompt: int, classifier_steps: int, cache_dir: str | None):
        self.asked = [(digit, direction) for digit in range(10) for direction in DIRECTIONS]
        self.per_prompt = per_prompt
        self.net, self.real_accuracy = cached_classifier(config.data.resolution, config.data.num_frames,
                                                         classifier_steps, stats_cache_dir(cache_dir))

    def __call__(self, trainer) -> dict:
        generator = VideoGenerator(model=trainer.ema, diffusion=trainer.diffusion, config=trainer.config,
                                   vae=trainer.vae, device=trainer.device, text_encoder=trainer.text_encoder)
        request = generator.request(num_videos=len(self.asked) * self.per_prompt, seed=EVAL_SEED, batch_size=20,
                                    prompts=[caption_of(digit, direction) for digit, direction in self.asked])
        videos, _ = generator.generate(request, progress=False)  # (N, 1, F, H, W), prompt i % 80
        wanted = [self.asked[i % len(self.asked)] for i in range(len(videos))]
        digit_ok = majority_digits(self.net, videos[:, :1]) == torch.tensor([digit for digit, _ in wanted])  # (N,)
        direction_ok = torch.tensor([got == want for got, (_, want) in zip(directions(videos[:, :1]), wanted)])
        return {"digit_right": digit_ok.float().mean().item(), "direction_right": direction_ok.float().mean().item(),
                "both_right": (digit_ok & direction_ok).float().mean().item(),
                "classifier_real_accuracy": self.real_accuracy}


def read_mark(trainer, reader, clips: int) -> dict:
    """The readings of the trainer's EMA model now: samples (class or text) and the held-out loss."""
    start = time.perf_counter()
    if isinstance(reader, Evaluator):
        result = reader(trainer)
        readings = {**result["metrics"], **({"unavailable": result["unavailable"]} if result["unavailable"] else {})}
    else:
        readings = reader(trainer)
    held = trainer.evaluate_held_out() if trainer.held_out is not None else None
    if held:
        readings["heldout_loss"] = held["heldout_loss"]
        with open(trainer.output / "metrics.jsonl", "a") as handle:  # as the trainer writes a held-out record
            handle.write(json.dumps({"step": trainer.step, **held, "time": time.time()}) + "\n")
    return {**readings, "clips": clips, "read_seconds": time.perf_counter() - start}


def run_recipe(args, recipe: Recipe, log=print) -> dict:
    """Train one recipe to its budget (or continue it), reading it at every mark; returns its state."""
    from latte.train.trainer import Trainer  # local, as in latte.ablation.runner: torch.distributed.tensor is slow

    run_dir = Path(args.output) / recipe.label
    signature = settings_signature(args, recipe)
    state = read_json(run_dir / STATE_FILE) or {"recipe": recipe.label, "settings": signature, "marks": []}
    if state["settings"] != signature:
        changed = sorted(k for k in signature if state["settings"].get(k) != signature[k])
        raise LatteError(f"{run_dir} ran with other settings ({', '.join(changed)}): give another --output or "
                         "delete the folder")
    if state.get("status") == "done":
        log(f"[{recipe.label}] finished earlier: skipped")
        return state
    config = recipe_config(args, recipe)
    budget = args.minutes * 60
    marks_at = [budget * (k + 1) / args.marks for k in range(args.marks)]
    started = time.perf_counter()
    trainer = Trainer(config, log=lambda *_: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    state.setdefault("started", time.time())
    marks = state["marks"]
    if marks and "readings" not in marks[-1] and not Path(marks[-1]["checkpoint"]).is_file():
        marks.pop()  # stopped while writing that mark's checkpoint: train towards it again
    last = marks[-1] if marks else None
    if (last["step"] if last else 0) != trainer.step:
        raise LatteError(f"{run_dir}: its latest checkpoint is at step {trainer.step}, its last mark at step "
                         f"{last['step'] if last else 0}: delete the folder to run the recipe again")
    reader_start = time.perf_counter()  # a text run trains or loads the classifier here: not on the clock
    if trainer.text_encoder is not None:
        clips = len(DIRECTIONS) * 10 * args.per_prompt
        reader = TextReader(config, args.per_prompt, args.classifier_steps, args.cache_dir)
    else:
        clips = 10 * args.per_class
        metrics = ("mnist", "fvd", "fid") if args.frechet else ("mnist",)
        reader = Evaluator(trainer, EvalSettings(clips=clips, metrics=metrics, classifier_steps=args.classifier_steps,
                                                 batch_size=min(clips, 20), cache_dir=args.cache_dir))

    def save() -> None:
        atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")

    def finish_mark(mark: dict) -> None:
        mark["readings"] = read_mark(trainer, reader, clips)
        save()
        write_results(Path(args.output))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in mark["readings"].items() if k in dict(PANELS))
        log(f"[{recipe.label}] mark {mark['mark']}/{args.marks}: {mark['wall_seconds'] / 60:.2f} min, "
            f"step {mark['step']}: {shown}")

    if last and "readings" not in last:  # stopped while reading it: read it now
        finish_mark(last)
    # the clock: fresh runs count building the trainer; resumed ones go on from their last mark
    clock = {"offset": last["wall_seconds"] if last else 0.0, "start": time.perf_counter() if last else started,
             "excluded": 0.0 if last else time.perf_counter() - reader_start}

    def new_mark(wall: float, stopped_early: bool = False) -> None:
        mark = {"mark": len(marks) + 1, "wall_seconds": wall, "step": trainer.step,
                "checkpoint": str(run_dir / "checkpoints" / f"step_{trainer.step:07d}.pt"), "stopped_early": stopped_early}
        marks.append(mark)
        save()  # before the checkpoint: a resumed run finds which mark its latest checkpoint is
        if not stopped_early:  # fit saved the last step already
            trainer.save()
        finish_mark(mark)

    def on_step(_trainer) -> None:
        now = time.perf_counter()
        wall = clock["offset"] + now - clock["start"] - clock["excluded"]
        if len(marks) < args.marks and wall >= marks_at[len(marks)]:
            new_mark(wall)
            clock["excluded"] += time.perf_counter() - now
            if len(marks) == args.marks:
                raise BudgetSpent

    if len(marks) < args.marks and not (last and last["stopped_early"]):
        try:
            trainer.fit(on_sample=on_step, open_ended=trainer.config.train.max_steps == NEVER)
            # train.max_steps of the recipe came first: its last step is the recipe's last mark
            new_mark(clock["offset"] + time.perf_counter() - clock["start"] - clock["excluded"], stopped_early=True)
        except BudgetSpent:
            pass
    state["status"] = "done"
    save()
    return state


def result_rows(output: Path) -> list[dict]:
    """Every recipe's read marks under `output`, recipes in the order they started."""
    states = [s for s in (read_json(p) for p in output.glob(f"*/{STATE_FILE}")) if s]
    rows = []
    for state in sorted(states, key=lambda s: s.get("started", 0)):
        for mark in state["marks"]:
            if "readings" in mark:
                rows.append({"recipe": state["recipe"], "base": state["settings"]["base"],
                             "overrides": state["settings"]["overrides"], "minutes": state["settings"]["minutes"],
                             **{k: v for k, v in mark.items() if k != "readings"}, **mark["readings"]})
    return rows


def write_results(output: Path) -> None:
    atomic_write_text(output / RESULTS_FILE, "".join(json.dumps(r) + "\n" for r in result_rows(output)))


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_table(rows: list[dict]) -> None:
    columns = [key for key, _ in PANELS if any(key in r for r in rows)]
    width = max([len(r["recipe"]) for r in rows] + [6])
    print(f"{'recipe':<{width}} mark    min   steps  " + "  ".join(f"{c:>15}" for c in columns))
    for r in rows:
        cells = [f"{r[c]:15.4g}" if isinstance(r.get(c), (int, float)) else f"{'-':>15}" for c in columns]
        print(f"{r['recipe']:<{width}} {r['mark']:4d} {r['wall_seconds'] / 60:6.2f} {r['step']:7d}  " + "  ".join(cells))


def plot(rows: list[dict], path: Path) -> None:
    """Quality against wall time: one panel per reading, one line per recipe."""
    import matplotlib  # local: only drawing needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in PANELS if any(isinstance(r.get(key), (int, float)) for r in rows)]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    columns = min(3, max(1, len(panels)))
    lines = (len(panels) + columns - 1) // columns or 1
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        for recipe in recipes:
            points = [(r["wall_seconds"] / 60, r[key]) for r in rows if r["recipe"] == recipe and key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=recipe)
        if key == "jitter_px":
            real = [r["real_jitter_px"] for r in rows if "real_jitter_px" in r]
            if real:
                ax.axhline(real[-1], color="gray", linestyle="--", linewidth=1)
        if key in FRACTIONS:
            ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("wall time (min)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=8)
    clips = sorted({r.get("clips") for r in rows if r.get("clips")})
    figure.suptitle(f"time to quality ({', '.join(map(str, clips))} clips read per mark)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", default=None,
                        help=f"[LABEL=]BASE[:KEY=VALUE,...], BASE one of {', '.join(BUILT_IN)} (repeat; "
                             "default: the three)")
    parser.add_argument("--preset", default="moving-mnist", help="the config every recipe starts from")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="overrides for every recipe (before the recipe's own)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall time of each recipe")
    parser.add_argument("--marks", type=positive_int, default=6, help="checkpoints read per recipe, at equal steps of time")
    parser.add_argument("--output", default="runs/time-to-quality")
    parser.add_argument("--figure", default=str(Path(__file__).resolve().parents[1] / "docs" / "time-to-quality.png"))
    parser.add_argument("--frechet", action="store_true", help="FVD and frame FID at each mark as well (slow)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the table and figure from the results")
    # the measurement's fixed settings: smaller values for the tests only
    parser.add_argument("--per-class", type=positive_int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--per-prompt", type=positive_int, default=1, help=argparse.SUPPRESS)
    add_reader_arguments(parser, steps_help=argparse.SUPPRESS)
    args = parser.parse_args()
    output = Path(args.output)
    if not args.plot_only:
        if not args.minutes > 0:
            parser.error(f"--minutes must be > 0, got {args.minutes}")
        try:
            recipes = [parse_recipe(spec) for spec in (args.recipe or BUILT_IN)]
        except LatteError as exc:
            parser.error(str(exc))
        if len({r.label for r in recipes}) != len(recipes):
            parser.error("two recipes have the same label: name them LABEL=BASE:...")
        failed = []
        for recipe in recipes:  # one after another: parallel runs would distort each other's timings
            try:
                run_recipe(args, recipe)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 (a failing recipe must not stop the others)
                failed.append(recipe.label)
                print(f"[{recipe.label}] failed: {one_line_error(exc)}", file=sys.stderr)
        write_results(output)
    rows = read_results(output / RESULTS_FILE) if (output / RESULTS_FILE).is_file() else []
    if not rows:
        print(f"no results in {output / RESULTS_FILE}", file=sys.stderr)
        return 1
    print_table(rows)
    plot(rows, Path(args.figure))
    print(f"figure: {args.figure}")
    return 1 if not args.plot_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
