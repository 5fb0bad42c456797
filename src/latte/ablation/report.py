"""The study's outputs: D/<study>/report.md, results.jsonl and the figure D/<study>/<study>.png.

Final metrics are those of each run's last evaluated step, given as the mean over the seeds that
finished with its 90% interval (Student's t over seeds). Two options are called apart on a metric
only when the 90% interval of the difference of their means (Welch) excludes zero. The paper's
finding, as the study's claims (A better than B, or about equal), gets a verdict per metric:
reproduced, contradicted or undecided at this budget, with the interval that decides it.

results.jsonl holds everything the report and figure are drawn from (its first line the study and
its settings, then one record per run with its evaluations and loss curves), so `latte ablate
--report-only D/<study>` draws them again without runs or checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from latte.ablation.evaluation import EvalSettings
from latte.ablation.intervals import PROPORTIONS, difference, half_width
from latte.ablation.plot import draw, smooth
from latte.ablation.runner import StudyPlan, read_jsonl
from latte.ablation.studies import Study
from latte.data.cache import atomic_write_text
from latte.errors import LatteError
from latte.files import check_output_folder

# metric -> (label, True when higher is better)
METRICS = {
    "fvd": ("FVD", False),
    "fid": ("frame FID", False),
    "digit_accuracy": ("digit accuracy", True),
    "clip_agreement": ("clip agreement", True),
    "motion_error_px": ("motion error px", False),
    "jitter_px": ("jitter px", False),  # median centroid acceleration (0 at constant velocity); real clips in the notes
    "final_loss": ("final train loss", False),
    "heldout_loss": ("held-out loss", False),  # train.eval_every: from metrics.jsonl, not from the evaluations
}
RUN_VALUES = ("final_loss", "heldout_loss")  # read from the run's record, not from its evaluations
DIGITS = {"heldout_loss": 4}  # significant digits where 3 hide differences (a low-variance loss); others 3
RESULTS_FILE = "results.jsonl"
CURVES = ("loss", "heldout_loss")  # metrics.jsonl series kept in each run's record for the figure


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
    """Per option: runs, finished runs, size/speed figures and per metric (mean, std, n, binomial variance of
    one run's share for the digit and clip readings, else None)."""
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
                mean, std = mean_std(values)
                clips = max(0.0, mean * (1 - mean)) / plan.eval.clips \
                    if metric in PROPORTIONS else None  # binomial variance of one run's share
                entry["metrics"][metric] = (mean, std, len(values), clips)
        summary[option.name] = entry
    return summary


def reading(summary: dict[str, dict]) -> list[str]:
    """Per metric: options from best to worst, and whether each step down is outside its 90% interval."""
    lines = []
    for metric, (label, higher) in METRICS.items():
        ranked = [(name, e["metrics"][metric]) for name, e in summary.items() if metric in e["metrics"]]
        if len(ranked) < 2:
            continue
        ranked.sort(key=lambda item: item[1][0], reverse=higher)
        digits = DIGITS.get(metric, 3)
        parts = [f"{ranked[0][0]} ({fmt(ranked[0][1][0], digits)})"]
        for (_, first), (name, second) in zip(ranked, ranked[1:]):
            gap, half = difference(first, second)
            relation = "?" if half is None else (">" if abs(gap) > half else "≈")  # ?: one seed, no interval
            parts.append(f"{relation} {name} ({fmt(second[0], digits)})")
        lines.append(f"- {label} ({'higher' if higher else 'lower'} is better): " + " ".join(parts))
    if lines:
        lines.append("")
        lines.append("`>`: better, the 90% interval of the difference (over seeds, Welch) excludes zero; `≈`: "
                     "the interval includes zero (too close to tell); `?`: one seed, no interval.")
    return lines


def verdict(claim: tuple[str, str, str], summary: dict[str, dict], metric: str) -> tuple[str, str] | None:
    """(difference with its 90% interval, verdict) of one claim of the paper on one metric; None when an
    option has no value. "A > B": reproduced when A is better beyond the interval, contradicted when worse
    beyond it; "A = B": consistent when the interval holds zero, contradicted otherwise."""
    a, relation, b = claim
    if a not in summary or b not in summary or metric not in summary[a]["metrics"] \
            or metric not in summary[b]["metrics"]:
        return None
    gap, half = difference(summary[a]["metrics"][metric], summary[b]["metrics"][metric])
    digits = DIGITS.get(metric, 3)
    if half is None:
        return fmt(gap, digits), "undecided: one seed"
    shown = f"{fmt(gap, digits)} ± {fmt(half, digits)}"
    apart = abs(gap) > half  # False for a NaN reading: no verdict from it
    if relation == "=":
        return shown, "contradicted" if apart else "consistent (no difference found)"
    better = gap if METRICS[metric][1] else -gap  # > 0 when A does better on this metric
    if not apart:
        return shown, "undecided at this budget"
    return shown, "reproduced" if better > 0 else "contradicted"


def findings(study: Study, summary: dict[str, dict]) -> list[str]:
    """The claims table: a row per claim and metric with a value for both options."""
    rows = []
    for claim in study.claims:
        for metric, (label, _) in METRICS.items():
            if metric == "final_loss" or metric in study.no_claims_on:
                continue  # the training loss of another batch stream, or a reading the options do not share
            result = verdict(claim, summary, metric)
            if result is not None:
                text = f"`{claim[0]}` {'better than' if claim[1] == '>' else 'about equal to'} `{claim[2]}`"
                rows.append(f"| {text} | {label} | {result[0]} | {result[1]} |")
    if not rows:
        return []
    return ["| the paper's claim | metric | difference A - B (90% interval) | verdict |", "|---|---|---|---|", *rows,
            "", "Differences are of the means over seeds; the interval is Welch's over the seeds' spread, or for shares "
            "of clips (digit, clip readings) the clips' binomial error where that is larger."]


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
    columns = ["option", "parameters", "GFLOPs/clip", "clips/s"] + [METRICS[m][0] for m in shown] + ["runs", "paper"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, s in summary.items():
        cells = [f"`{name}`", f"{s['parameters']:,}" if s["parameters"] else "–",
                 f"{s['gflops_per_clip']:.3g}" if s["gflops_per_clip"] else "–",
                 f"{s['clips_per_s']:.1f}" if s["clips_per_s"] else "–"]
        for metric in shown:
            if metric not in s["metrics"]:
                cells.append("–")
                continue
            mean, _, n, _ = s["metrics"][metric]
            digits = DIGITS.get(metric, 3)
            half = half_width(s["metrics"][metric])
            spread = "" if half is None else f" ± {fmt(half, digits)}"
            cells.append(fmt(mean, digits) + spread + ("" if n == plan.seeds else f" (n={n})"))
        cells += [f"{len(s['done'])}/{len(s['runs'])} done", s["option"].finding or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values: mean over seeds of the last evaluated step ± half its 90% interval (Student's t over "
              "seeds, or for the digit and clip readings the evaluation clips' binomial error where that is larger; "
              "none with one seed; n = seeds finished when fewer than asked)."]
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
    shared = [r for r in results if r.get("reused_from")]
    if shared:
        lines += ["", "Runs shared with another study (the same config, seed, steps and readings; copied, not trained "
                  "again): " + ", ".join(f"`{r['option']}` seed {r['seed_index']} = `{r['reused_from']}`" for r in shared)]
    lines += ["", "## Reading", ""] + (reading(summary) or ["Fewer than two options have results yet."])
    claims = findings(study, summary)
    if claims:
        lines += ["", f"## The paper's finding: {study.finding}", "", *claims]
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
                pairs = run.get("curves", {}).get(key, [])  # [[step, value], ...] by step
                steps, values = [int(p[0]) for p in pairs], [p[1] for p in pairs]
                values = smooth(values, max(1, len(steps) // 20)).tolist() if smoothed else values
                series[name].append(dict(zip(steps, values)))
        if any(seed for seeds in series.values() for seed in seeds):
            panels.append((title, series))
    if not panels:
        panels.append(("no evaluations yet", {}))
    return draw(path, f"latte ablate --study {plan.study.name}", panels)


def with_curves(run: dict, study_folder: Path) -> dict:
    """The run's record with its loss curves from its metrics.jsonl, or as stored when the folder is gone."""
    records = read_jsonl(study_folder / run["run_dir"] / "metrics.jsonl")
    if not records:
        return run
    curves = {}
    for key in CURVES:
        by_step = {int(r["step"]): r[key] for r in records if key in r}
        curves[key] = [[step, by_step[step]] for step in sorted(by_step)]
    return {**run, "curves": curves}


def settings_record(plan: StudyPlan) -> dict:
    """results.jsonl's first line: what report and figure need besides the runs."""
    return {"study": dataclasses.asdict(plan.study), "preset": plan.preset, "config_file": plan.config_file,
            "overrides": plan.overrides, "seeds": plan.seeds, "eval": plan.eval.signature()}


def read_results(folder: Path) -> tuple[StudyPlan, list[dict]]:
    """The plan and run records of a study folder's results.jsonl, or a one-line LatteError."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise LatteError(f"{path} not found: --report-only takes a study folder written by latte ablate")
    records = read_jsonl(path)
    if not records or not isinstance(records[0], dict) or "study" not in records[0]:
        raise LatteError(f"{path} has no study settings on its first line (written before they were kept): run the "
                         f"study's command again to rewrite it")
    first, runs = records[0], records[1:]
    try:
        # studies read before 2026-12-07 name a reader trained for a time (classifier_seconds): the report
        # needs the clip count only, so they still draw
        settings = {k: v for k, v in first["eval"].items() if k != "classifier_seconds"}
        plan = StudyPlan(study=Study.from_dict(first["study"]), preset=first["preset"],
                         config_file=first["config_file"], overrides=list(first["overrides"]), output=Path(folder),
                         seeds=int(first["seeds"]), eval=EvalSettings(**{**settings, "metrics": tuple(settings["metrics"])}))
        if not isinstance(plan.eval.clips, int) or plan.eval.clips < 1:
            raise ValueError(f"evaluation clips {plan.eval.clips!r}")
        for run in runs:
            evals = run.get("evals", []) if isinstance(run, dict) else None
            if not isinstance(run, dict) or not isinstance(run.get("option"), str) or not isinstance(evals, list) \
                    or not all(isinstance(e, dict) and isinstance(e.get("metrics"), dict) and "step" in e for e in evals):
                raise ValueError("a run record without its option or evaluations")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LatteError(f"{path}: does not read as a study's results ({exc})") from None
    return plan, runs


def render(plan: StudyPlan, results: list[dict], with_figure: bool = True) -> tuple[Path, Path | None]:
    """report.md and (with_figure) <study>.png under plan.output from the run records, each written atomically."""
    summary = summarise(plan, results)
    report = plan.output / "report.md"
    atomic_write_text(report, markdown(plan, summary, results))
    return report, figure(plan, summary, plan.output / f"{plan.study.name}.png") if with_figure else None


def write_outputs(plan: StudyPlan, results: list[dict], with_figure: bool = True) -> tuple[Path, Path, Path | None]:
    """results.jsonl (with each run's loss curves), report.md and (with_figure) <study>.png under plan.output."""
    plan.output.mkdir(parents=True, exist_ok=True)
    results = [with_curves(r, plan.output) for r in results]
    records = plan.output / RESULTS_FILE
    atomic_write_text(records, "".join(json.dumps(r) + "\n" for r in [settings_record(plan), *results]))
    report, png = render(plan, results, with_figure)
    return report, records, png


def redraw(folder: Path) -> tuple[Path, Path]:
    """`latte ablate --report-only`: report.md and the figure again from results.jsonl alone."""
    check_output_folder(Path(folder), "study folder")
    return render(*read_results(folder))
