"""An independent, plain re-statement of the official Latte forward pass (variant 1, frame patches,
S-AdaLN, absolute temporal position), written from the published description of the model
(shared/reference/latte-facts.md section 3) directly on a state dict with the official key names.
The tests compare `latte.models` against it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _block(sd, i, x, c, heads, sdpa=False):
    """DiT adaLN-Zero block on x (S, L, D) with condition c (S, D); softmax attention written out, as the
    official code ships (or, with `sdpa`, through scaled_dot_product_attention, for speed comparisons)."""
    mods = _linear(sd, f"blocks.{i}.adaLN_modulation.1", F.silu(c)).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (m[:, None] for m in mods)
    h = _ln(x) * (1 + scale_msa) + shift_msa
    S, L, D = h.shape
    qkv = _linear(sd, f"blocks.{i}.attn.qkv", h).reshape(S, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if sdpa:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = (q @ k.transpose(-2, -1) / math.sqrt(D // heads)).softmax(dim=-1) @ v
    attn = out.transpose(1, 2).reshape(S, L, D)
    x = x + gate_msa * _linear(sd, f"blocks.{i}.attn.proj", attn)
    h = _ln(x) * (1 + scale_mlp) + shift_mlp
    h = _linear(sd, f"blocks.{i}.mlp.fc2", F.gelu(_linear(sd, f"blocks.{i}.mlp.fc1", h), approximate="tanh"))
    return x + gate_mlp * h


def official_forward(sd, x, t, y, heads: int, patch: int, out_channels: int, sdpa: bool = False):
    """x (B, F, C, H, W) as the official code takes it -> (B, F, out_channels, H, W)."""
    B, T, C, H, W = x.shape
    D = sd["pos_embed"].shape[-1]
    h, w = H // patch, W // patch
    x = F.conv2d(x.reshape(B * T, C, H, W), sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (B*T, N, D)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32, device=t.device) / 128)
    args = t.float()[:, None] * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = _linear(sd, "t_embedder.mlp.2", F.silu(_linear(sd, "t_embedder.mlp.0", t_freq)))
    if "y_embedder.embedding_table.weight" in sd:
        c = c + sd["y_embedder.embedding_table.weight"][y]
    N = x.shape[1]
    c_spatial = c.repeat_interleave(T, dim=0)
    c_temporal = c.repeat_interleave(N, dim=0)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(0, depth, 2):
        x = _block(sd, i, x, c_spatial, heads, sdpa)
        x = x.reshape(B, T, N, D).permute(0, 2, 1, 3).reshape(B * N, T, D)
        if i == 0:
            x = x + sd["temp_embed"]
        x = _block(sd, i + 1, x, c_temporal, heads, sdpa)
        x = x.reshape(B, N, T, D).permute(0, 2, 1, 3).reshape(B * T, N, D)
    shift, scale = _linear(sd, "final_layer.adaLN_modulation.1", F.silu(c_spatial)).chunk(2, dim=1)
    x = _ln(x) * (1 + scale[:, None]) + shift[:, None]
    x = _linear(sd, "final_layer.linear", x)  # (B*T, N, p*p*c)
    x = x.reshape(B * T, h, w, patch, patch, out_channels)
    x = torch.einsum("nhwpqc->nchpwq", x).reshape(B * T, out_channels, H, W)
    return x.reshape(B, T, out_channels, H, W)
