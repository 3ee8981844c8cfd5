"""Spatiotemporal diffusion transformer, in the manner of DiT's models.py: built bottom-up
(embedders -> attention -> block -> final layer -> model -> presets).

One block class covers the three families:
- ``factorized`` (Latte variant 1): blocks alternate spatial and temporal self-attention;
- ``vdt``: each block runs temporal then spatial self-attention, then the MLP;
- ``full``: joint space-time attention.
Positions are 3D RoPE on per-token (t, h, w) coordinates (any shape, packing) or fixed sin-cos added
to the tokens (Latte / VDT). Conditioning: adaLN-Zero on timestep + class (or pooled text), optional
cross-attention on caption tokens, and VDT's mask embedding (given vs generated tokens).

Two entry points share every weight: `forward` for a single-shape batch (fast path, plain reshapes)
and `forward_packed` for a list of variable-shape clips packed into one token sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .attention import (
    GridLayout,
    PackedLayout,
    apply_rope,
    check_backend,
    rope_3d,
    rope_axis_dims,
    sincos_3d,
)

BLOCK_TYPES = ("factorized", "late_fusion", "vdt", "spatial_temporal", "full")
POS_EMBEDS = ("rope", "sincos")


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
    """Multi-head self-attention whose pattern (full / spatial / temporal) comes from the layout."""

    def __init__(self, *, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x, layout, kind: str, rope):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.num_heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)  # (B, N, heads, d)
        out = layout.attend(q, k, v, kind)  # (B, N, heads, d)
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
    """adaLN-Zero block: one or more self-attentions (`kinds`), optional cross-attention, MLP."""

    def __init__(
        self, *, hidden_size: int, num_heads: int, mlp_ratio: float, kinds: tuple[str, ...], cross: bool
    ):
        super().__init__()
        self.kinds = kinds
        self.norms = nn.ModuleList(
            nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6) for _ in kinds
        )
        self.attns = nn.ModuleList(SelfAttention(hidden_size=hidden_size, num_heads=num_heads) for _ in kinds)
        self.cross_norm = nn.LayerNorm(hidden_size, eps=1e-6) if cross else None
        self.cross = CrossAttention(hidden_size=hidden_size, num_heads=num_heads) if cross else None
        self.mlp_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio), out_features=hidden_size
        )
        # shift, scale, gate for each self-attention and for the MLP
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 3 * (len(kinds) + 1) * hidden_size)
        )

    def forward(self, x, c, layout, rope, text, text_mask):
        mods = layout.per_token(self.adaLN_modulation(c)).chunk(
            3 * (len(self.kinds) + 1), dim=-1
        )  # (B|1, 1|N, D)
        for i, kind in enumerate(self.kinds):
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            branch = self.attns[i](modulate(self.norms[i](x), shift, scale), layout, kind, rope)  # (B, N, D)
            x = torch.addcmul(x, gate, branch)  # x + gate * branch
        if self.cross is not None and text is not None:
            x = x + self.cross(self.cross_norm(x), text, text_mask, layout)  # (B, N, D)
        shift, scale, gate = mods[-3:]
        return torch.addcmul(x, gate, self.mlp(modulate(self.mlp_norm(x), shift, scale)))  # (B, N, D)


class FinalLayer(nn.Module):
    def __init__(self, *, hidden_size: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c, layout):
        shift, scale = layout.per_token(self.adaLN_modulation(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, pt*ph*pw*C_out)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class VideoDiT(nn.Module):
    """Video diffusion transformer. Input/output (B, C, T, H, W); see the module docstring.

    Args:
        in_channels: latent (or pixel) channels C.
        patch_size: (pt, ph, pw); pt = 1 embeds each frame with 2D patches, pt > 1 uses tubelets
            (T is zero-padded to a multiple of pt inside and cropped back).
        hidden_size, depth, num_heads, mlp_ratio: transformer size (presets in `DIT_PRESETS`).
        block_type: Latte's variants and full attention. "factorized" (Latte 1: spatial/temporal
            blocks alternate; depth counts both), "late_fusion" (Latte 2: depth/2 spatial blocks, then
            depth/2 temporal blocks), "vdt" (Latte 3, VDT's order: temporal then spatial attention in
            every block), "spatial_temporal" (Latte 3 as Latte wrote it: spatial then temporal in
            every block) or "full" (joint space-time).
        pos_embed: "rope" (3D rotary on (t, h, w); any shape, packing) or "sincos" (fixed, added).
        num_classes: > 0 adds a class embedding with one extra null class (y == num_classes, or y < 0).
        text_dim: > 0 adds cross-attention to caption tokens of that width.
        pooled_text_dim: > 0 adds a pooled text vector to the adaLN conditioning.
        learn_sigma: output 2C channels (prediction, variance interpolation) for learned-sigma DDPM.
        attn_backend: packed attention: "sdpa" (grouped, default), "sdpa_dense", "flex", "flash".
        grad_checkpointing: recompute each block in backward while training.
        rope_base: RoPE frequency base.
    """

    def __init__(
        self,
        *,
        in_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        block_type: str = "factorized",
        pos_embed: str = "rope",
        num_classes: int = 0,
        text_dim: int = 0,
        pooled_text_dim: int = 0,
        learn_sigma: bool = False,
        attn_backend: str = "sdpa",
        grad_checkpointing: bool = False,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type={block_type!r} is unknown; choose one of {BLOCK_TYPES}")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed={pos_embed!r} is unknown; choose one of {POS_EMBEDS}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        if block_type in ("factorized", "late_fusion") and depth % 2:
            raise ValueError(
                f"block_type={block_type!r} splits depth into spatial and temporal blocks: "
                f"depth={depth} must be even"
            )
        check_backend(attn_backend)
        self.in_channels, self.out_channels = in_channels, in_channels * (2 if learn_sigma else 1)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.hidden_size, self.num_heads, self.depth = hidden_size, num_heads, depth
        self.block_type, self.pos_embed, self.attn_backend = block_type, pos_embed, attn_backend
        self.num_classes, self.text_dim, self.pooled_text_dim = num_classes, text_dim, pooled_text_dim
        self.learn_sigma, self.grad_checkpointing, self.rope_base = learn_sigma, grad_checkpointing, rope_base
        if pos_embed == "rope":
            rope_axis_dims(hidden_size // num_heads)  # validates the head size early

        pt, ph, pw = self.patch_size
        self.x_embedder = nn.Linear(in_channels * pt * ph * pw, hidden_size)  # a Conv3d with kernel == stride
        self.t_embedder = TimestepEmbedder(hidden_size=hidden_size)
        self.y_embedder = (
            nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None
        )  # +1: null class
        self.pooled_embedder = (
            Mlp(in_features=pooled_text_dim, hidden_features=hidden_size, out_features=hidden_size)
            if pooled_text_dim > 0
            else None
        )
        self.text_embedder = (
            Mlp(in_features=text_dim, hidden_features=hidden_size, out_features=hidden_size)
            if text_dim > 0
            else None
        )
        self.mask_embedder = nn.Embedding(2, hidden_size)  # 0 = generated token, 1 = given (clean) token

        kinds = {
            "factorized": [("spatial",) if i % 2 == 0 else ("temporal",) for i in range(depth)],
            "late_fusion": [("spatial",)] * (depth // 2) + [("temporal",)] * (depth // 2),
            "vdt": [("temporal", "spatial")] * depth,
            "spatial_temporal": [("spatial", "temporal")] * depth,
            "full": [("full",)] * depth,
        }[block_type]
        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden_size=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio, kinds=k, cross=text_dim > 0
            )
            for k in kinds
        )
        self.final_layer = FinalLayer(hidden_size=hidden_size, patch_dim=pt * ph * pw * self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        for emb in (self.y_embedder, self.mask_embedder):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every residual branch and the output start at zero
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- helpers ------------------------------------------------------------------------------

    def token_grid(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """Token grid of a (T, H, W) input: T is padded up to a multiple of pt, H/W must divide."""
        pt, ph, pw = self.patch_size
        if h % ph or w % pw:
            raise ValueError(
                f"input height/width ({h}, {w}) must be multiples of the patch size ({ph}, {pw}); "
                "resize or crop the latents"
            )
        return -(-t // pt), h // ph, w // pw

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, C*pt*ph*pw); T padded with zeros up to a multiple of pt."""
        pt, ph, pw = self.patch_size
        if x.shape[2] % pt:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, pt - x.shape[2] % pt))
        return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)

    def _unpatchify(self, x: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
        """(B, N, C*pt*ph*pw) -> (B, C, T, H, W) cropped to the original T."""
        pt, ph, pw = self.patch_size
        gt, gh, gw = self.token_grid(t, h, w)
        x = rearrange(
            x, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=gt, h=gh, w=gw, pt=pt, ph=ph, pw=pw
        )
        return x[:, :, :t]

    def _given_tokens(self, mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """mask (B, 1, T, H, W) bool -> (B, N) long: 1 where the whole patch is given."""
        if mask is None:
            return torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
        if mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"mask must be (B, 1, T, H, W) matching x {tuple(x.shape)}; got {tuple(mask.shape)}"
            )
        m = mask.to(x.dtype)
        pt = self.patch_size[0]
        if m.shape[2] % pt:  # padding frames are don't-care (ones), not "generated" (zeros)
            m = nn.functional.pad(m, (0, 0, 0, 0, 0, pt - m.shape[2] % pt), value=1.0)
        return self._patchify(m).amin(dim=-1).round().long()  # (B, N)

    def _condition(self, t, y, pooled_text, batch: int, device) -> torch.Tensor:
        """Per-sample conditioning vector c (B, D): timestep + class + pooled text."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
            y = torch.where(y < 0, self.num_classes, y)  # label -1 (none) -> null class
            c = c + self.y_embedder(y)  # (B, D)
        if self.pooled_embedder is not None and pooled_text is not None:
            c = c + self.pooled_embedder(pooled_text.to(c.dtype))  # (B, D)
        return c

    def _positions(self, layout, dtype):
        """Returns (additive position embedding (N, D) or None, rope rotations (N, head_dim/2) or None)."""
        if self.pos_embed == "rope":
            return None, rope_3d(layout.coords, self.hidden_size // self.num_heads, self.rope_base)
        return sincos_3d(layout.coords, self.hidden_size).to(dtype), None

    def _run_blocks(self, x, c, layout, rope, text, text_mask):
        if text is not None:
            if self.text_embedder is None:
                raise ValueError(
                    "text tokens were given but the model has text_dim=0; set text_dim to their width"
                )
            text = self.text_embedder(text.to(x.dtype))  # (B, L, D)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, layout, rope, text, text_mask, use_reentrant=False)
            else:
                x = block(x, c, layout, rope, text, text_mask)  # (B, N, D)
        return self.final_layer(x, c, layout)  # (B, N, patch_dim)

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self, x, t, *, mask=None, y=None, text=None, text_mask=None, pooled_text=None
    ) -> torch.Tensor:
        """x (B, C, T, H, W); t (B,); mask (B, 1, T, H, W) bool, True = given -> (B, C_out, T, H, W)."""
        b, _, T, H, W = x.shape
        layout = GridLayout(batch=b, grid=self.token_grid(T, H, W), device=x.device)
        h = self.x_embedder(self._patchify(x))  # (B, N, D)
        h = h + self.mask_embedder(self._given_tokens(mask, x))  # (B, N|1, D)
        pos, rope = self._positions(layout, h.dtype)
        if pos is not None:
            h = h + pos  # (B, N, D)
        c = self._condition(t, y, pooled_text, b, x.device)  # (B, D)
        out = self._run_blocks(h, c, layout, rope, text, text_mask)  # (B, N, patch_dim)
        return self._unpatchify(out, T, H, W)  # (B, C_out, T, H, W)

    def forward_packed(
        self, xs, t, *, masks=None, y=None, text=None, text_mask=None, pooled_text=None
    ) -> list:
        """xs list of (C, T_i, H_i, W_i); t (N,); masks list of (1, T_i, H_i, W_i) bool
        -> list of (C_out, T_i, H_i, W_i). Attention never crosses samples."""
        if len(xs) == 0:
            raise ValueError("forward_packed needs at least one clip")
        shapes = [tuple(x.shape[1:]) for x in xs]
        layout = PackedLayout(
            grids=[self.token_grid(*s) for s in shapes], backend=self.attn_backend, device=xs[0].device
        )
        tokens = [self._patchify(x[None])[0] for x in xs]  # list of (N_i, C*pt*ph*pw)
        h = self.x_embedder(torch.cat(tokens))[None]  # (1, N, D)
        if masks is not None:
            given = torch.cat(  # (N,); a clip whose mask is None has nothing given
                [
                    torch.zeros(n, dtype=torch.long, device=x.device)
                    if m is None
                    else self._given_tokens(m[None], x[None])[0]
                    for m, x, n in zip(masks, xs, layout.sizes)
                ]
            )
            h = h + self.mask_embedder(given)[None]
        else:
            h = h + self.mask_embedder.weight[0]
        pos, rope = self._positions(layout, h.dtype)
        if pos is not None:
            h = h + pos[None]  # (1, N, D)
        c = self._condition(t, y, pooled_text, len(xs), xs[0].device)  # (B, D)
        out = self._run_blocks(h, c, layout, rope, text, text_mask)[0]  # (N, patch_dim)
        outs = out.split(layout.sizes)
        return [
            self._unpatchify(o[None], *s)[0] for o, s in zip(outs, shapes)
        ]  # list of (C_out, T_i, H_i, W_i)


# ----------------------------------------------------------------------------------------------
# Size presets (DiT / Latte naming: size / spatial patch)
# ----------------------------------------------------------------------------------------------

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PRESETS = {
    f"{name}/{p}": dict(depth=d, hidden_size=w, num_heads=h, patch_size=(1, p, p))
    for name, (d, w, h) in _SIZES.items()
    for p in (2, 4, 8)
}
