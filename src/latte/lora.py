"""LoRA adapters through peft (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
a targeted linear layer computes W x + (alpha / r) B A x with A (r, in), B (out, r), B zero at start,
so the adapted model starts equal to its base. peft injects the layers in place
(`blocks.0.attn.qkv` becomes a wrapper holding `base_layer`, `lora_A.default`, `lora_B.default`);
merging folds B A back into W and restores plain nn.Linear modules and the base's state-dict keys.

Targets are named relative to a block (`attn.qkv`, `mlp.fc1`, ...), blocks found by their `.kind`,
so the same names select layers of class and text models alike. Training injects adapters
(latte.train.finetune); loading a LoRA run for inference applies and merges them (latte.model_sources).
peft is imported where adapters are used: it imports transformers (seconds), which no other command needs.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from latte.errors import LatteError
from latte.files import replace_folder
from latte.models import named_blocks
from latte.models.diffusers_interop import diffusers_sources

DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "cross_attn.q", "cross_attn.kv", "cross_attn.proj",
                   "temporal_attn.qkv", "temporal_attn.proj")
ADAPTER = "default"  # peft's adapter name; one adapter per model here


def target_modules(model: nn.Module, targets: list[str] | None) -> list[str]:
    """Full names of the linear layers named `targets` inside the model's blocks (None: DEFAULT_TARGETS,
    those the model has). A requested name that no block has is an error naming it."""
    wanted = list(DEFAULT_TARGETS if targets is None else targets)
    found, seen = [], set()
    for block_name, block in named_blocks(model):
        for name, module in block.named_modules():
            if name in wanted and isinstance(module, nn.Linear):
                found.append(f"{block_name}.{name}")
                seen.add(name)
    missing = [t for t in wanted if t not in seen]
    if targets is not None and missing:
        layers = sorted({n for _, b in named_blocks(model) for n, m in b.named_modules() if isinstance(m, nn.Linear)})
        raise LatteError(f"model.lora_targets: no block has a linear layer {missing[0]!r} (this model's: {', '.join(layers)})")
    if not found:
        raise LatteError("model.lora_targets selects no layer of this model")
    return found


def settings(model: nn.Module, section) -> dict:
    """The adapter settings a checkpoint stores: rank, alpha, dropout and the resolved module names."""
    targets = None if section.lora_targets is None else [t.strip() for t in section.lora_targets.split(",") if t.strip()]
    rank, modules = section.lora_rank, target_modules(model, targets)
    check_rank(model, modules, rank)
    return {"rank": rank, "alpha": float(section.lora_alpha if section.lora_alpha is not None else rank),
            "dropout": section.lora_dropout, "modules": modules}


def check_rank(model: nn.Module, modules: list[str], rank: int) -> None:
    """A rank above min(in, out) of an adapted layer adds nothing a full update would not, and its adapters
    outgrow the layer (a large enough one outgrows the machine's memory): refused, naming the narrowest layer."""
    name, layer = min(((n, model.get_submodule(n)) for n in modules), key=lambda nl: min(nl[1].weight.shape))
    width = min(layer.in_features, layer.out_features)
    if rank > width:
        raise LatteError(f"model.lora_rank {rank} exceeds the width of the layers it adapts: {name} maps "
                         f"{layer.in_features} to {layer.out_features} features, so the rank can be at most {width}")


def add_adapters(model: nn.Module, lora: dict) -> nn.Module:
    """Inject fresh adapters (A Kaiming-uniform, B zero) into `lora["modules"]`; only they stay trainable."""
    import peft  # see the module docstring

    config = peft.LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=list(lora["modules"]))
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return model


def load_adapters(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors (names as in the adapted model); every adapter must be present."""
    expected = {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise LatteError(f"adapter weights do not match the model: {len(missing)} missing (e.g. {missing[:1]}), "
                         f"{len(extra)} unexpected (e.g. {extra[:1]})")
    model.load_state_dict(state, strict=False)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer  # see the module docstring

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += alpha/r B A) and put the plain layer back."""
    for name, layer in lora_layers(model):
        layer.merge(adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def export_peft_adapter(model: nn.Module, lora: dict, folder, base: str, overwrite: bool = False) -> Path:
    """The adapters of a text model in peft's format over diffusers' LatteTransformer3DModel names:
    `adapter_config.json` + `adapter_model.safetensors` (`PeftModel.from_pretrained(transformer, folder)`).
    A fused layer splits exactly: (q; k; v) = (B_q; B_k; B_v) A, so each part keeps A and takes its rows of B."""
    import peft  # see the module docstring

    tensors, modules = {}, []
    for name, layer in lora_layers(model):
        a, b = layer.lora_A[ADAPTER].weight.detach().cpu(), layer.lora_B[ADAPTER].weight.detach().cpu()
        parts = [p.removesuffix(".weight") for p in diffusers_sources(f"{name}.weight")]
        for part, rows in zip(parts, b.chunk(len(parts), dim=0)):  # (out/parts, r) each
            tensors[f"base_model.model.{part}.lora_A.weight"] = a.clone().contiguous()
            tensors[f"base_model.model.{part}.lora_B.weight"] = rows.clone().contiguous()
            modules.append(part)
    config = peft.LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=sorted(modules), base_model_name_or_path=base)
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise LatteError(f"adapter folder exists already: {folder} (pass --overwrite to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:  # written beside the target, moved there when complete: never a half-written adapter folder
        config.save_pretrained(str(tmp))
        save_file(tensors, os.fspath(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        json.loads((tmp / "adapter_config.json").read_text())
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
