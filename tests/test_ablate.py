"""`latte ablate`: tiny studies on the tiny-test preset (4 frames of 16 px, a few steps)."""
from __future__ import annotations

import json
import shutil

import pytest

from latte.cli import main

FAST_EVAL = ["--preset", "tiny-test", "--eval-clips", "2", "--eval-steps", "2", "--classifier-steps", "2"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LATTE_CACHE_DIR", str(tmp_path / "cache"))


def results_of(folder) -> list[dict]:
    """The run records (the first line holds the study's settings)."""
    lines = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert "study" in lines[0] and all("option" in r for r in lines[1:])
    return lines[1:]


def test_tiny_study_writes_report_figure_results_then_skips_and_resumes(tmp_path, capsys):
    args = ["ablate", "--study", "conditioning", *FAST_EVAL, "--max-steps", "2", "--eval-every", "1",
            "--metrics", "fvd,mnist", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    study = tmp_path / "conditioning"
    report = (study / "report.md").read_text()
    assert "| `adaln` |" in report and "| `tokens` |" in report
    assert "S-AdaLN better" in report  # the paper's finding beside the rows
    assert "| digit accuracy | clip agreement | motion error px |" in report
    # 4-frame clips: FVD cannot be computed, and the report says why instead of failing
    assert "- FVD: I3D needs clips of at least 9 frames, this run's have 4" in report
    assert (study / "conditioning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = results_of(study)
    assert [(r["option"], r["status"]) for r in runs] == [("adaln", "done"), ("tokens", "done")]
    for run in runs:
        assert [e["step"] for e in run["evals"]] == [1, 2]
        final = run["evals"][-1]["metrics"]
        assert 0.0 <= final["digit_accuracy"] <= 1.0 and final["step_px"] >= 0.0 and final["real_step_px"] > 0.0
        assert run["parameters"] > 0 and run["gflops_per_clip"] > 0 and run["clips_per_s"] > 0
    assert runs[0]["parameters"] != runs[1]["parameters"]  # tokens conditioning has no adaLN layers
    checkpoint = study / "adaln-seed0" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    capsys.readouterr()

    assert main(args) == 0  # finished runs are skipped, not retrained
    out = capsys.readouterr().out
    assert out.count("finished earlier: skipped") == 2
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == before

    longer = [a if a != "2" or args[i - 1] != "--max-steps" else "3" for i, a in enumerate(args)]
    assert main(longer) == 0  # an unfinished run (3 steps asked, 2 done) resumes from its checkpoint
    steps = [json.loads(line)["step"] for line in (study / "adaln-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert [e["step"] for e in results_of(study)[0]["evals"]] == [1, 2, 3]


def test_a_run_another_study_already_made_is_copied_not_trained(tmp_path, capsys):
    """Every built-in study's first option is the preset unchanged: with the same seed, steps and readings
    it is one run, trained once. The copy is a finished run of its own study from then on."""
    common = [*FAST_EVAL, "--max-steps", "2", "--metrics", "mnist", "--output-dir", str(tmp_path)]
    assert main(["ablate", "--study", "conditioning", *common]) == 0
    capsys.readouterr()
    assert main(["ablate", "--study", "temporal-pos", *common]) == 0
    out = capsys.readouterr().out
    assert "[temporal-pos absolute seed 0] the same run as conditioning/adaln-seed0" in out
    assert out.count("copied, not trained") == 1  # rope is another run
    original, copy = tmp_path / "conditioning" / "adaln-seed0", tmp_path / "temporal-pos" / "absolute-seed0"
    source = results_of(tmp_path / "conditioning")[0]
    runs = {r["option"]: r for r in results_of(tmp_path / "temporal-pos")}
    assert runs["absolute"]["reused_from"] == "conditioning/adaln-seed0" and runs["absolute"]["status"] == "done"
    assert runs["absolute"]["evals"] == source["evals"] and runs["absolute"]["heldout_loss"] == source["heldout_loss"]
    assert "reused_from" not in runs["rope"] and runs["rope"]["evals"] != source["evals"]
    for checkpoint in (original / "checkpoints").iterdir():  # hard links: no second copy on disk
        assert (copy / "checkpoints" / checkpoint.name).stat().st_ino == checkpoint.stat().st_ino
    assert f"output_dir: {copy}" in (copy / "config.yaml").read_text()
    assert not list(tmp_path.glob("*/.*copying"))
    assert "`absolute` seed 0 = `conditioning/adaln-seed0`" in (tmp_path / "temporal-pos" / "report.md").read_text()
    assert main(["ablate", "--study", "temporal-pos", *common]) == 0
    assert capsys.readouterr().out.count("finished earlier: skipped") == 2
    # another seed is another run
    assert main(["ablate", "--study", "temporal-pos", *common, "--seeds", "2"]) == 0
    assert "copied, not trained" not in capsys.readouterr().out


def test_failing_option_is_reported_and_the_others_complete(tmp_path, capsys):
    """A run that fails while running (here: its data folder is empty; a bad config value is refused before
    any run, see the next test) is recorded, and the study goes on."""
    empty = tmp_path / "no-clips"
    empty.mkdir()
    rc = main(["ablate", "--options", "data.dataset=folder,moving-mnist", "--set", f"data.root={empty}", *FAST_EVAL,
               "--max-steps", "1", "--metrics", "fvd", "--output-dir", str(tmp_path)])
    assert rc == 1
    study = tmp_path / "data.dataset"
    runs = {r["option"]: r for r in results_of(study)}
    assert runs["dataset-folder"]["status"] == "failed" and "no usable clip" in runs["dataset-folder"]["error"]
    assert runs["dataset-moving-mnist"]["status"] == "done" and runs["dataset-moving-mnist"]["parameters"] > 0
    report = (study / "report.md").read_text()
    assert "Failed runs" in report and "- `dataset-folder` seed 0: folder: no usable clip" in report
    assert "| `dataset-moving-mnist` |" in report and "1/1 done" in report
    assert "1 of 2 run(s) failed" in capsys.readouterr().out


def test_options_take_any_config_key_and_refuse_an_unknown_one(tmp_path, capsys):
    assert main(["ablate", "--options", "optim.lr=1e-3,3e-3", "--preset", "tiny-test", "--dry-run",
                 "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lr-1e-3: optim.lr=1e-3" in out and "lr-3e-3: optim.lr=3e-3" in out
    for bad, name in (("model.nope=1,2", "'model.nope'"), ("nope=1", "'nope'")):
        assert main(["ablate", "--options", bad, "--preset", "tiny-test", "--output-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"unknown config key {name}" in err
    assert not (tmp_path / "model.nope").exists()
    # a value the config refuses stops the study before any option trains, --dry-run or not
    assert main(["ablate", "--options", "model.variant=1,7", "--preset", "tiny-test", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "option variant-7 (model.variant=7): model.variant must be one of" in err
    assert not (tmp_path / "model.variant").exists()


def test_built_in_studies_need_their_inputs(tmp_path, capsys):
    assert main(["ablate", "--study", "init", "--preset", "tiny-test", "--dry-run"]) == 2
    assert "give --dit FILE" in capsys.readouterr().err
    assert main(["ablate", "--study", "size", "--sizes", "32x2,64x2", "--preset", "tiny-test", "--dry-run"]) == 0
    assert "64x2: model.hidden_size=64 model.depth=2 model.num_heads=4" in capsys.readouterr().out


def test_reading_calls_options_apart_only_beyond_the_interval_of_their_difference():
    from latte.ablation.report import reading

    # a - b: 20 against Welch's 2.920 * sqrt(25) = 14.6; e - a: 12, inside it (apart by the old summed-std rule)
    summary = {"e": {"metrics": {"fvd": (88.0, 5.0, 2)}}, "a": {"metrics": {"fvd": (100.0, 5.0, 2)}},
               "b": {"metrics": {"fvd": (120.0, 5.0, 2)}},
               "c": {"metrics": {"fvd": (125.0, 4.0, 2), "digit_accuracy": (0.5, None, 1)}},
               "d": {"metrics": {"digit_accuracy": (0.7, None, 1)}}}
    lines = reading(summary)
    assert lines[0] == "- FVD (lower is better): e (88) ≈ a (100.0) > b (120.0) ≈ c (125.0)"
    assert lines[1] == "- digit accuracy (higher is better): d (0.7) ? c (0.5)"


def test_frame_fid_along_training_with_cached_real_statistics(tmp_path, monkeypatch, capsys):
    """The Fréchet path end to end, with a small TorchScript network standing in for Inception-v3
    (same interface: (N, 3, 299, 299) -> (N, 2048)), so it runs in seconds on CPU."""
    import math

    import torch

    class PoolFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3 * 8 * 8, 2048)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))

    torch.manual_seed(0)
    weights = tmp_path / "inception.pt"
    torch.jit.script(PoolFeatures()).save(str(weights))
    monkeypatch.setenv("LATTE_INCEPTION_WEIGHTS", str(weights))
    args = ["ablate", "--options", "model.temporal_pos=rope", "--preset", "tiny-test", "--eval-clips", "3",
            "--eval-steps", "2", "--max-steps", "1", "--metrics", "fid", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    runs = results_of(tmp_path / "model.temporal_pos")
    fid = runs[0]["evals"][-1]["metrics"]["fid"]
    assert math.isfinite(fid) and fid > 0
    assert "| clips/s | frame FID | final train loss |" in (tmp_path / "model.temporal_pos" / "report.md").read_text()
    assert capsys.readouterr().out.count("real features (fid): 3 clips") == 1
    assert len(list((tmp_path / "cache" / "stats").glob("fid-*.npz"))) == 1  # what the next run of the study reads


def test_report_gives_the_held_out_loss_per_option_with_its_seed_spread(tmp_path):
    """Moving MNIST runs evaluate the held-out loss at the study's evaluation steps (train.eval_every)."""
    assert main(["ablate", "--options", "optim.lr=1e-3,3e-3", *FAST_EVAL, "--max-steps", "2", "--eval-every", "2",
                 "--seeds", "2", "--metrics", "fvd", "--set", "train.eval_clips=4", "--output-dir", str(tmp_path)]) == 0
    study = tmp_path / "optim.lr"
    runs = results_of(study)
    assert all(r["status"] == "done" and r["heldout_loss"] > 0 for r in runs)
    assert runs[0]["heldout_loss"] != runs[1]["heldout_loss"]  # seeds 0 and 1 trained different weights
    # each record names its run folder inside the study folder, not a path of this machine
    assert sorted(r["run_dir"] for r in runs) == sorted(p.name for p in study.glob("lr-*-seed*")) and len(runs) == 4
    report = (study / "report.md").read_text()
    assert "| final train loss | held-out loss |" in report
    row = next(line for line in report.splitlines() if line.startswith("| `lr-1e-3` |"))
    assert row.split(" | ")[-3].count(" ± ") == 1  # mean ± its 90% interval over the two seeds
    assert "- held-out loss (lower is better): " in report and "comparable only between options of one" in report

    # --report-only: the same report and a figure from results.jsonl alone (as a folder under docs/ holds it)
    copy = tmp_path / "docs" / "optim.lr"
    copy.mkdir(parents=True)
    (copy / "results.jsonl").write_text((study / "results.jsonl").read_text())
    for run in study.glob("lr-*-seed*"):
        shutil.rmtree(run)
    assert main(["ablate", "--report-only", str(copy)]) == 0
    assert (copy / "report.md").read_text() == report
    assert (copy / "optim.lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(len(r["curves"]["loss"]) == 2 and len(r["curves"]["heldout_loss"]) == 1 for r in results_of(copy))


def test_report_only_refuses_what_it_cannot_draw(tmp_path, capsys):
    assert main(["ablate", "--report-only", str(tmp_path)]) == 2
    assert "results.jsonl not found" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text(json.dumps({"option": "a", "status": "done"}) + "\n")
    assert main(["ablate", "--report-only", str(tmp_path)]) == 2  # a file from before the settings line
    assert "no study settings on its first line" in capsys.readouterr().err
    assert main(["ablate", "--report-only", str(tmp_path), "--study", "variant"]) == 2
    assert "takes no --study or --options" in capsys.readouterr().err
    settings = {"study": {"name": "s", "options": [{"name": "a", "overrides": []}], "finding": "f",
                          "claims": [["a", ">", "zz"]]}, "preset": None, "config_file": None, "overrides": [],
                "seeds": 1, "eval": {"clips": 4, "metrics": ["fvd"], "sampler_steps": None, "batch_size": 2,
                                     "classifier_seconds": 1.0}}
    (tmp_path / "results.jsonl").write_text(json.dumps(settings) + "\n")
    assert main(["ablate", "--report-only", str(tmp_path)]) == 2  # a claim about an option the study lacks
    assert "does not read as a study's results (claim ['a', '>', 'zz']" in capsys.readouterr().err
    settings["study"]["claims"] = []
    (tmp_path / "results.jsonl").write_text(json.dumps(settings) + "\n" + json.dumps({"option": "a", "evals": 3}) + "\n")
    assert main(["ablate", "--report-only", str(tmp_path)]) == 2
    assert "a run record without its option or evaluations" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_each_claim_of_the_paper_gets_a_verdict_from_its_interval():
    from latte.ablation.intervals import t90
    from latte.ablation.report import findings
    from latte.ablation.studies import Study

    assert t90(1) == 6.314 and t90(2.9) == 2.920 and abs(t90(120) - 1.658) < 0.002
    study = Study("s", [], "finding", claims=[("a", ">", "b"), ("b", ">", "a"), ("a", ">", "c"), ("a", "=", "c"),
                                               ("a", ">", "d")])
    summary = {"a": {"metrics": {"clip_agreement": (0.60, 0.02, 3)}},  # a - b: Welch df 4, 2.132 * 0.0163
               "b": {"metrics": {"clip_agreement": (0.40, 0.02, 3)}},
               "c": {"metrics": {"clip_agreement": (0.58, 0.05, 3)}},
               "d": {"metrics": {"clip_agreement": (0.30, None, 1)}}}
    rows = findings(study, summary)
    assert rows[2] == "| `a` better than `b` | clip agreement | 0.2 ± 0.0348 | reproduced |"
    assert rows[3] == "| `b` better than `a` | clip agreement | -0.2 ± 0.0348 | contradicted |"
    assert rows[4].endswith("| undecided at this budget |")
    assert rows[5].startswith("| `a` about equal to `c` |") and rows[5].endswith("| consistent (no difference found) |")
    assert rows[6] == "| `a` better than `d` | clip agreement | 0.3 | undecided: one seed |"
    summary["a"]["metrics"]["heldout_loss"] = (0.010, 0.0001, 3)  # lower is better: a's lower loss reproduces
    summary["b"]["metrics"]["heldout_loss"] = (0.012, 0.0001, 3)
    assert "| `a` better than `b` | held-out loss | -0.002 ± 1.741e-04 | reproduced |" in findings(study, summary)
    # 64 clips per evaluation: a run's binomial error (0.24 / 64) outweighs these seeds' spread, df stays 4
    summary["a"]["metrics"]["clip_agreement"] = (0.60, 0.02, 3, 0.24 / 64)
    summary["b"]["metrics"]["clip_agreement"] = (0.40, 0.02, 3, 0.24 / 64)
    assert findings(study, summary)[2] == "| `a` better than `b` | clip agreement | 0.2 ± 0.185 | reproduced |"
    summary["b"]["metrics"]["fvd"] = (float("nan"), 1.0, 3)  # a NaN reading decides nothing
    summary["a"]["metrics"]["fvd"] = (100.0, 1.0, 3)
    assert any(r.startswith("| `a` better than `b` | FVD |") and r.endswith("| undecided at this budget |")
               for r in findings(study, summary))


def test_the_report_reads_shares_of_clips_with_their_binomial_error():
    from latte.ablation.evaluation import EvalSettings
    from latte.ablation.report import summarise
    from latte.ablation.runner import StudyPlan
    from latte.ablation.studies import Option, Study, build_study
    from latte.train.checks import load_config

    study = Study("s", [Option("a", [])], "finding")
    plan = StudyPlan(study=study, preset=None, config_file=None, overrides=[], output=None, seeds=2,
                     eval=EvalSettings(clips=50))
    runs = [{"option": "a", "status": "done", "evals": [{"step": 1, "metrics": {"clip_agreement": v, "fvd": v}}]}
            for v in (0.4, 0.6)]
    metrics = summarise(plan, runs)["a"]["metrics"]
    assert metrics["clip_agreement"][:3] == (0.5, metrics["clip_agreement"][1], 2)
    assert abs(metrics["clip_agreement"][3] - 0.25 / 50) < 1e-12 and metrics["fvd"][3] is None
    config = load_config("tiny-test", None, [])
    for name in ("variant", "patch-embed", "conditioning", "temporal-pos", "joint", "size", "objective"):
        built = build_study(name, config, sizes="32x2,64x2")  # every claim names the study's own options
        assert built.claims and all({a, b} <= {o.name for o in built.options} for a, _, b in built.claims)


def test_objective_study_trains_and_reads_each_recipe(tmp_path, capsys):
    args = ["ablate", "--study", "objective", *FAST_EVAL, "--max-steps", "2", "--eval-every", "2",
            "--metrics", "mnist", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    study = tmp_path / "objective"
    runs = {r["option"]: r for r in results_of(study)}
    assert set(runs) == {"ddpm-eps-learned", "ddpm-x0-minsnr", "flow-uniform", "flow-logit-normal"}
    assert all(r["status"] == "done" for r in runs.values())
    report = (study / "report.md").read_text()
    assert "| `flow-logit-normal` |" in report and "not comparable across objectives" in report
    for name in runs:
        config = (study / f"{name}-seed0" / "config.yaml").read_text()
        assert ("objective: flow" in config) == name.startswith("flow")
        assert ("sampler: euler" in config) == name.startswith("flow")
