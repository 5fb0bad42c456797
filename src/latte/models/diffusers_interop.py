"""Weights in diffusers' layout: `LatteTransformer3DModel` folders (the released Latte-1) in and out,
and `PixArtTransformer2DModel` folders (PixArt-alpha) as initialisation of the spatial blocks.

Our names follow the Latte family (fused q/k/v as in `layers.Attention`); one table maps every
parameter of ours to the diffusers parameter(s) it is made of:

| ours                                   | diffusers                                            |
|----------------------------------------|------------------------------------------------------|
| x_embedder.proj                        | pos_embed.proj                                       |
| t_embedder.mlp.0 / .2                  | adaln_single.emb.timestep_embedder.linear_1 / _2     |
| t_block.1                              | adaln_single.linear                                  |
| caption_projection.fc1 / fc2           | caption_projection.linear_1 / linear_2               |
| blocks.{2i} (spatial)                  | transformer_blocks.{i}                               |
| blocks.{2i+1} (temporal)               | temporal_transformer_blocks.{i}                      |
|   .attn.qkv                            |   .attn1.to_q, to_k, to_v (concatenated on dim 0)    |
|   .attn.proj                           |   .attn1.to_out.0                                    |
|   .cross_attn.q / .kv / .proj          |   .attn2.to_q / to_k + to_v / to_out.0               |
|   .mlp.fc1 / .fc2                      |   .ff.net.0.proj / .ff.net.2                         |
|   .scale_shift_table                   |   .scale_shift_table                                 |
| final_layer.scale_shift_table / linear | scale_shift_table / proj_out                         |
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latte.errors import LatteError
from latte.files import atomic_path
from latte.models.checkpoints import TransferReport, copy_matching
from latte.models.config import ModelConfig
from latte.models.latte import Latte

LATTE_CLASS = "LatteTransformer3DModel"
PIXART_CLASSES = ("PixArtTransformer2DModel", "Transformer2DModel")  # the latter: early PixArt-alpha exports
WEIGHT_FILES = ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.safetensors.index.json",
                "diffusion_pytorch_model{v}.bin", "diffusion_pytorch_model{v}.bin.index.json")

TOP_LEVEL = {
    "x_embedder.proj.": "pos_embed.proj.",
    "t_embedder.mlp.0.": "adaln_single.emb.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "adaln_single.emb.timestep_embedder.linear_2.",
    "t_block.1.": "adaln_single.linear.",
    "caption_projection.fc1.": "caption_projection.linear_1.",
    "caption_projection.fc2.": "caption_projection.linear_2.",
    "final_layer.linear.": "proj_out.",
    "final_layer.scale_shift_table": "scale_shift_table",
}
BLOCK_LISTS = ("transformer_blocks.", "temporal_transformer_blocks.")  # our blocks.{2i}, blocks.{2i+1}
IN_BLOCK: dict[str, tuple[str, ...]] = {
    "attn.qkv.": ("attn1.to_q.", "attn1.to_k.", "attn1.to_v."),
    "attn.proj.": ("attn1.to_out.0.",),
    "cross_attn.q.": ("attn2.to_q.",),
    "cross_attn.kv.": ("attn2.to_k.", "attn2.to_v."),
    "cross_attn.proj.": ("attn2.to_out.0.",),
    "mlp.fc1.": ("ff.net.0.proj.",),
    "mlp.fc2.": ("ff.net.2.",),
    "scale_shift_table": ("scale_shift_table",),
}


def diffusers_sources(key: str) -> tuple[str, ...]:
    """The diffusers parameter names our parameter `key` is the dim-0 concatenation of."""
    for ours, theirs in TOP_LEVEL.items():
        if key.startswith(ours):
            return (theirs + key[len(ours):],)
    if key.startswith("blocks."):  # variant 1: spatial and temporal blocks alternate
        index, rest = key[len("blocks."):].split(".", 1)
        pair, temporal = divmod(int(index), 2)
        for ours, parts in IN_BLOCK.items():
            if rest.startswith(ours):
                return tuple(f"{BLOCK_LISTS[temporal]}{pair}.{part}{rest[len(ours):]}" for part in parts)
    raise KeyError(f"no diffusers name for parameter {key}")


def to_diffusers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> diffusers names (fused tensors split; every tensor its own contiguous copy)."""
    out = {}
    for key, value in state.items():
        names = diffusers_sources(key)
        for name, part in zip(names, value.chunk(len(names), dim=0)):
            out[name] = part.detach().clone().contiguous()
    return out


def from_diffusers_state_dict(state: dict[str, torch.Tensor], keys) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Diffusers tensors -> ours for the parameter names `keys` (those whose parts are all present);
    returns (state, names of diffusers tensors left unused)."""
    out, used = {}, set()
    for key in keys:
        names = diffusers_sources(key)
        if all(n in state for n in names):
            out[key] = state[names[0]] if len(names) == 1 else torch.cat([state[n] for n in names], dim=0)
            used.update(names)
    return out, sorted(set(state) - used)


# ----------------------------------------------------------------------------------------------
# Folders


def _model_folder(folder) -> Path:
    """A diffusers model folder, or a pipeline folder holding one in `transformer/`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LatteError(f"diffusers model folder not found: {folder}")
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise LatteError(f"not a diffusers model folder (no config.json): {folder}")
    return folder


def read_diffusers_config(folder) -> dict:
    folder = _model_folder(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LatteError(f"cannot read {folder / 'config.json'}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(config, dict):
        raise LatteError(f"{folder / 'config.json'} does not hold a JSON object")
    return config


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a tensor file, ...
        raise LatteError(f"cannot read weights {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def read_diffusers_weights(folder, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers model folder: single file or sharded (index.json), safetensors
    preferred over .bin; `variant` selects e.g. `diffusion_pytorch_model.fp16.safetensors`."""
    folder = _model_folder(folder)
    tag = f".{variant}" if variant else ""
    for pattern in WEIGHT_FILES:
        path = folder / pattern.format(v=tag)
        if not path.is_file():
            continue
        if not path.name.endswith(".index.json"):
            return _load_file(path)
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise LatteError(f"cannot read shard index {path}: {type(exc).__name__}: {exc}") from exc
        state = {}
        for shard in shards:
            state.update(_load_file(folder / shard))
        return state
    names = ", ".join(p.format(v=tag) for p in WEIGHT_FILES)
    raise LatteError(f"no weights in {folder}: expected one of {names}")


def config_from_diffusers(config: dict) -> ModelConfig:
    """ModelConfig of a diffusers `LatteTransformer3DModel` config (unsupported options are errors)."""
    name = config.get("_class_name")
    if name in PIXART_CLASSES:
        raise LatteError(f"this is a PixArt-alpha transformer ({name}), not Latte: use it with init_from_pixart")
    if name != LATTE_CLASS:
        raise LatteError(f"not a diffusers {LATTE_CLASS} folder (config _class_name is {name!r})")
    heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 88)
    in_channels = config.get("in_channels")
    cross = config.get("cross_attention_dim")
    required = [
        (config.get("norm_type") == "ada_norm_single",
         f"norm_type {config.get('norm_type')!r} (need 'ada_norm_single')"),
        (config.get("activation_fn") == "gelu-approximate",
         f"activation_fn {config.get('activation_fn')!r} (need 'gelu-approximate')"),
        (not config.get("norm_elementwise_affine", True), "norm_elementwise_affine true (need false)"),
        (cross == heads * head_dim, f"cross_attention_dim {cross} (need the hidden size {heads * head_dim})"),
        (not config.get("dropout", 0.0), f"dropout {config.get('dropout')} (need 0)"),
        (in_channels is not None and config.get("caption_channels") is not None, "no in_channels or caption_channels"),
        (config.get("out_channels") in (None, in_channels, 2 * (in_channels or 0)),
         f"out_channels {config.get('out_channels')} (need in_channels or twice it)"),
    ]
    unsupported = [why for ok, why in required if not ok]
    if unsupported:
        raise LatteError(f"unsupported {LATTE_CLASS} config: {'; '.join(unsupported)}")
    out_channels = config.get("out_channels") or in_channels
    return ModelConfig(
        hidden_size=heads * head_dim, depth=2 * config.get("num_layers", 1), num_heads=heads,
        patch_size=config["patch_size"], in_channels=in_channels, learn_sigma=out_channels == 2 * in_channels,
        input_size=config.get("sample_size", 64), caption_channels=config["caption_channels"],
        conditioning="adaln-single", num_frames=config.get("video_length", 16), norm_eps=config.get("norm_eps", 1e-5),
        attention_bias=bool(config.get("attention_bias", False)), name=f"diffusers {LATTE_CLASS}",
    )


def config_to_diffusers(config: ModelConfig) -> dict:
    """The `config.json` of the equivalent diffusers `LatteTransformer3DModel`."""
    layout = [
        (config.is_text, "a text-to-video model (adaln-single conditioning)"),
        (not config.pooled_text, "no pooled caption path"),
        (config.temporal_pos == "absolute", "absolute temporal positions"),
        (config.variant == 1 and config.patch_embed == "frame", "variant 1 with frame patches"),
        (config.mlp_ratio == 4.0, "mlp_ratio 4"),
        (config.latent_hw[0] == config.latent_hw[1], "square latents"),
    ]
    missing = [what for ok, what in layout if not ok]
    if missing:
        raise LatteError(f"diffusers' {LATTE_CLASS} needs {', '.join(missing)}; this model ({config.name or 'latte'}) "
                         "has another design")
    import diffusers  # local: ~4 s to import; only loading into diffusers needs it

    return {
        "_class_name": LATTE_CLASS, "_diffusers_version": diffusers.__version__,
        "num_attention_heads": config.num_heads, "attention_head_dim": config.head_dim,
        "in_channels": config.in_channels, "out_channels": config.out_channels, "num_layers": config.depth // 2,
        "dropout": 0.0, "cross_attention_dim": config.hidden_size, "attention_bias": config.attention_bias,
        "sample_size": config.latent_hw[0], "patch_size": config.patch_size, "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single", "norm_elementwise_affine": False,
        "norm_eps": config.norm_eps, "caption_channels": config.caption_channels, "video_length": config.num_frames,
    }


def load_diffusers_transformer(folder, variant: str | None = None, dtype: torch.dtype | None = None) -> Latte:
    """Our text-to-video Latte with the weights of a diffusers `LatteTransformer3DModel` folder (e.g. the
    `transformer/` of maxin-cn/Latte-1, or that pipeline folder itself); loaded strictly, in eval mode."""
    config = config_from_diffusers(read_diffusers_config(folder))
    state = read_diffusers_weights(folder, variant)
    with torch.device("meta"):
        model = Latte(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ours, unused = from_diffusers_state_dict(state, expected)
    missing = sorted(set(expected) - set(ours))
    wrong = sorted(k for k in ours if ours[k].shape != expected[k])
    if missing or unused or wrong:
        raise LatteError(f"weights in {folder} do not match their config: {len(missing)} missing "
                         f"(e.g. {missing[:2]}), {len(unused)} unexpected (e.g. {unused[:2]}), "
                         f"{len(wrong)} of other shape (e.g. {wrong[:2]})")
    if dtype is not None:
        ours = {k: v.to(dtype) for k, v in ours.items()}
    model.load_state_dict(ours, strict=True, assign=True)  # meta parameters become the loaded tensors
    model.reset_position_tables()  # buffers diffusers does not store, made on the meta device above
    return model.eval()


def export_diffusers_transformer(model: Latte, folder) -> Path:
    """Write `config.json` + `diffusion_pytorch_model.safetensors` so that
    `diffusers.LatteTransformer3DModel.from_pretrained(folder)` (and so `LattePipeline`) loads the model.
    Each file is written atomically, weights first: a folder with a config is complete."""
    config = config_to_diffusers(model.config)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LatteError(f"export target exists and is not a folder: {folder}")
    state = to_diffusers_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    with atomic_path(folder / "diffusion_pytorch_model.safetensors") as tmp:
        save_file(state, os.fspath(tmp), metadata={"format": "pt"})
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def init_from_pixart(model: Latte, folder, variant: str | None = None) -> TransferReport:
    """Initialise from a diffusers PixArt-alpha transformer (the paper's T2V initialisation): spatial
    blocks, patch embedding, adaLN-single and caption projection by name, the final layer where shapes
    match; temporal blocks stay as they are. Report names are ours."""
    config = read_diffusers_config(folder)
    name = config.get("_class_name")
    if name == LATTE_CLASS:
        raise LatteError(f"this is a Latte transformer ({LATTE_CLASS}), not PixArt-alpha: "
                         "use load_diffusers_transformer")
    if name not in PIXART_CLASSES or config.get("norm_type") != "ada_norm_single":
        raise LatteError(f"not a diffusers PixArt-alpha transformer folder (config _class_name is {name!r}, "
                         f"norm_type {config.get('norm_type')!r})")
    state = read_diffusers_weights(folder, variant)
    if not model.config.is_text or model.config.variant != 1:
        raise LatteError("PixArt-alpha initialises a variant-1 text-to-video model (adaln-single conditioning)")
    temporal = tuple(f"blocks.{i}." for i, b in enumerate(model.blocks) if b.kind == "temporal")
    # PixArt-alpha has no pooled caption path: pooled_projection (model.pooled_text) keeps its own init
    spatial = [k for k in model.state_dict() if not k.startswith((*temporal, "pooled_projection."))]
    ours, unused = from_diffusers_state_dict(state, spatial)
    report = copy_matching(model, ours)
    report.unused = unused
    if not any(k.startswith("blocks.") for k in report.copied):
        raise LatteError(f"PixArt-alpha weights share no block weights with this model ({report.summary()})")
    return report
