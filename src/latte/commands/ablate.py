"""`latte ablate`: the paper's design study (Sec. 4.3) on your data, one training run per option."""
from __future__ import annotations

import argparse
from pathlib import Path

from latte.ablation.evaluation import METRICS, EvalSettings
from latte.ablation.report import redraw, write_outputs
from latte.ablation.runner import StudyPlan, is_main_process, option_config, run_study
from latte.ablation.studies import STUDIES, build_study, custom_study
from latte.cli_arguments import DEFAULT_PRESET, add_config_arguments, add_reader_arguments
from latte.errors import LatteError
from latte.files import check_output_folder
from latte.train.checks import load_config


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ablate", help="rerun the paper's design study (variants, tokens, conditioning ...) with figures",
        description="Train one ordinary `latte train` run per option (and seed) of a design study, evaluate the "
                    "EMA weights along the way (FVD and frame FID against cached real statistics; on Moving MNIST "
                    "also digit-classifier and motion readings), and write D/<study>/report.md, results.jsonl and "
                    "D/<study>/<study>.png. Running the same command again skips finished runs and resumes the "
                    "others; a run another study under D already made (same config, seed, steps and readings) "
                    "is copied, not trained again. Works the same under `torchrun --nproc_per_node N` (evaluation on rank 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--study", default=None, metavar="NAME",
                        help=f"one of {', '.join(STUDIES)}; with --options, the study's folder name")
    parser.add_argument("--options", default=None, metavar="SECTION.KEY=V1,V2,...",
                        help="a study over any config key, one option per value (e.g. optim.lr=1e-4,3e-4)")
    add_config_arguments(parser, "when no --config is given; --set applies to every option")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per run (default: the config's)")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: a quarter of the run)")
    parser.add_argument("--eval-clips", type=int, default=64, help="generated clips per evaluation (as many real ones)")
    parser.add_argument("--eval-steps", type=int, default=None, help="sampler steps of evaluation clips (default: sample.steps)")
    parser.add_argument("--metrics", default=",".join(METRICS), metavar="LIST",
                        help="comma-separated subset of fvd,fid,mnist (mnist: Moving MNIST digit and motion readings)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per option (seeds train.seed, +1, ...)")
    parser.add_argument("--output-dir", default="runs/ablate", metavar="D", help="studies go to D/<study>/")
    parser.add_argument("--dit", metavar="FILE", help="ImageNet DiT state dict for --study init")
    parser.add_argument("--images", type=int, default=8, help="image frames per clip of the joint option (--study joint)")
    parser.add_argument("--sizes", default=None, metavar="LIST",
                        help="--study size: named sizes (S,B,L,XL) or WIDTHxDEPTH pairs such as 64x4,128x4 (default S,B,L,XL)")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="clips per sampling / detector batch")
    add_reader_arguments(parser)
    parser.add_argument("--report-only", default=None, metavar="DIR",
                        help="draw DIR/report.md and the figure again from DIR/results.jsonl alone (no training, no "
                             "checkpoints needed: a study folder may be kept without its runs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every option's config (as a real study does first), print the options and exit")
    return parser


def build_plan(args):
    if args.options and args.study in STUDIES:
        raise LatteError(f"--study {args.study} is a built-in study: --options makes a study of its own (omit --study "
                         f"or give it another name)")
    if not args.options and args.study is None:
        raise LatteError(f"give --study ({', '.join(STUDIES)}) or --options SECTION.KEY=V1,V2")
    for name, value, low in (("--seeds", args.seeds, 1), ("--eval-clips", args.eval_clips, 1),
                             ("--eval-batch-size", args.eval_batch_size, 1), ("--max-steps", args.max_steps, 1),
                             ("--eval-every", args.eval_every, 1), ("--eval-steps", args.eval_steps, 1)):
        if value is not None and value < low:
            raise LatteError(f"{name} must be >= {low}, got {value}")
    metrics = tuple(dict.fromkeys(m.strip().lower() for m in args.metrics.split(",") if m.strip()))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise LatteError(f"--metrics {args.metrics!r}: choose a comma-separated subset of {','.join(METRICS)}")
    preset = args.preset if args.preset or args.config else DEFAULT_PRESET
    base = load_config(preset, args.config, args.overrides)  # the user's config must be valid on its own
    if args.options:
        study = custom_study(args.options, args.study)
    else:
        study = build_study(args.study, base, dit=args.dit, images=args.images, sizes=args.sizes)
    settings = EvalSettings(clips=args.eval_clips, metrics=metrics, sampler_steps=args.eval_steps,
                            batch_size=args.eval_batch_size, classifier_steps=args.classifier_steps,
                            cache_dir=args.cache_dir)
    plan = StudyPlan(study=study, preset=preset, config_file=args.config, overrides=list(args.overrides),
                     output=Path(args.output_dir) / study.name, seeds=args.seeds, max_steps=args.max_steps,
                     eval_every=args.eval_every, eval=settings)
    check_output_folder(plan.output, "study folder")  # resumed when it exists; before any run trains
    for option in study.options:  # every option's config is valid before any of them trains
        try:
            option_config(plan, option, 0)
        except LatteError as exc:
            raise LatteError(f"option {option.name} ({' '.join(option.overrides)}): {exc}") from exc
    return plan


def run(args) -> int:
    if args.report_only:
        if args.study or args.options:
            raise LatteError("--report-only draws a finished study's folder again: it takes no --study or --options")
        report, png = redraw(Path(args.report_only))
        print(f"report: {report}\nfigure: {png}")
        return 0
    plan = build_plan(args)
    if args.dry_run:
        print(f"study {plan.study.name} -> {plan.output}: {plan.seeds} seed(s) per option")
        for option in plan.study.options:
            print(f"  {option.name}: {' '.join(option.overrides)}")
        return 0
    # after each run: the report and records (the figure, slower to draw, once at the end)
    results = run_study(plan, on_progress=lambda done: write_outputs(plan, done, with_figure=False))
    failed = [r for r in results if r.get("status") != "done"]
    if is_main_process():
        report, records, png = write_outputs(plan, results)
        print(f"report: {report}\nresults: {records}\nfigure: {png}")
        if failed:
            print(f"{len(failed)} of {len(results)} run(s) failed (listed in the report); run the command again to retry")
    return 1 if failed else 0
