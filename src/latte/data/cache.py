"""Latent cache: the VAE posterior of every clip computed once (`latte encode`), then read by the trainer.

Layout of a cache folder:
    manifest.json              settings (dataset, options, VAE, crops), sources, latent shape, classes, `complete`
    shard-00000.safetensors    "mean", "std" (n, C, F, h, w) scaled latents; "label" (n,) (-1: none);
                               "entry" (n, 3) = (clip index, start frame, mirrored); captions in the metadata;
                               with a text encoder "text" (n, L, width) caption embeddings, "text_mask" (n, L)
    empty-text.safetensors     with a text encoder: the empty prompt's "text" (1, L, width), "text_mask" (1, L)
Clips are the deterministic ones (train=False: first/evenly spaced temporal crops, centre crop), optionally
several crops per video and mirrored copies. Each shard is written atomically, so an interrupted run
resumes by running the same command again: finished shards are kept, the rest are encoded.

Reading samples z = mean + std * noise per item (noise drawn like FrameVAE.encode's, shape (C, F, h, w)),
so training on a cache sees the same distribution of latents as encoding on the fly; sample=False gives
the mean (the VAE's mode), bit-for-bit reproducible.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from latte.data import DEFAULTS, build_dataset
from latte.data.datasets import ClipOptions, keyed_generator, other_clip, randint
from latte.data.video import as_size
from latte.devices import pick_device
from latte.errors import LatteError
from latte.files import (
    CACHE_FORMAT,
    CACHE_MANIFEST,
    LOCK_NAME,
    FolderLock,
    atomic_path,
    atomic_write_text,
    check_output_folder,
    remove_stale_temps,
)
from latte.text_encoder import TextEncoder, resolve_text_encoder
from latte.vae import load_vae

MANIFEST = CACHE_MANIFEST  # latte.files knows a cache by it: nothing but `latte encode` writes into one
EMPTY_TEXT = "empty-text.safetensors"
FORMAT, VERSION = CACHE_FORMAT, 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CacheSettings:
    """What a cache holds; a rerun with different settings is refused."""

    dataset: str
    root: str | None
    vae: str
    options: dict = field(default_factory=dict)  # build_dataset options: num_frames, frame_interval, resolution, ...
    crops_per_video: int = 1  # temporal crops per video, spread evenly (the first starts at frame 0)
    mirrored: bool = False  # also store every crop flipped horizontally
    shard_size: int = 256
    dtype: str = "float32"
    store_std: bool = True  # False: only the mean, items are the VAE's mode
    text_encoder: str | None = None  # also store caption embeddings (latte.text_encoder spec)
    text_max_length: int | None = None  # None: the encoder's default

    def __post_init__(self) -> None:
        if self.text_encoder is not None:
            self.text_encoder = resolve_text_encoder(self.text_encoder)
        if self.dtype not in DTYPES:
            raise LatteError(f"cache dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.shard_size < 1 or self.crops_per_video < 1:
            raise LatteError("shard_size and crops_per_video must be >= 1")
        if self.root is not None:
            self.root = str(Path(self.root).expanduser().resolve())
        self.dataset = self.dataset.lower().replace("_", "-")
        if Path(self.vae).expanduser().is_dir():  # a local VAE folder: found again from any working directory
            self.vae = str(Path(self.vae).expanduser().resolve())
        fixed = sorted({"train", "flip", "images_per_clip"} & set(self.options))
        if fixed:
            raise LatteError(f"a cache holds deterministic clips: {', '.join(fixed)} cannot be set "
                             "(mirrored copies: --flip; image frames: images_per_clip when training)")
        defaults = {**asdict(ClipOptions()), **DEFAULTS.get(self.dataset, {})}
        self.options = {k: v for k, v in self.options.items() if v is not None}
        for key in ("num_frames", "frame_interval", "resolution"):  # explicit, so equal settings compare equal
            self.options.setdefault(key, defaults[key])
        try:
            self.options["resolution"] = list(as_size(self.options["resolution"]))
        except (TypeError, ValueError):
            raise LatteError(f"resolution must be an int or (H, W), got {self.options['resolution']!r}") from None


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


class _EntryClips(Dataset):
    """(clip index, start, mirrored) entries of a dataset -> items, for a DataLoader with workers."""

    def __init__(self, dataset, entries: list[tuple[int, int, int]]):
        self.dataset, self.entries = dataset, entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        index, start, mirrored = self.entries[i]
        return self.dataset.load_clip(index, start, bool(mirrored))


def _collate(items: list[dict]) -> dict:
    return {"video": torch.stack([it["video"] for it in items]),  # (B, C, F, H, W)
            "label": torch.tensor([int(it.get("label", -1)) for it in items]),
            "caption": [it.get("caption") for it in items]}


def _write_shard(path: Path, tensors: dict, captions: list) -> None:
    metadata = {"captions": json.dumps(captions)} if any(c is not None for c in captions) else None
    with atomic_path(path, "cache shard") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _sources(dataset) -> list:
    root = getattr(dataset, "root", None)
    clips = getattr(dataset, "clips", None)
    if clips is None:  # generated data (moving-mnist): the items are the source
        return [len(dataset)]
    return [[os.path.relpath(c.path, root) if root else c.path, c.num_frames] for c in clips]


def _plan(settings: CacheSettings) -> tuple:
    """(dataset, entries [(clip index, start, mirrored)], manifest header) of a cache."""
    dataset = build_dataset(settings.dataset, settings.root, **settings.options, train=False, images_per_clip=0)
    entries = [(i, start, mirrored) for i in range(len(dataset))
               for start in dataset.clip_starts(i, settings.crops_per_video)
               for mirrored in ((0, 1) if settings.mirrored else (0,))]
    sample = dataset.load_clip(0)
    header = {"format": FORMAT, "version": VERSION, "settings": asdict(settings), "sources": _sources(dataset),
              "pixel_shape": list(sample["video"].shape), "num_entries": len(entries),
              "num_shards": -(-len(entries) // settings.shard_size),
              "num_classes": getattr(dataset, "num_classes", None), "class_names": getattr(dataset, "class_names", None),
              "captions": "caption" in sample}
    return dataset, entries, json.loads(json.dumps(header))  # as it reads back from disk (tuples -> lists)


def encode_dataset(output: str | Path, settings: CacheSettings, batch_size: int = 8, device: str = "auto",
                   workers: int = 0, chunk_size: int = 32, log=print) -> Path:
    """Encode `settings.dataset` with `settings.vae` into the cache folder `output`; resumes a partial cache."""
    output = Path(output)
    if batch_size < 1 or workers < 0 or chunk_size < 1:  # before the folder or its manifest exist
        raise LatteError(f"batch size and chunk size must be >= 1 and workers >= 0, got {batch_size}, "
                         f"{chunk_size} and {workers}")
    check_output_folder(output, "cache folder", holds="cache")
    with FolderLock(output, "encode"):  # one writer per cache folder
        return _encode(output, settings, batch_size, device, workers, chunk_size, log)


def _encode(output: Path, settings: CacheSettings, batch_size: int, device: str, workers: int, chunk_size: int,
            log) -> Path:
    previous = read_manifest(output) if (output / MANIFEST).is_file() else None
    if previous is None and any(p.name != LOCK_NAME for p in output.iterdir()):  # the output first
        raise LatteError(f"{output} exists and is not a latent cache: give an empty or new folder")
    device = str(pick_device(device))  # a missing GPU is refused before any work
    dataset, entries, header = _plan(settings)
    num_shards = header["num_shards"]
    if previous is not None:
        check_same(previous, header, output)
        if previous.get("complete") and all(shard_path(output, k).is_file() for k in range(num_shards)):
            log(f"{output}: cache already complete ({len(entries)} clips in {num_shards} shards)")
            return output
    remove_stale_temps(output)  # half-written files of an interrupted run
    todo = [k for k in range(num_shards) if not shard_path(output, k).is_file()]

    vae = load_vae(settings.vae, device=device, chunk_size=chunk_size)
    if vae is None:
        raise LatteError("encoding needs a VAE: --vae none caches nothing")
    text = None
    if settings.text_encoder:
        if not header["captions"]:
            raise LatteError(f"dataset {settings.dataset} has no captions to encode with --text-encoder")
        text = TextEncoder(settings.text_encoder, settings.text_max_length, device=device)
    latent_shape = list(vae.latent_shape(tuple(header["pixel_shape"])))
    if previous is not None and previous.get("latent_shape") not in (None, latent_shape):
        raise LatteError(f"{output}: cached latents are {previous['latent_shape']}, this VAE gives {latent_shape}")
    manifest = {**header, "latent_shape": latent_shape, "scaling_factor": vae.scaling_factor, "vae": settings.vae,
                "complete": False}
    output.mkdir(parents=True, exist_ok=True)
    if text is not None:
        manifest["text"] = {"encoder": text.spec, "max_length": text.max_length, "width": text.width}
        hidden, mask = text.unconditional()
        _write_shard(output / EMPTY_TEXT, {"text": hidden.cpu(), "text_mask": mask.cpu()}, [None])
    atomic_write_text(output / MANIFEST, json.dumps(manifest, indent=1))
    log(f"encoding {len(entries)} clips of {settings.dataset} into {num_shards} shards of {output} "
        f"({num_shards - len(todo)} already done); latents {latent_shape} on {device}")
    started = time.time()
    done = _encode_shards(output, dataset, entries, todo, settings, vae, text, batch_size, workers)
    manifest["complete"] = True
    atomic_write_text(output / MANIFEST, json.dumps(manifest, indent=1))
    log(f"wrote {output}: {len(entries)} clips, {num_shards} shards ({done} encoded now, "
        f"{done / max(time.time() - started, 1e-9):.1f} clips/s)")
    return output


def _encode_shards(output: Path, dataset, entries: list, todo: list[int], settings: CacheSettings, vae, text,
                   batch_size: int, workers: int) -> int:
    """Encode and write shards `todo` (one loader for all; its batches never straddle two shards)."""
    todo_entries, batches, ends = [], [], {}
    for k in todo:
        part = _shard_entries(entries, settings, k)
        first = len(todo_entries)
        todo_entries += part
        batches += [list(range(first + i, first + min(i + batch_size, len(part))))
                    for i in range(0, len(part), batch_size)]
        ends[len(batches) - 1] = k  # the batch that completes shard k
    loader = DataLoader(_EntryClips(dataset, todo_entries), batch_sampler=batches, num_workers=workers,
                        collate_fn=_collate)
    dtype = DTYPES[settings.dtype]
    bar = tqdm(total=len(entries), initial=len(entries) - len(todo_entries), desc="encoding", unit="clip",
               dynamic_ncols=True)
    means, stds, labels, captions, texts, masks = [], [], [], [], [], []
    for b, batch in enumerate(loader):
        mean, std = vae.posterior(batch["video"].to(vae.device))  # (B, C, F, h, w) each
        means.append(mean.cpu().to(dtype))
        stds.append(std.cpu().to(dtype))
        labels.append(batch["label"])
        captions += batch["caption"]
        if text is not None:
            hidden, mask = text(batch["caption"])  # (B, L, width), (B, L)
            texts.append(hidden.cpu().to(dtype))
            masks.append(mask.cpu())
        bar.update(len(batch["label"]))
        if b in ends:
            k = ends[b]
            tensors = {"mean": torch.cat(means), "label": torch.cat(labels),
                       "entry": torch.tensor(_shard_entries(entries, settings, k), dtype=torch.long)}
            if settings.store_std:
                tensors["std"] = torch.cat(stds)
            if text is not None:
                tensors["text"], tensors["text_mask"] = torch.cat(texts), torch.cat(masks)
            _write_shard(shard_path(output, k), tensors, captions)
            means, stds, labels, captions, texts, masks = [], [], [], [], [], []
    bar.close()
    return len(todo_entries)


def _shard_entries(entries: list, settings: CacheSettings, k: int) -> list:
    return entries[k * settings.shard_size:(k + 1) * settings.shard_size]


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise LatteError(f"{folder} is not a latent cache (no {MANIFEST}); write one with `latte encode`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LatteError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise LatteError(f"{path} is not a {FORMAT} v{VERSION} manifest")
    return manifest


def check_same(previous: dict, current: dict, folder: Path) -> None:
    """Refuse to extend a cache written with other settings or from other source files."""
    def flat(settings: dict) -> dict:
        return {**{k: v for k, v in settings.items() if k != "options"},
                **{f"options.{k}": v for k, v in settings.get("options", {}).items()}}

    old, new = flat(previous["settings"]), flat(current["settings"])
    diffs = [f"{key} {old.get(key)!r} vs {new.get(key)!r}" for key in dict.fromkeys([*old, *new])
             if old.get(key) != new.get(key)]
    if previous.get("sources") != current["sources"]:
        diffs.append("the source videos differ (files added, removed or changed length)")
    if diffs:
        raise LatteError(f"{folder} holds a cache of other settings ({'; '.join(diffs[:3])}): "
                         "use another --output or the same arguments")


class LatentCacheDataset(Dataset):
    """Items of a latent cache shaped like build_dataset's: "video" latents (C, F, h, w), "label", "caption",
    "images" (C, N, h, w) one latent frame from each of N other cached clips (+ "image_labels",
    "image_captions"); with cached caption embeddings "text" (1 + N, L, width) and "text_mask" (1 + N, L),
    the clip's caption first, then those of its image frames."""

    accepts_keys = True  # dataset[(index, draw)]: latent noise and image frames seeded by (seed, index, draw)

    def __init__(self, folder: str | Path, images_per_clip: int = 0, sample: bool = True, seed: int = 0):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        m = self.manifest
        if not m.get("complete"):
            missing = sum(not shard_path(self.folder, k).is_file() for k in range(m["num_shards"]))
            raise LatteError(f"latent cache {self.folder} is incomplete ({missing} of {m['num_shards']} shards "
                             "missing): rerun the same `latte encode` command to finish it")
        self.images_per_clip, self.seed = int(images_per_clip), seed
        self.sample = sample and m["settings"]["store_std"]
        self.shard_size = m["settings"]["shard_size"]
        self.class_names = m.get("class_names")
        self.num_classes = m.get("num_classes")
        self.vae = m["vae"]
        self.text = m.get("text")  # {"encoder", "max_length", "width"} when caption embeddings are stored
        self.skipped: list = []
        labels, captions = [], []
        for k in range(m["num_shards"]):
            path = shard_path(self.folder, k)
            if not path.is_file():
                raise LatteError(f"latent cache {self.folder}: {path.name} is missing; rerun `latte encode`")
            with safe_open(str(path), "pt") as f:
                labels.append(f.get_tensor("label"))
                captions += json.loads((f.metadata() or {}).get("captions", "null")) or [None] * len(labels[-1])
        self.labels = torch.cat(labels)  # (N,) -1 where there is no label
        self.captions = captions
        if len(self.labels) != m["num_entries"]:
            raise LatteError(f"latent cache {self.folder}: {len(self.labels)} clips in the shards, "
                             f"the manifest says {m['num_entries']}")
        self._handles: dict = {}

    def __getstate__(self) -> dict:  # open shard files stay in their process
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, index: int, name: str, frame: int | None = None) -> torch.Tensor:
        shard, row = divmod(index, self.shard_size)
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(shard_path(self.folder, shard)), "pt")
        part = handle.get_slice(name)
        if frame is None:
            return part[row:row + 1][0].float()  # (C, F, h, w)
        return part[row:row + 1, :, frame:frame + 1][0].float()  # (C, 1, h, w)

    def _latent(self, index: int, frame: int | None, generator) -> torch.Tensor:
        mean = self._read(index, "mean", frame)
        if not self.sample:
            return mean
        return mean + self._read(index, "std", frame) * torch.randn(mean.shape, generator=generator)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, (tuple, list)):
            index, generator = int(key[0]), keyed_generator(self.seed, int(key[0]), int(key[1]))
        else:
            index, generator = int(key), None
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} out of range ({len(self)} clips)")
        item = {"video": self._latent(index, None, generator)}  # (C, F, h, w)
        with_text = [index]  # clips whose caption embeddings the item carries
        if self.labels[index] >= 0:
            item["label"] = int(self.labels[index])
        if self.captions[index] is not None:
            item["caption"] = self.captions[index]
        if self.images_per_clip:
            frames, labels, captions = [], [], []
            num_frames = self.manifest["latent_shape"][1]
            for _ in range(self.images_per_clip):
                other = other_clip(index, len(self), generator)
                frames.append(self._latent(other, randint(num_frames, generator), generator))  # (C, 1, h, w)
                labels.append(int(self.labels[other]))
                captions.append(self.captions[other])
                with_text.append(other)
            item["images"] = torch.cat(frames, dim=1)  # (C, N, h, w)
            if self.num_classes:
                item["image_labels"] = torch.tensor(labels, dtype=torch.long)
            if None not in captions:
                item["image_captions"] = captions
        if self.text:
            item["text"] = torch.stack([self._read(i, "text") for i in with_text])  # (1 + N, L, width)
            item["text_mask"] = torch.stack([self._read(i, "text_mask").long() for i in with_text])  # (1 + N, L)
        return item

    def empty_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt's embedding (L, width) and mask (L,), as the cache's text encoder gave them."""
        if not self.text:
            raise LatteError(f"latent cache {self.folder} holds no caption embeddings (latte encode --text-encoder)")
        with safe_open(str(self.folder / EMPTY_TEXT), "pt") as f:
            return f.get_tensor("text")[0].float(), f.get_tensor("text_mask")[0].long()
