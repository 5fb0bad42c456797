"""Parallelism applied from one place (the torchtitan pattern): model code stays single-device.

`parallelize` applies, in this order,
1. activation checkpointing per block (model.grad_checkpointing): each block's forward is wrapped,
   the module itself is not replaced;
2. regional `torch.compile` (train.compile): each block compiled in place, so identical blocks
   reuse the compiled code and compile takes seconds, not minutes;
3. the data-parallel wrapper under torchrun: DDP (train.parallel=ddp), or FSDP2 `fully_shard` per
   block and at the root (train.parallel=fsdp) with bf16 parameters and fp32 gradient reduction
   (train.mixed_precision) and optional CPU offload (train.fsdp_cpu_offload).

None of the three changes state_dict keys, so a checkpoint always loads into a plain model. An FSDP
run gathers full state dicts to rank 0 (`model_state`, `optimizer_state`) and writes the same
single-file checkpoint as a one-process run; the optimizer state is stored keyed by parameter
index, as `torch.optim.Optimizer.state_dict` keys it, so either kind of run reads it back.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from latte.models import compile_blocks
from latte.models.checkpoints import load_exactly
from latte.train.distributed import Dist


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """The block's own forward, its activations recomputed in backward (training with grad only)."""
    forward = type(self).forward.__get__(self)
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing per block: the instance's forward becomes a checkpointed call of its
    class's forward (one shared function, so compiled blocks still share code)."""
    for block in model.blocks:
        block.forward = types.MethodType(_checkpointed_forward, block)


def _fsdp_kwargs(device: torch.device, world: int, bf16: bool, cpu_offload: bool) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy  # local: FSDP runs only

    return {"mesh": init_device_mesh(device.type, (world,)),
            # inputs are left alone: autocast (on with bf16) casts per op, and float64 rope angles stay exact
            "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                              reduce_dtype=torch.float32, cast_forward_inputs=False),
            "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}


def parallelize(model: nn.Module, ema: nn.Module, train, device: torch.device, dist: Dist,
                grad_checkpointing: bool, bf16: bool) -> nn.Module:
    """Apply checkpointing, compile and the data-parallel wrapper; returns the module to call in
    training (the DDP wrapper, or `model` itself). `train` is the TrainSection. Under FSDP the EMA
    is sharded like the model (its update then stays local to each rank's shards)."""
    if grad_checkpointing:
        checkpoint_blocks(model)
    if train.compile:
        compile_blocks(model)
    if not dist.enabled:
        return model
    if train.parallel == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard  # local: ~50 ms to import, and only FSDP runs need it

    for module in (model, ema):  # each rank initialised its own copy: shard rank 0's (DDP broadcasts it itself)
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)
    options = _fsdp_kwargs(device, dist.world, bf16, train.fsdp_cpu_offload)
    for block in model.blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    fully_shard(ema, **options)  # never run forward: only its shards matter
    return model


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def local(tensors) -> list[torch.Tensor]:
    """This rank's shards of (possibly DTensor) tensors."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def grad_sync(net: nn.Module, enabled: bool):
    """Context of one accumulation micro-step: gradients are reduced across ranks only when `enabled`."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(net, "no_sync"):  # DDP
        return net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2: keep unsharded-size grads until the last one
        net.set_requires_gradient_sync(False)
        return _restore_gradient_sync(net)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _restore_gradient_sync(net: nn.Module):
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def full_value(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective), a plain tensor unchanged."""
    return value.full_tensor() if isinstance(value, DTensor) else value


# -- checkpoints: full state dicts on rank 0 (collectives: every rank calls these under FSDP) --------
def _options(**extra):
    # local (here and below): ~70 ms to import, and only sharded (FSDP) models need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def model_state(model: nn.Module) -> dict:
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))  # empty on ranks other than 0


def load_model_state(model: nn.Module, state: dict) -> None:
    if not is_sharded(model):
        load_exactly(model, state, "the checkpoint's weights do not match its model config")
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options())  # every rank read the file: each keeps its shards


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the index keys of its state dict)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not state:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}  # name-keyed -> index-keyed
    groups = [{**g, "params": [index[name] for name in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model, optimizer)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    named = {"state": {names[i]: value for i, value in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, named, options=_options())
