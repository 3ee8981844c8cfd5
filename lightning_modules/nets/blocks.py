"""Building blocks of the video DiT (bottom-up, as in DiT's models.py): embedders, attention layers,
the adaLN-Zero block and the final layer. The model that assembles them is `dit.VideoDiT`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange

from .attention import apply_rope

TEMPORAL_KINDS = ("temporal", "full", "split")  # attention kinds that mix frames


@dataclass
class Context:
    """What every block needs besides x and c, built once per forward pass."""

    layout: object  # GridLayout | PackedLayout
    rope: torch.Tensor | None = None  # (N, head_dim/2) complex rotations
    tpos: torch.Tensor | None = None  # (N, D) temporal sin-cos, added to the input of frame-mixing attention
    text: torch.Tensor | None = None  # (B, L, D) caption tokens
    text_mask: torch.Tensor | None = None  # (B, L) bool
    frames: torch.Tensor | None = None  # (B, L, D) given frames' tokens (frame_cond='cross_attn')
    frames_mask: torch.Tensor | None = None  # (B, L) bool
    tokens: torch.Tensor | None = (
        None  # (B, K, D) in-context conditioning tokens (cond_injection='in_context')
    )
    causal: bool = False  # frame-causal temporal / full attention
    temporal: bool = True  # False: spatial-only phase (frame-mixing attention skipped or made spatial)


def _tuple(x):
    return None if x is None else tuple(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift with one temporary less


# ----------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Scalar timesteps (B,) -> (B, D) through sinusoidal features and an MLP (DiT)."""

    def __init__(self, *, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(
            self.timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype)
        )  # (B, D)


class Mlp(nn.Module):
    def __init__(self, *, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention whose pattern (full / spatial / temporal / split) comes from the layout.
    "split" is Latte's variant 4: the first half of the heads attend within the frame, the others
    along time, in one layer (one qkv and one output projection)."""

    def __init__(self, *, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, layout, kind: str, rope, causal: bool = False, tokens=None):
        """x (B, N, D); `tokens` (B, K, D): in-context tokens every query also attends to."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.num_heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)  # (B, N, heads, d)
        extra = None
        if tokens is not None:  # keys/values of the tokens from this layer's own projection, no rotation
            extra = rearrange(
                self.qkv(tokens), "b k (three h d) -> three b k h d", three=3, h=self.num_heads
            )[1:]
        if kind == "split":
            s = self.num_heads // 2
            part = (
                [None, None]
                if extra is None
                else [(e[:, :, :s] for e in extra), (e[:, :, s:] for e in extra)]
            )
            out = torch.cat(
                [
                    layout.attend(q[:, :, :s], k[:, :, :s], v[:, :, :s], "spatial", extra=_tuple(part[0])),
                    layout.attend(
                        q[:, :, s:], k[:, :, s:], v[:, :, s:], "temporal", causal, extra=_tuple(part[1])
                    ),
                ],
                dim=2,
            )  # (B, N, heads, d)
        else:
            out = layout.attend(q, k, v, kind, causal=causal, extra=extra)  # (B, N, heads, d)
        return self.proj(rearrange(out, "b n h d -> b n (h d)"))  # (B, N, D)


class CrossAttention(nn.Module):
    """Video tokens attend to their own sample's caption tokens."""

    def __init__(self, *, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, text, text_mask, layout):
        q = rearrange(self.q(x), "b n (h d) -> b n h d", h=self.num_heads)  # (B, N, heads, d)
        k, v = rearrange(
            self.kv(text), "b l (two h d) -> two b l h d", two=2, h=self.num_heads
        )  # (B', L, ..)
        out = layout.cross_attend(q, k, v, text_mask)  # (B, N, heads, d)
        return self.proj(rearrange(out, "b n h d -> b n (h d)"))  # (B, N, D)


# ----------------------------------------------------------------------------------------------
# Block and final layer
# ----------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """adaLN-Zero block: one or more self-attentions (`kinds`), optional cross-attention to caption
    tokens (`cross`) and to the given frames' tokens (`frame_cross`, VDT's cross-attention scheme),
    then the MLP. `adaln=False` (in-context conditioning) drops the modulation: shift = scale = 0 and
    gate = 1, a plain pre-norm transformer block."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        kinds: tuple[str, ...],
        cross: bool,
        frame_cross: bool = False,
        adaln: bool = True,
    ):
        super().__init__()
        self.kinds = kinds
        self.norms = nn.ModuleList(
            nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6) for _ in kinds
        )
        self.attns = nn.ModuleList(SelfAttention(hidden_size=hidden_size, num_heads=num_heads) for _ in kinds)
        self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6) if cross else None
        self.cross = CrossAttention(hidden_size=hidden_size, num_heads=num_heads) if cross else None
        self.frame_cross_norm = nn.LayerNorm(hidden_size, eps=1e-6) if frame_cross else None
        self.frame_cross = (
            CrossAttention(hidden_size=hidden_size, num_heads=num_heads) if frame_cross else None
        )
        self.mlp_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio), out_features=hidden_size
        )
        # shift, scale, gate for each self-attention and for the MLP
        self.adaLN_modulation = (
            nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 3 * (len(kinds) + 1) * hidden_size))
            if adaln
            else None
        )

    def _mods(self, c, ctx: Context):
        if self.adaLN_modulation is None:
            zero, one = c.new_zeros(1, 1, c.shape[-1]), c.new_ones(1, 1, c.shape[-1])
            return [zero, zero, one] * (len(self.kinds) + 1)
        return ctx.layout.per_token(self.adaLN_modulation(c)).chunk(
            3 * (len(self.kinds) + 1), dim=-1
        )  # (B|1, 1|N, D)

    def forward(self, x, c, ctx: Context):
        mods = self._mods(c, ctx)
        for i, kind in enumerate(self.kinds):
            if not ctx.temporal and kind in TEMPORAL_KINDS:  # spatial-only phase
                if kind == "temporal":
                    continue
                kind = "spatial"
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            inp = modulate(self.norms[i](x), shift, scale)  # (B, N, D)
            if ctx.tpos is not None and kind in TEMPORAL_KINDS:
                inp = (
                    inp + ctx.tpos
                )  # time enters only where frames mix: a frame's spatial path stays an image DiT's
            tokens = None if ctx.tokens is None else self.norms[i](ctx.tokens)  # (B, K, D)
            branch = self.attns[i](inp, ctx.layout, kind, ctx.rope, ctx.causal, tokens)  # (B, N, D)
            x = torch.addcmul(x, gate, branch)  # x + gate * branch
        if self.cross is not None and ctx.text is not None:
            x = x + self.cross(self.cross_norm(x), ctx.text, ctx.text_mask, ctx.layout)  # (B, N, D)
        if self.frame_cross is not None and ctx.frames is not None:
            x = x + self.frame_cross(
                self.frame_cross_norm(x), ctx.frames, ctx.frames_mask, ctx.layout
            )  # (B, N, D)
        shift, scale, gate = mods[-3:]
        return torch.addcmul(x, gate, self.mlp(modulate(self.mlp_norm(x), shift, scale)))  # (B, N, D)


class FinalLayer(nn.Module):
    """Norm, adaLN shift/scale (none with `adaln=False`) and the linear decoder to patch values."""

    def __init__(self, *, hidden_size: int, patch_dim: int, adaln: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_dim)
        self.adaLN_modulation = (
            nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size)) if adaln else None
        )

    def forward(self, x, c, layout):
        if self.adaLN_modulation is None:
            return self.linear(self.norm(x))  # (B, N, pt*ph*pw*C_out)
        shift, scale = layout.per_token(self.adaLN_modulation(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, pt*ph*pw*C_out)
