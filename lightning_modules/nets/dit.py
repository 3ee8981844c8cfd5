"""Spatiotemporal diffusion transformer, in the manner of DiT's models.py: built bottom-up
(embedders -> attention -> block -> final layer in `blocks.py`, then the model and presets here).

The research switches (each one constructor argument, hence one `--model.dit.X` flag):
- `block_type`, Latte's four variants and full attention: ``factorized`` (1: spatial and temporal
  blocks alternate), ``late_fusion`` (2: all spatial blocks, then all temporal), ``spatial_temporal``
  / ``vdt`` (3: one block with spatial then temporal attention, or VDT's temporal then spatial),
  ``split_heads`` (4: half the heads attend within the frame, half along time, in one layer),
  ``full`` (joint space-time attention).
- `causal`: frame-causal temporal / full attention (a frame sees itself and the past only). Two
  limits: causality is per *token* frame, so with tubelets (pt > 1) the pt frames of one tubelet (and
  the codec's temporally compressed frames) see each other; and only self-attention is masked: with
  `frame_cond="cross_attn"` or `"adaln"` every frame sees all given frames, future ones included
  (cross-attention to them / their pooled mean in the adaLN vector). With `frame_cond="concat"` the
  given tokens sit in the sequence and obey the causal mask.
- `cond_injection`: timestep / class / pooled text enter by adaLN-Zero (default) or as in-context
  tokens (DiT's comparison; Latte found adaLN better). Latte's "S-AdaLN" is adaLN whose scale and
  shift are computed from the timestep (+ class) embedding and applied to every token, spatial and
  temporal blocks alike -- exactly what our adaLN-Zero does (one modulation vector per sample,
  broadcast to all its tokens, plus DiT's zero-initialised gates); Latte contrasts it with feeding
  the same embeddings as tokens, which is our "in_context": K = 1 to 3 tokens (timestep, class,
  pooled text) whose keys/values every self-attention adds to each segment (a frame, a pixel track
  or the clip). Unlike DiT's single-sequence in-context variant, the tokens are re-projected by each
  layer but not updated: factorized attention has no one sequence for them to ride in.
- `frame_cond`, VDT's three ways to condition on given frames (mask True = given): ``concat``
  (the given clean tokens sit in the sequence, tagged by a mask embedding: VDT's token
  concatenation), ``cross_attn`` (the sequence keeps only the mask tag at given positions; every
  block cross-attends to the given tokens), ``adaln`` (likewise, and the given tokens' mean goes into
  the adaLN conditioning vector).
Positions are 3D RoPE on per-token (t, h, w) coordinates (any shape, packing) or fixed sin-cos: DiT's
2D embedding added to the tokens, and a temporal one added to the tokens too ("sincos") or only to
the input of frame-mixing attention ("sincos_framewise": each frame's spatial path is then exactly
an image DiT's, see `init_from_image_dit`).
Conditioning also: optional cross-attention on caption tokens, VDT's mask embedding.

Two entry points share every weight: `forward` for a single-shape batch (fast path, plain reshapes)
and `forward_packed` for a list of variable-shape clips packed into one token sequence.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .attention import GridLayout, PackedLayout, check_backend, rope_3d, rope_axis_dims
from .blocks import Context, CrossAttention, DiTBlock, FinalLayer, Mlp, TimestepEmbedder  # noqa: F401
from .positions import sincos_spatial, sincos_temporal

BLOCK_TYPES = ("factorized", "late_fusion", "vdt", "spatial_temporal", "split_heads", "full")
POS_EMBEDS = ("rope", "sincos", "sincos_framewise")
COND_INJECTIONS = ("adaln", "in_context")
FRAME_CONDS = ("concat", "cross_attn", "adaln")


class VideoDiT(nn.Module):
    """Video diffusion transformer. Input/output (B, C, T, H, W); see the module docstring.

    Args:
        in_channels: latent (or pixel) channels C.
        patch_size: (pt, ph, pw); pt = 1 embeds each frame with 2D patches, pt > 1 uses tubelets
            (T is zero-padded to a multiple of pt inside and cropped back).
        hidden_size, depth, num_heads, mlp_ratio: transformer size (presets in `DIT_PRESETS`).
        block_type: "factorized", "late_fusion" (depth even: depth counts spatial and temporal
            blocks), "vdt", "spatial_temporal", "split_heads" (num_heads >= 2) or "full".
        pos_embed: "rope" (3D rotary on (t, h, w); any shape, packing), "sincos" (fixed: DiT's 2D
            sin-cos plus a temporal sin-cos, both added to the tokens, as Latte / VDT) or
            "sincos_framewise" (DiT's 2D sin-cos added to the tokens, the temporal one only to the
            input of frame-mixing attention: each frame's path is an image DiT's, see init_from).
        causal: frame-causal temporal and full attention (per latent / tubelet frame; given frames
            under frame_cond "cross_attn" / "adaln" are seen by every frame: see the module docstring).
        cond_injection: "adaln" (adaLN-Zero) or "in_context" (conditioning tokens, no modulation).
        frame_cond: "concat", "cross_attn" or "adaln": how given frames condition the rest.
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
        causal: bool = False,
        cond_injection: str = "adaln",
        frame_cond: str = "concat",
        num_classes: int = 0,
        text_dim: int = 0,
        pooled_text_dim: int = 0,
        learn_sigma: bool = False,
        attn_backend: str = "sdpa",
        grad_checkpointing: bool = False,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        for name, value, allowed in (
            ("block_type", block_type, BLOCK_TYPES),
            ("pos_embed", pos_embed, POS_EMBEDS),
            ("cond_injection", cond_injection, COND_INJECTIONS),
            ("frame_cond", frame_cond, FRAME_CONDS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is unknown; choose one of {allowed}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        if block_type in ("factorized", "late_fusion") and depth % 2:
            raise ValueError(
                f"block_type={block_type!r} splits depth into spatial and temporal blocks: "
                f"depth={depth} must be even"
            )
        if block_type == "split_heads" and num_heads < 2:
            raise ValueError(
                "block_type='split_heads' gives half the heads to space, half to time: num_heads >= 2"
            )
        check_backend(attn_backend)
        self.in_channels, self.out_channels = in_channels, in_channels * (2 if learn_sigma else 1)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.hidden_size, self.num_heads, self.depth = hidden_size, num_heads, depth
        self.block_type, self.pos_embed, self.attn_backend = block_type, pos_embed, attn_backend
        self.causal, self.cond_injection, self.frame_cond = causal, cond_injection, frame_cond
        self.num_classes, self.text_dim, self.pooled_text_dim = num_classes, text_dim, pooled_text_dim
        self.learn_sigma, self.grad_checkpointing, self.rope_base = learn_sigma, grad_checkpointing, rope_base
        self.temporal_enabled = True  # False: spatial-only phase (see `temporal_parameters`)
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
        self.frame_embedder = (  # pooled given-frame tokens -> conditioning vector (frame_cond='adaln')
            Mlp(in_features=hidden_size, hidden_features=hidden_size, out_features=hidden_size)
            if frame_cond == "adaln"
            else None
        )

        kinds = {
            "factorized": [("spatial",) if i % 2 == 0 else ("temporal",) for i in range(depth)],
            "late_fusion": [("spatial",)] * (depth // 2) + [("temporal",)] * (depth // 2),
            "vdt": [("temporal", "spatial")] * depth,
            "spatial_temporal": [("spatial", "temporal")] * depth,
            "split_heads": [("split",)] * depth,
            "full": [("full",)] * depth,
        }[block_type]
        adaln = cond_injection == "adaln"
        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden_size=hidden_size,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                kinds=k,
                cross=text_dim > 0,
                frame_cross=frame_cond == "cross_attn",
                adaln=adaln,
            )
            for k in kinds
        )
        self.final_layer = FinalLayer(
            hidden_size=hidden_size, patch_dim=pt * ph * pw * self.out_channels, adaln=adaln
        )
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
        for layer in [b.adaLN_modulation for b in self.blocks] + [self.final_layer.adaLN_modulation]:
            if layer is not None:
                nn.init.zeros_(layer[-1].weight)
                nn.init.zeros_(layer[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def temporal_parameters(self) -> list[nn.Parameter]:
        """Parameters used only to mix frames: whole temporal blocks, and the temporal attention
        layers of two-attention blocks; the latter's adaLN rows are `temporal_modulation_rows`.
        (Full / split-head attention is not separable: in the spatial-only phase it runs as spatial,
        and it cannot be frozen.)"""
        params = []
        for block in self.blocks:
            if block.kinds == ("temporal",):
                params += list(block.parameters())
            elif len(block.kinds) > 1:
                for kind, attn in zip(block.kinds, block.attns):
                    params += list(attn.parameters()) if kind == "temporal" else []
        return params

    def temporal_modulation_rows(self) -> list[tuple[nn.Parameter, slice]]:
        """(parameter, rows) of the shift / scale / gate that feed the temporal attention of
        two-attention blocks ("vdt", "spatial_temporal"): rows of the block's shared adaLN layer
        (weight and bias) that serve only the temporal path."""
        out = []
        for block in self.blocks:
            if len(block.kinds) > 1 and block.adaLN_modulation is not None:
                for a, kind in enumerate(block.kinds):
                    if kind == "temporal":
                        rows = slice(3 * a * self.hidden_size, 3 * (a + 1) * self.hidden_size)
                        out += [
                            (block.adaLN_modulation[1].weight, rows),
                            (block.adaLN_modulation[1].bias, rows),
                        ]
        return out

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

    def _condition(self, t, y, pooled_text, batch: int, device) -> list[torch.Tensor]:
        """Per-sample conditioning vectors, each (B, D): timestep, class, pooled text (as present).
        adaLN sums them into c; in-context conditioning makes each one a token."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        parts = [self.t_embedder(t)]  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
            y = torch.where(y < 0, self.num_classes, y)  # label -1 (none) -> null class
            parts.append(self.y_embedder(y))  # (B, D)
        if self.pooled_embedder is not None and pooled_text is not None:
            parts.append(self.pooled_embedder(pooled_text.to(parts[0].dtype)))  # (B, D)
        return parts

    def _given_frames(self, content, given, layout):
        """VDT's cross-attention / adaLN schemes: the given tokens of each sample, with fixed space-time
        sin-cos positions, padded to (B, L, D) with a (B, L) validity mask (L >= 1)."""
        pos = sincos_spatial(layout.coords, self.hidden_size) + sincos_temporal(
            layout.coords, self.hidden_size
        )
        pos = pos.to(content.dtype)
        if layout.packed:
            samples = zip(
                content[0].split(layout.sizes), given[0].split(layout.sizes), pos.split(layout.sizes)
            )
        else:
            samples = ((ci, gi, pos) for ci, gi in zip(content, given.expand(content.shape[:2])))
        picked = [(ci + pi)[gi.bool()] for ci, gi, pi in samples]  # list of (L_i, D)
        # at least one (masked) slot: a sample with nothing given gets the same zero attention output
        # (plus the projection's bias) whether it runs alone or packed beside samples that have some
        frames = nn.utils.rnn.pad_sequence(
            picked + [content.new_zeros(1, content.shape[-1])], batch_first=True
        )
        lengths = torch.tensor([len(p) for p in picked], device=content.device)
        return frames[:-1], torch.arange(frames.shape[1], device=content.device)[None] < lengths[:, None]

    def _run(self, content, given, layout, t, y, pooled_text, text, text_mask, batch: int):
        """content (B|1, N, D) embedded patches; given (B|1, N|1) long -> (B|1, N, patch_dim)."""
        parts = self._condition(t, y, pooled_text, batch, content.device)  # list of (B, D)
        ctx = Context(layout=layout, causal=self.causal, temporal=self.temporal_enabled)
        if self.frame_cond == "concat":
            h = content + self.mask_embedder(given)  # (B|1, N, D)
        else:  # given content leaves the sequence (only its mask tag stays) and enters by the scheme
            frames, frames_mask = self._given_frames(content, given, layout)
            h = content * (1 - given)[..., None].to(content.dtype) + self.mask_embedder(given)
            if self.frame_cond == "cross_attn":
                ctx.frames, ctx.frames_mask = frames, frames_mask
            else:
                weights = frames_mask[..., None] / frames_mask.sum(1).clamp(min=1)[:, None, None]  # (B, L, 1)
                pooled = (frames * weights).sum(1)  # (B, D) mean of the given tokens (0 if none)
                parts.append(self.frame_embedder(pooled))
        if self.pos_embed == "rope":
            ctx.rope = rope_3d(layout.coords, self.hidden_size // self.num_heads, self.rope_base)
        else:
            h = h + sincos_spatial(layout.coords, self.hidden_size).to(h.dtype)  # (B|1, N, D)
            tpos = sincos_temporal(layout.coords, self.hidden_size).to(h.dtype)  # (N, D)
            if self.pos_embed == "sincos":
                h = h + tpos
            else:
                ctx.tpos = tpos
        if text is not None:
            if self.text_embedder is None:
                raise ValueError(
                    "text tokens were given but the model has text_dim=0; set text_dim to their width"
                )
            ctx.text, ctx.text_mask = self.text_embedder(text.to(h.dtype)), text_mask  # (B, L, D)
        c = sum(parts)  # (B, D)
        if self.cond_injection == "in_context":
            ctx.tokens = torch.stack(parts, dim=1)  # (B, K, D)
        for block in self.blocks:
            if not self.temporal_enabled and block.kinds == ("temporal",):
                continue  # spatial-only phase: temporal blocks are skipped
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, ctx, use_reentrant=False)
            else:
                h = block(h, c, ctx)  # (B|1, N, D)
        return self.final_layer(h, c, layout)  # (B|1, N, patch_dim)

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self, x, t, *, mask=None, y=None, text=None, text_mask=None, pooled_text=None
    ) -> torch.Tensor:
        """x (B, C, T, H, W); t (B,); mask (B, 1, T, H, W) bool, True = given -> (B, C_out, T, H, W)."""
        b, _, T, H, W = x.shape
        layout = GridLayout(batch=b, grid=self.token_grid(T, H, W), device=x.device)
        content = self.x_embedder(self._patchify(x))  # (B, N, D)
        given = self._given_tokens(mask, x)  # (B, N|1)
        out = self._run(content, given, layout, t, y, pooled_text, text, text_mask, b)  # (B, N, patch_dim)
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
        content = self.x_embedder(torch.cat(tokens))[None]  # (1, N, D)
        masks = masks if masks is not None else [None] * len(xs)
        given = torch.cat(  # (N,); a clip whose mask is None has nothing given
            [
                torch.zeros(n, dtype=torch.long, device=x.device)
                if m is None
                else self._given_tokens(m[None], x[None])[0]
                for m, x, n in zip(masks, xs, layout.sizes)
            ]
        )[None]  # (1, N)
        out = self._run(content, given, layout, t, y, pooled_text, text, text_mask, len(xs))[
            0
        ]  # (N, patch_dim)
        return [
            self._unpatchify(o[None], *s)[0] for o, s in zip(out.split(layout.sizes), shapes)
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
