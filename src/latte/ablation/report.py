"""The study's outputs: D/<study>/report.md, results.jsonl and the figure D/<study>/<study>.png.

Final metrics are those of each run's last evaluated step, given as mean ± standard deviation over
the seeds that finished (n = seed count). Two options are called apart on a metric only when
their means differ by more than the sum of their standard deviations; otherwise the report says
the difference is within the seed spread.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from latte.ablation.plot import draw, smooth
from latte.ablation.runner import StudyPlan, read_jsonl
from latte.data.cache import atomic_write_text

# metric -> (label, True when higher is better)
METRICS = {
    "fvd": ("FVD", False),
    "fid": ("frame FID", False),
    "digit_accuracy": ("digit accuracy", True),
    "clip_agreement": ("clip agreement", True),
    "motion_error_px": ("motion error px", False),
    "final_loss": ("final train loss", False),
    "heldout_loss": ("held-out loss", False),  # train.eval_every: from metrics.jsonl, not from the evaluations
}
RUN_VALUES = ("final_loss", "heldout_loss")  # read from the run's record, not from its evaluations
DIGITS = {"heldout_loss": 4}  # significant digits where 3 hide differences (a low-variance loss); others 3


def with_derived(metrics: dict) -> dict:
    """An evaluation's metrics plus motion error: |sampled - real| mean centroid step in px (sampled
    clips should move as much as real ones; jitter alone is no score, real clips bounce)."""
    out = dict(metrics)
    if "step_px" in out and "real_step_px" in out:
        out["motion_error_px"] = abs(out["step_px"] - out["real_step_px"])
    return out


def final_values(run: dict) -> dict[str, float]:
    """The last evaluation's metrics of a finished run, plus its final training loss and held-out loss."""
    values = with_derived(run["evals"][-1]["metrics"]) if run.get("evals") else {}
    for key in RUN_VALUES:
        if run.get(key) is not None:
            values[key] = run[key]
    return values


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt(value: float, digits: int = 3) -> str:
    size = abs(value)
    if size >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if size >= 1e-3 or value == 0 else f"{value:.{digits - 1}e}"


def summarise(plan: StudyPlan, results: list[dict]) -> dict[str, dict]:
    """Per option: runs, finished runs, size/speed figures and per-metric (mean, std, n)."""
    summary = {}
    for option in plan.study.options:
        runs = [r for r in results if r["option"] == option.name]
        done = [r for r in runs if r.get("status") == "done"]
        entry = {"option": option, "runs": runs, "done": done, "metrics": {}}
        for key in ("parameters", "gflops_per_clip"):
            entry[key] = next((r[key] for r in done if r.get(key) is not None), None)
        speeds = [r["clips_per_s"] for r in done if r.get("clips_per_s")]
        entry["clips_per_s"] = sum(speeds) / len(speeds) if speeds else None
        for metric in METRICS:
            values = [final_values(r)[metric] for r in done if metric in final_values(r)]
            if values:
                entry["metrics"][metric] = (*mean_std(values), len(values))
        summary[option.name] = entry
    return summary


def reading(summary: dict[str, dict]) -> list[str]:
    """Per metric: options from best to worst, and whether each step down exceeds the seed spread."""
    lines = []
    for metric, (label, higher) in METRICS.items():
        ranked = [(name, e["metrics"][metric]) for name, e in summary.items() if metric in e["metrics"]]
        if len(ranked) < 2:
            continue
        ranked.sort(key=lambda item: item[1][0], reverse=higher)
        digits = DIGITS.get(metric, 3)
        parts = [f"{ranked[0][0]} ({fmt(ranked[0][1][0], digits)})"]
        for (_, (m1, s1, _)), (name, (m2, s2, _)) in zip(ranked, ranked[1:]):
            if s1 is None or s2 is None:
                relation = "?"  # one seed: no spread to compare with
            else:
                relation = ">" if abs(m1 - m2) > s1 + s2 else "≈"
            parts.append(f"{relation} {name} ({fmt(m2, digits)})")
        lines.append(f"- {label} ({'higher' if higher else 'lower'} is better): " + " ".join(parts))
    if lines:
        lines.append("")
        lines.append("`>`: better by more than the two options' summed seed standard deviations; `≈`: within "
                     "the seed spread (too close to tell); `?`: one seed, spread unknown.")
    return lines


def markdown(plan: StudyPlan, summary: dict[str, dict], results: list[dict]) -> str:
    study, e = plan.study, plan.eval
    shown = [m for m in METRICS if any(m in s["metrics"] for s in summary.values())]
    lines = [f"# Ablation study `{study.name}`", "",
             f"Paper's finding (Latte, arXiv 2401.03048, Sec. 4.3): {study.finding}.", ""]
    lines += [f"Note: {note}" for note in study.notes] + ([""] if study.notes else [])
    source = f"preset {plan.preset}" if plan.preset else f"config {plan.config_file}"
    first = next((r for r in results if r.get("max_steps")), {})
    lines += [f"Setup: {source}" + (f", --set {' '.join(plan.overrides)}" if plan.overrides else "")
              + f"; {first.get('max_steps', '?')} steps per run, {plan.seeds} seed(s) per option; EMA weights "
              f"evaluated every {first.get('eval_every', '?')} steps on {e.clips} generated clips "
              f"(sampler steps: {e.sampler_steps or 'config'}) against as many real clips.", ""]
    header = ["option", "parameters", "GFLOPs/clip", "clips/s"] + [METRICS[m][0] for m in shown] + ["runs", "paper"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summary.items():
        cells = [f"`{name}`", f"{s['parameters']:,}" if s["parameters"] else "–",
                 f"{s['gflops_per_clip']:.3g}" if s["gflops_per_clip"] else "–",
                 f"{s['clips_per_s']:.1f}" if s["clips_per_s"] else "–"]
        for metric in shown:
            if metric not in s["metrics"]:
                cells.append("–")
                continue
            mean, std, n = s["metrics"][metric]
            digits = DIGITS.get(metric, 3)
            spread = "" if std is None else f" ± {fmt(std, digits)}"
            cells.append(fmt(mean, digits) + spread + ("" if n == plan.seeds else f" (n={n})"))
        cells += [f"{len(s['done'])}/{len(s['runs'])} done", s["option"].finding or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values: mean ± standard deviation over seeds of the last evaluated step "
              "(n = seeds finished when fewer than asked)."]
    if "heldout_loss" in shown:
        lines += ["Held-out loss: the training loss of the EMA model on held-out clips at fixed times and noise "
                  "(train.eval_every); comparable only between options of one objective and prediction target "
                  "(docs/evaluation.md)."]
    reasons = {}
    for run in results:
        for evaluation in run.get("evals", [])[-1:]:
            reasons.update(evaluation.get("unavailable", {}))
    real = next((r["evals"][-1]["metrics"] for r in results if r.get("evals")
                 and "real_jitter_px" in r["evals"][-1]["metrics"]), None)
    if real:
        lines += [f"Moving MNIST readings: digit classifier {real['classifier_real_accuracy']:.1%} on real frames; "
                  f"real clips move {real['real_step_px']:.2f} px per frame with jitter {real['real_jitter_px']:.2f} px."]
    if reasons:
        lines += ["", "Not computed:"] + [f"- {METRICS.get(m, (m,))[0]}: {why}" for m, why in reasons.items()]
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed runs (the other runs went on; run the study again to retry them):"]
        lines += [f"- `{r['option']}` seed {r['seed_index']}: {r['error']}" for r in failed]
    lines += ["", "## Reading", ""] + (reading(summary) or ["Fewer than two options have results yet."])
    lines += ["", f"Figure: `{study.name}.png`; per-run records: `results.jsonl`.", ""]
    return "\n".join(lines)


def figure(plan: StudyPlan, summary: dict[str, dict], path: Path) -> Path:
    panels = []
    for metric in [m for m in METRICS if m not in RUN_VALUES]:
        series = {name: [{int(ev["step"]): with_derived(ev["metrics"])[metric] for ev in r["evals"]
                          if metric in with_derived(ev["metrics"])} for r in s["runs"]] for name, s in summary.items()}
        if any(seed for seeds in series.values() for seed in seeds):
            panels.append((METRICS[metric][0], series))
    for key, title, smoothed in (("loss", "train loss (smoothed)", True), ("heldout_loss", "held-out loss", False)):
        series = {}
        for name, s in summary.items():
            series[name] = []
            for run in s["runs"]:
                records = [r for r in read_jsonl(Path(run["run_dir"]) / "metrics.jsonl") if key in r]
                by_step = {int(r["step"]): r[key] for r in records}
                steps = sorted(by_step)
                values = [by_step[k] for k in steps]
                values = smooth(values, max(1, len(steps) // 20)).tolist() if smoothed else values
                series[name].append(dict(zip(steps, values)))
        if any(seed for seeds in series.values() for seed in seeds):
            panels.append((title, series))
    if not panels:
        panels.append(("no evaluations yet", {}))
    return draw(path, f"latte ablate --study {plan.study.name}", panels)


def write_outputs(plan: StudyPlan, results: list[dict], with_figure: bool = True) -> tuple[Path, Path, Path | None]:
    """report.md, results.jsonl and (with_figure) <study>.png under plan.output, each written atomically."""
    plan.output.mkdir(parents=True, exist_ok=True)
    summary = summarise(plan, results)
    report = plan.output / "report.md"
    atomic_write_text(report, markdown(plan, summary, results))
    records = plan.output / "results.jsonl"
    atomic_write_text(records, "".join(json.dumps(r) + "\n" for r in results))
    return report, records, figure(plan, summary, plan.output / f"{plan.study.name}.png") if with_figure else None
