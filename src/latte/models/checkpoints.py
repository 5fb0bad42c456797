"""Official Latte checkpoints (`ffs.pt`, `ucf101.pt`, ...) and ImageNet DiT initialisation.

The official files are torch pickles `{"ema": state_dict, ...}` whose keys our variant-1 / frame /
adaln / absolute model uses unchanged. Size, patch, frame count and classes are read from shapes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from latte.errors import LatteError
from latte.models.config import SIZES, ModelConfig
from latte.models.latte import Latte

PREFIXES = ("module.", "_orig_mod.")
REQUIRED_KEYS = ("pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight",
                 "blocks.0.attn.qkv.weight", "final_layer.linear.weight")


def read_state_dict(source, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a path or dict: unwraps {"ema"} / {"model"} / {"state_dict"} and strips
    `module.` / `_orig_mod.` prefixes (DDP / torch.compile)."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise LatteError(f"{what} not found: {source}")
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file, not a torch pickle, ...
            raise LatteError(f"cannot read {what} {os.fspath(source)}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(source, dict):
        raise LatteError(f"{what} holds a {type(source).__name__}, not a state dict")
    for wrapper in ("ema", "model", "state_dict"):
        if wrapper in source and isinstance(source[wrapper], dict):
            source = source[wrapper]
            break
    state = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text-model weights saved before the backbones were one (`spatial_blocks.i`, `temporal_blocks.i`)
    -> today's names (`blocks.2i`, `blocks.2i+1`); other state dicts are returned as they are."""
    if not any(k.startswith(("spatial_blocks.", "temporal_blocks.")) for k in state):
        return state
    out = {}
    for key, value in state.items():
        for old, offset in (("spatial_blocks.", 0), ("temporal_blocks.", 1)):
            if key.startswith(old):
                index, rest = key[len(old):].split(".", 1)
                key = f"blocks.{2 * int(index) + offset}.{rest}"
        out[key] = value
    return out


def infer_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> ModelConfig:
    """Rebuild the official model's config from tensor shapes (heads from the size table)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise LatteError(f"not a Latte checkpoint: missing {', '.join(missing)}")
    if "temp_embed" not in state:
        if "y_embedder.embedding_table.weight" in state and state["y_embedder.embedding_table.weight"].shape[0] == 1001:
            raise LatteError("this is an ImageNet DiT checkpoint, not a Latte one: use it with --init-from-dit")
        raise LatteError("not a Latte checkpoint of the official layout: no temp_embed")
    proj = state["x_embedder.proj.weight"]  # (D, C, p, p)
    if proj.ndim != 4:
        raise LatteError(f"unexpected patch projection shape {tuple(proj.shape)}")
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid = int(round(state["pos_embed"].shape[1] ** 0.5))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = num_heads or next((h for d, dim, h in SIZES.values() if dim == hidden), max(1, hidden // 64))
    out_features = state["final_layer.linear.weight"].shape[0]
    table = state.get("y_embedder.embedding_table.weight")
    return ModelConfig(
        hidden_size=hidden, depth=depth, num_heads=heads, patch_size=patch,
        input_size=grid * patch, num_frames=state["temp_embed"].shape[1], in_channels=in_channels,
        num_classes=0 if table is None else table.shape[0] - 1,
        learn_sigma=out_features == 2 * in_channels * patch * patch,
        name=f"official ({hidden}d x {depth} blocks, patch {patch})",
    )


def load_official_checkpoint(path_or_state_dict, num_heads: int | None = None) -> Latte:
    """Build a Latte model matching an official checkpoint and load its (EMA) weights strictly."""
    state = read_state_dict(path_or_state_dict, what="official checkpoint")
    model = Latte(infer_config(state, num_heads))
    load_exactly(model, state, "checkpoint does not match the official Latte layout")
    return model.eval()


def load_exactly(model: torch.nn.Module, state: dict, problem: str) -> None:
    """load_state_dict(strict) whose mismatch is one line: `problem`, then what is missing, unexpected or
    of another shape (a traceback of hundreds of lines otherwise)."""
    expected = model.state_dict()
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if wrong or missing or extra:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}), "
                  f"{len(wrong)} of other shape (e.g. {wrong[:2]})")
        raise LatteError(f"{problem}: {detail}")
    model.load_state_dict(state, strict=True)


@dataclass
class TransferReport:
    """What an initialisation copied into a model and what stayed freshly initialised."""

    copied: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"copied {len(self.copied)} tensors; kept fresh {len(self.not_in_source)} absent from the source "
                f"and {len(self.shape_mismatch)} of other shape ({', '.join(self.shape_mismatch[:4]) or 'none'}); "
                f"{len(self.unused)} source tensors unused")


def copy_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> TransferReport:
    """Copy every tensor whose name and shape match; report the rest."""
    report = TransferReport()
    own = model.state_dict()
    with torch.no_grad():
        for key, target in own.items():
            if key not in state:
                report.not_in_source.append(key)
            elif state[key].shape != target.shape:
                report.shape_mismatch.append(key)
            else:
                target.copy_(state[key].to(target.dtype))
                report.copied.append(key)
    report.unused = sorted(set(state) - set(own))
    return report


def init_from_dit(model: Latte, path_or_state_dict) -> TransferReport:
    """Initialise from an ImageNet DiT (`DiT-XL-2-256x256.pt`, a raw state dict): the paper's
    "ImageNet initialisation" (Sec. 4.3). DiT block i initialises Latte block i by name."""
    state = read_state_dict(path_or_state_dict, what="DiT checkpoint")
    if "blocks.0.attn.qkv.weight" not in state:
        raise LatteError("not a DiT checkpoint: no blocks.0.attn.qkv.weight")
    report = copy_matching(model, state)
    if not any(k.startswith("blocks.") for k in report.copied):
        raise LatteError(f"DiT checkpoint shares no block weights with this model ({report.summary()})")
    return report
