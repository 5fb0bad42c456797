"""benchmarks/sampling_quality.py --store: a run drawn chunk by chunk over several invocations gives the
table of one uninterrupted run, and a store refuses a run that would mix other videos into it."""
import json
import sys
from pathlib import Path

import pytest
import torch

from latte.metrics.evaluate import Detector
from latte.train.checks import load_config
from latte.train.run import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sampling_quality  # noqa: E402

# diffusers' DPM-Solver scheduler warns about NumPy 2 array protocols on every step
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


def stand_in_detectors(options, device):
    """Cheap detectors with the real ones' interface (I3D and Inception are tested in test_metrics_eval):
    pixel mean and spread per clip (the "fvd" rows) and per frame (the "fid" rows)."""

    def per_clip(clips):  # (B, T, H, W, 3) uint8 -> (B, 2)
        x = clips.double().flatten(1) / 255
        return torch.stack([x.mean(1), x.std(1)], 1)

    def per_frame(clips):  # (B, K, H, W, 3) uint8 -> (B*K, 2)
        return per_clip(clips.flatten(0, 1)[:, None])

    return {"fvd": Detector("fvd", "stand-in", "-", "0" * 64, 2, per_clip),
            "fid": Detector("fid", "stand-in", "-", "1" * 64, 2, per_frame)}, {}


def bench(monkeypatch, args: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["sampling_quality.py", *args])
    sampling_quality.main()


def test_a_stored_run_resumed_gives_the_table_of_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["latte.metrics.evaluate"], "build_detectors", stand_in_detectors)
    monkeypatch.setenv("LATTE_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(load_config("tiny-test", None, [f"train.output_dir={run}", "train.device=cpu", "train.max_steps=1"]),
          write_samples_at_end=False)
    common = ["--checkpoint", str(run), "--videos", "4", "--batch-size", "2", "--rows", "ddpm:4,dpm-solver:3",
              "--reference", "ddim:5", "--fvd-fid", "--real-clips", "6", "--bootstrap", "50", "--baseline", "ddpm:4",
              "--device", "cpu"]
    store = tmp_path / "store"
    bench(monkeypatch, common + ["--output", str(tmp_path / "whole.json")])
    bench(monkeypatch, common + ["--store", str(store), "--chunks", "1", "--output", str(tmp_path / "part.json")])
    out = capsys.readouterr().out
    assert "chunk 1/2 drawn (1 this run" in out and "2 of 4 videos of every row are drawn" in out
    assert sorted(p.name for p in (store / "ddpm%3A4").iterdir()) == ["00000.npz"]
    bench(monkeypatch, common + ["--store", str(store), "--output", str(tmp_path / "resumed.json")])
    out = capsys.readouterr().out
    assert "chunk 2/2 drawn (1 this run" in out and "chunk 1/2" not in out  # only the missing chunk was drawn
    bench(monkeypatch, common + ["--store", str(store), "--chunks", "0", "--output", str(tmp_path / "again.json")])
    assert "drawn" not in capsys.readouterr().out

    tables = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("whole", "part", "resumed", "again")]
    assert tables[0]["videos"] == 4 and tables[1]["videos"] == 2 and tables[2]["videos"] == 4
    keys = ("row", "psnr", "ssim", "fvd", "fid", "fvd_ratio", "fvd_ratio_interval")
    whole, part, resumed, again = ([{k: r[k] for k in keys if k in r} for r in t["rows"]] for t in tables)
    assert resumed == whole and again == whole and part != whole
    assert [r["row"] for r in whole] == ["real", "ddpm:4", "dpm-solver:3", "ddim:5"]
    assert "fvd_ratio_interval" in whole[2] and whole[1]["fvd"] > 0

    with pytest.raises(SystemExit) as exit_info:
        bench(monkeypatch, common + ["--store", str(store), "--seed", "1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "with seed=0, this run asks 1" in err

    (store / "identity.json").write_text("{ not json")
    with pytest.raises(SystemExit) as exit_info:
        bench(monkeypatch, common + ["--store", str(store)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "identity.json is unreadable" in err
