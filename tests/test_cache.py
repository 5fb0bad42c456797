"""Latent cache: written from real videos with a tiny AutoencoderKL, interrupted, resumed, read back equal
to encoding on the fly (sample=False: the VAE's mode; sampling: the same noise via a seeded generator)."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from test_data_video import (
    one_thread,  # noqa: F401  (autouse fixture)
    write_video,
)
from test_vae import save_tiny_vae

from latte.data import build_dataset
from latte.data import cache as cache_module
from latte.data.cache import CacheSettings, LatentCacheDataset, encode_dataset, shard_path
from latte.errors import LatteError
from latte.vae import load_vae

OPTIONS = {"num_frames": 4, "frame_interval": 2, "resolution": 16}  # a clip spans 7 source frames


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    root = base / "UCF-101"
    write_video(root / "Biking" / "v_Biking_g01_c01.avi", 12, first=0)
    write_video(root / "Biking" / "v_Biking_g02_c01.avi", 9, first=12)
    write_video(root / "Diving" / "v_Diving_g01_c01.avi", 10, first=24)
    return root, save_tiny_vae(base / "vae")


def settings(files, **overrides) -> CacheSettings:
    root, vae = files
    fields = dict(dataset="ucf101", root=str(root), vae=vae, options=dict(OPTIONS), crops_per_video=2,
                  mirrored=True, shard_size=5)
    return CacheSettings(**{**fields, **overrides})


def quiet(*_):
    pass


def test_written_and_read_back_equal_to_on_the_fly_encoding(files, tmp_path):
    out = encode_dataset(tmp_path / "c", settings(files), batch_size=3, log=quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_entries"] == 12 and manifest["num_shards"] == 3  # 3 x 2 x 2
    assert manifest["latent_shape"] == [4, 4, 8, 8] and manifest["vae"] == files[1]
    assert manifest["class_names"] == ["Biking", "Diving"] and manifest["scaling_factor"] == pytest.approx(0.18215)

    cached = LatentCacheDataset(out, sample=False)
    assert len(cached) == 12 and cached.num_classes == 2 and cached.manifest["settings"]["options"]["num_frames"] == 4
    dataset = build_dataset("ucf101", files[0], **OPTIONS, train=False)
    vae = load_vae(files[1])
    entries = []
    for k in range(3):
        from safetensors.torch import load_file

        entries += load_file(str(shard_path(out, k)))["entry"].tolist()
    assert sorted({(i, s) for i, s, _ in entries}) == [(0, 0), (0, 5), (1, 0), (1, 2), (2, 0), (2, 3)]
    for n, (index, start, mirrored) in enumerate(entries):
        clip = dataset.load_clip(index, start, bool(mirrored))
        expected = vae.encode(clip["video"][None], sample=False)[0]  # (4, F, h, w)
        item = cached[n]
        torch.testing.assert_close(item["video"], expected, atol=1e-5, rtol=1e-5)
        assert item["label"] == clip["label"]
    # sampling: the cached posterior with the same noise FrameVAE.encode would draw
    sampled = LatentCacheDataset(out)
    index, start, mirrored = entries[7]
    torch.manual_seed(11)
    got = sampled[7]["video"]
    clip = dataset.load_clip(index, start, bool(mirrored))["video"][None]
    torch.testing.assert_close(got, vae.encode(clip, generator=torch.Generator().manual_seed(11))[0],
                               atol=1e-5, rtol=1e-5)
    assert not got.equal(cached[7]["video"])


def test_interrupted_run_resumes_only_missing_shards(files, tmp_path, monkeypatch):
    out = tmp_path / "c"
    real_write, written = cache_module._write_shard, []

    def crash_on_second(path, tensors, captions):
        if written:
            raise KeyboardInterrupt
        written.append(path.name)
        real_write(path, tensors, captions)

    monkeypatch.setattr(cache_module, "_write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(out, settings(files), log=quiet)
    assert written == ["shard-00000.safetensors"] and not json.loads((out / "manifest.json").read_text())["complete"]
    with pytest.raises(LatteError, match="incomplete.*2 of 3"):
        LatentCacheDataset(out)
    first = shard_path(out, 0).stat().st_mtime_ns

    def record(path, tensors, captions):
        written.append(path.name)
        real_write(path, tensors, captions)

    written.clear()
    monkeypatch.setattr(cache_module, "_write_shard", record)
    encode_dataset(out, settings(files), log=quiet)
    assert written == ["shard-00001.safetensors", "shard-00002.safetensors"]
    assert shard_path(out, 0).stat().st_mtime_ns == first
    full = LatentCacheDataset(out, sample=False)
    shard_path(out, 2).unlink()  # a lost last shard: the same command writes it again, identical
    with pytest.raises(LatteError, match="missing"):
        LatentCacheDataset(out)
    written.clear()
    encode_dataset(out, settings(files), log=quiet)
    assert written == ["shard-00002.safetensors"]
    again = LatentCacheDataset(out, sample=False)
    for i in range(10, 12):
        torch.testing.assert_close(again[i]["video"], full[i]["video"], atol=1e-5, rtol=1e-5)
    written.clear()
    encode_dataset(out, settings(files), log=quiet)  # complete: nothing to do
    assert written == []


def test_mismatching_settings_refused(files, tmp_path):
    out = encode_dataset(tmp_path / "c", settings(files, crops_per_video=1, mirrored=False, shard_size=8), log=quiet)
    with pytest.raises(LatteError, match="options.frame_interval 2 vs 3"):
        encode_dataset(out, settings(files, crops_per_video=1, mirrored=False, shard_size=8,
                                     options={**OPTIONS, "frame_interval": 3}), log=quiet)
    with pytest.raises(LatteError, match="mirrored False vs True"):
        encode_dataset(out, settings(files, crops_per_video=1, shard_size=8), log=quiet)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(LatteError, match="not a latent cache"):
        encode_dataset(tmp_path / "other", settings(files), log=quiet)
    with pytest.raises(LatteError, match="train"):
        settings(files, options={**OPTIONS, "train": True})


def test_images_from_other_cached_clips_and_workers(files, tmp_path):
    out = encode_dataset(tmp_path / "c", settings(files, crops_per_video=1, mirrored=False, dtype="float16"),
                         log=quiet)
    cached = LatentCacheDataset(out, images_per_clip=5, sample=False)
    means = [cached[i]["video"] for i in range(len(cached))]  # (4, F, h, w) each
    torch.manual_seed(0)
    for i in range(len(cached)):
        item = cached[i]
        assert item["images"].shape == (4, 5, 8, 8) and item["image_labels"].shape == (5,)
        for n in range(5):
            frame = item["images"][:, n]
            sources = [j for j in range(len(cached)) for t in range(4) if means[j][:, t].equal(frame)]
            assert sources and i not in sources
            assert item["image_labels"][n].item() == cached[sources[0]]["label"]
    assert means[0].dtype == torch.float32  # stored as float16, served as float32
    keyed = LatentCacheDataset(out, images_per_clip=2)
    assert keyed[(1, 4)]["video"].equal(keyed[(1, 4)]["video"])
    clone = pickle.loads(pickle.dumps(keyed))
    batch = next(iter(torch.utils.data.DataLoader(clone, batch_size=3, num_workers=2)))
    assert batch["video"].shape == (3, 4, 4, 8, 8) and batch["images"].shape == (3, 4, 2, 8, 8)
