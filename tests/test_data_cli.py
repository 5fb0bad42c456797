"""`latte data inspect` and `latte encode` through latte.cli.main on real files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_data_video import (
    one_thread,  # noqa: F401  (autouse fixture)
    write_video,
)
from test_vae import save_tiny_vae

from latte.cli import main
from latte.data.cache import LatentCacheDataset


@pytest.fixture
def ucf_root(tmp_path):
    root = tmp_path / "UCF-101"
    write_video(root / "Biking" / "v_Biking_g01_c01.avi", 12)
    write_video(root / "Diving" / "v_Diving_g01_c01.avi", 10)
    write_video(root / "Diving" / "v_Diving_g02_c01.avi", 4)  # too short for 4 frames x 3
    broken = write_video(root / "Diving" / "v_Diving_g03_c01.avi", 12).read_bytes()
    garbage = np.random.default_rng(0).integers(0, 256, len(broken) - 600, dtype=np.uint8).tobytes()
    (root / "Diving" / "v_Diving_g03_c01.avi").write_bytes(broken[:600] + garbage)  # valid header, broken data
    return root


def test_data_inspect_reports_and_writes_filmstrip(ucf_root, tmp_path, capsys):
    strip = tmp_path / "strip.png"
    code = main(["data", "inspect", "--dataset", "ucf101", "--root", str(ucf_root), "--num-frames", "4",
                 "--resolution", "32", "--filmstrip", str(strip)])
    out = capsys.readouterr().out
    assert code == 0
    assert "clips: 2 usable, 2 skipped" in out
    assert "classes: 2 (Biking, Diving)" in out
    assert "Diving/v_Diving_g02_c01.avi: too short: 4 frames, a clip spans 10" in out
    assert "Diving/v_Diving_g03_c01.avi: no decodable frames" in out
    assert "frames per source clip: min 10, median 11, max 12" in out
    assert "(3, 4, 32, 32)" in out
    with Image.open(strip) as image:  # 2 clips (rows) x 4 frames (columns)
        width, height = image.size
    assert 1.6 < width / height < 2.4


def test_data_inspect_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latte data: error:") and "no usable clip" in err and "\n" not in err
    assert main(["data", "inspect", "--dataset", "ucf101", "--root", str(tmp_path), "--option", "bogus=1"]) == 2
    assert "unknown option(s) bogus" in capsys.readouterr().err


def test_encode_command_writes_a_cache_the_trainer_reads(ucf_root, tmp_path, capsys):
    vae = save_tiny_vae(tmp_path / "vae")
    args = ["encode", "--dataset", "ucf101", "--root", str(ucf_root), "--vae", vae, "--output", str(tmp_path / "c"),
            "--num-frames", "4", "--resolution", "16", "--shard-size", "1", "--workers", "0", "--flip"]
    assert main(args) == 0
    cached = LatentCacheDataset(tmp_path / "c", images_per_clip=1)
    assert len(cached) == 4 and cached.manifest["vae"] == vae and cached.manifest["latent_shape"] == [4, 4, 8, 8]
    assert cached.manifest["settings"]["options"] == {"num_frames": 4, "frame_interval": 3, "resolution": [16, 16]}
    assert sorted(cached[i]["label"] for i in range(4)) == [0, 0, 1, 1]
    assert main(args) == 0 and "already complete" in capsys.readouterr().out
    assert main([*args[:-1], "--frame-interval", "2"]) == 2
    assert "options.frame_interval 3 vs 2" in capsys.readouterr().err
