"""Start a video DiT from an image DiT: DiT's published checkpoints (a plain state dict) or Latte's
(`{"ema": ..., "model": ...}`), in DiT's key layout:

    pos_embed (1, N, D)                       fixed 2D sin-cos (ours is recomputed, same values)
    x_embedder.proj.{weight (D, C, p, p), bias}
    t_embedder.mlp.{0,2}.{weight, bias}
    y_embedder.embedding_table.weight (classes + 1, D)    last row = the null class (ours too)
    blocks.N.attn.{qkv,proj}.*  blocks.N.mlp.{fc1,fc2}.*  blocks.N.adaLN_modulation.1.* (6D rows:
        shift, scale, gate of the attention, then of the MLP)
    final_layer.linear.* (rows in (ph pw c) order; ours (c pt ph pw))  final_layer.adaLN_modulation.1.*
    temp_embed (Latte only: fixed temporal sin-cos, recomputed)

Two mappings:
- ``latte`` (what Latte does): DiT block i initialises video block i, spatial and temporal alike; a
  block with two attentions gets block i's attention in both, with its modulation rows copied. A
  same-depth preset takes every DiT key.
- ``per_frame``: DiT's blocks fill the spatial path in order (the spatial blocks, or the spatial
  attention of two-attention blocks; refused unless there is one spatial slot per DiT block: twice
  DiT's depth for factorized / late_fusion, its depth for vdt / spatial_temporal), and every temporal layer starts as the identity (its output
  projection and adaLN rows zeroed: gate 0), so the video model is exactly the image model applied to
  each frame (exactly so with `pos_embed="sincos_framewise"`, whose temporal part enters only at
  frame-mixing attention). Layers DiT has no counterpart for start as the identity as well: caption
  and given-frame cross-attention (output projection zeroed) and the pooled-text / pooled-given-frame
  embedders (last layer zeroed), so captions and given frames change nothing at the start.
  Refused for `cond_injection="in_context"` (no adaLN gates to close the temporal layers).

In both, the mask embedding's "generated" row is zeroed, so a clip with nothing given adds nothing.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from .positions import grid_coords, sincos_spatial

MODES = ("latte", "per_frame")


@dataclass
class InitReport:
    """Every checkpoint key in exactly one of loaded / reshaped / skipped (key -> what happened), and
    what was set on our side without a checkpoint key (`identity`) or left at its fresh init."""

    loaded: dict[str, str] = field(default_factory=dict)
    reshaped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    identity: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)

    def accounts_for(self, state_dict: dict) -> bool:
        seen = [*self.loaded, *self.reshaped, *self.skipped]
        return sorted(seen) == sorted(state_dict) and len(seen) == len(set(seen))

    def __str__(self) -> str:
        lines = [
            f"init_from_image_dit: {len(self.loaded)} loaded, {len(self.reshaped)} reshaped, "
            f"{len(self.skipped)} skipped; {len(self.identity)} set to identity; "
            f"{len(self.untouched)} of our tensors keep their fresh init"
        ]
        lines += [f"  reshaped {k}: {v}" for k, v in self.reshaped.items()]
        lines += [f"  skipped  {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)


def load_image_dit_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A DiT state dict from a file: plain (DiT's release), or Latte's / DiT's training checkpoints
    (`ema` preferred, then `model`, then `state_dict`); a DDP `module.` prefix is dropped. Loaded
    weights-only, with `argparse.Namespace` allowed: DiT's train.py stores its `args` as one."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("ema", "model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if isinstance(ckpt, dict):
        ckpt = {k.removeprefix("module."): v for k, v in ckpt.items()}
    if not isinstance(ckpt, dict) or not any(k.startswith("blocks.") for k in ckpt):
        raise ValueError(
            f"{path}: not a DiT/Latte checkpoint (no `blocks.N.*` keys at the top, in `ema` or `model`)"
        )
    return ckpt


def _spatial_slots(dit) -> list[tuple[int, int]]:
    """(block, attention) pairs of the spatial path, in depth order."""
    return [
        (b, a) for b, blk in enumerate(dit.blocks) for a, kind in enumerate(blk.kinds) if kind == "spatial"
    ]


@torch.no_grad()
def init_from_image_dit(dit, state_dict: dict[str, torch.Tensor], mode: str = "latte") -> InitReport:
    """Copy an image DiT's weights into `dit` (a `VideoDiT`); see the module docstring. Returns the
    report; raises when a shape cannot be matched (hidden size, channels, patch size)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; choose one of {MODES}")
    if mode == "per_frame" and dit.block_type in ("full", "split_heads"):
        raise ValueError(
            f"mode='per_frame' needs separate spatial attention; block_type={dit.block_type!r} mixes "
            "frames in every attention: use mode='latte'"
        )
    if mode == "per_frame" and dit.cond_injection == "in_context":
        raise ValueError(
            "mode='per_frame' starts the temporal layers at gate 0, but cond_injection='in_context' "
            "blocks have no adaLN gate (a temporal block's MLP would act from the start): use "
            "cond_injection='adaln' or mode='latte'"
        )
    rep = InitReport()
    params = dict(dit.named_parameters())
    done: set[str] = set()
    D, (pt, ph, pw), C = dit.hidden_size, dit.patch_size, dit.in_channels

    def put(ours: str, value: torch.Tensor, src: str, note: str | None = None):
        target = params[ours]
        if target.shape != value.shape:
            raise ValueError(f"{src} {tuple(value.shape)} does not fit {ours} {tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
        done.add(ours)
        if note is None:
            rep.loaded[src] = ours
        else:
            rep.reshaped[src] = f"-> {ours}: {note}"

    depth_src = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    slots = _spatial_slots(dit)
    if mode == "per_frame" and len(slots) < depth_src:
        raise ValueError(
            f"mode='per_frame' needs one spatial slot per DiT block: the checkpoint has {depth_src} blocks, "
            f"this {dit.block_type!r} model {len(slots)} spatial attentions, so part of DiT would be "
            f"dropped and the start would not be the image model per frame. Set the video depth to give "
            f"{depth_src} spatial slots: depth={2 * depth_src} for factorized / late_fusion (depth counts "
            f"spatial and temporal blocks), depth={depth_src} for vdt / spatial_temporal"
        )
    for key, value in state_dict.items():
        parts = key.split(".")
        if key == "pos_embed":
            n = value.shape[-2]
            side = round(n**0.5)
            same = value.shape[-1] == D and torch.allclose(
                value.reshape(n, -1).float(), sincos_spatial(grid_coords(1, side, side), D), atol=1e-5
            )
            rep.skipped[key] = (
                "fixed 2D sin-cos; VideoDiT computes the same values on any grid"
                if same
                else "not DiT's fixed sin-cos of this width: positions are not transferable"
            ) + {
                "rope": " (this model uses rope instead)",
                "sincos": " (its temporal sin-cos is added to every token: use pos_embed='sincos_framewise'"
                " for an exactly per-frame start)",
                "sincos_framewise": "",
            }[dit.pos_embed]
        elif key == "temp_embed":
            rep.skipped[key] = "Latte's fixed temporal sin-cos; recomputed"
        elif key == "x_embedder.proj.weight":
            if value.shape[1:] != (C, ph, pw):
                raise ValueError(f"{key} {tuple(value.shape)}: our patch embedding takes ({C}, {ph}, {pw})")
            w = value[:, :, None].expand(-1, -1, pt, -1, -1) / pt  # (D, C, pt, ph, pw): inflated over time
            note = "conv kernel flattened to our linear patch embedding" + (
                f", inflated over {pt} frames (/{pt})" if pt > 1 else ""
            )
            put("x_embedder.weight", w.reshape(D, -1), key, note)
        elif key == "x_embedder.proj.bias":
            put("x_embedder.bias", value, key)
        elif parts[0] == "t_embedder":
            put(key, value, key)
        elif key == "y_embedder.embedding_table.weight":
            if dit.y_embedder is None:
                rep.skipped[key] = "unconditional model: no class embedding (as Latte does)"
            elif dit.y_embedder.weight.shape != value.shape:
                rep.skipped[key] = (
                    f"{value.shape[0] - 1} classes + null in the checkpoint, {dit.num_classes} + null here"
                )
            else:
                put("y_embedder.weight", value, key)
        elif parts[0] == "final_layer" and parts[1] == "linear":
            c_src = value.shape[0] // (ph * pw)
            if c_src not in (dit.out_channels, 2 * dit.out_channels):
                raise ValueError(f"{key}: {c_src} output channels per patch, ours {dit.out_channels}")
            v = rearrange(value, "(ph pw c) ... -> c ph pw ...", ph=ph, pw=pw)[: dit.out_channels]
            v = v[:, None].expand(-1, pt, *v.shape[1:])  # every frame of a tubelet starts alike
            v = rearrange(v, "c pt ph pw ... -> (c pt ph pw) ...")
            note = "rows from DiT's (ph pw c) order to ours (c pt ph pw)"
            note += ", learned-sigma half dropped" if c_src != dit.out_channels else ""
            put(f"final_layer.linear.{parts[-1]}", v, key, note)
        elif parts[0] == "final_layer":
            if dit.final_layer.adaLN_modulation is None:
                rep.skipped[key] = "cond_injection='in_context': no adaLN"
            else:
                put(key, value, key)
        elif parts[0] == "blocks":
            _block_key(dit, key, value, int(parts[1]), parts[2:], mode, slots, depth_src, put, rep)
        else:
            rep.skipped[key] = "no counterpart in VideoDiT"

    # temporal layers that got no DiT weights start as the identity (per_frame), or keep their init
    if mode == "per_frame":
        for b, blk in enumerate(dit.blocks):
            for a, kind in enumerate(blk.kinds):
                if kind != "temporal":
                    continue
                for name in ("weight", "bias"):
                    blk.attns[a].proj.get_parameter(name).zero_()
                    rep.identity.append(f"blocks.{b}.attns.{a}.proj.{name}")
                if blk.adaLN_modulation is not None:
                    rows = slice(3 * a * D, 3 * (a + 1) * D) if len(blk.kinds) > 1 else slice(None)
                    for name in ("weight", "bias"):
                        blk.adaLN_modulation[1].get_parameter(name)[rows] = 0
                        rep.identity.append(f"blocks.{b}.adaLN_modulation.1.{name}[{a}]")
        # layers DiT lacks start as the identity too: caption and given-frame cross-attention add
        # nothing (output projection 0), nor do the pooled-text / pooled-given-frame vectors to c
        for b, blk in enumerate(dit.blocks):
            for attr in ("cross", "frame_cross"):
                if getattr(blk, attr) is not None:
                    for name in ("weight", "bias"):
                        getattr(blk, attr).proj.get_parameter(name).zero_()
                        rep.identity.append(f"blocks.{b}.{attr}.proj.{name}")
        for attr in ("pooled_embedder", "frame_embedder"):
            if getattr(dit, attr) is not None:
                for name in ("weight", "bias"):
                    getattr(dit, attr).fc2.get_parameter(name).zero_()
                    rep.identity.append(f"{attr}.fc2.{name}")
    dit.mask_embedder.weight[0] = 0
    rep.identity.append("mask_embedder.weight[0] (the 'generated' tag adds nothing)")
    rep.untouched = [n for n in params if n not in done]
    return rep


def _block_key(dit, key, value, i, rest, mode, slots, depth_src, put, rep):
    """One `blocks.i.*` key of the checkpoint."""
    D = dit.hidden_size
    sub = ".".join(rest)
    if mode == "latte":
        if i >= len(dit.blocks):
            rep.skipped[key] = f"DiT has {depth_src} blocks, this model {len(dit.blocks)}"
            return
        targets = [(i, a) for a in range(len(dit.blocks[i].kinds))]
    else:
        targets = [slots[i]]  # (enough slots: checked by the caller)
    b = targets[0][0]
    blk = dit.blocks[b]
    if rest[0] == "attn":
        for n, (b, a) in enumerate(targets):
            name = f"blocks.{b}.attns.{a}.{'.'.join(rest[1:])}"
            if n == 0:
                put(name, value, key)
            else:  # further attentions of the same block (latte): the same weights
                dit.get_parameter(name).copy_(value)
                rep.loaded[key] = rep.loaded[key] + f", {name}"
    elif rest[0] == "mlp":
        if mode == "per_frame" and len(blk.kinds) == 1 and blk.kinds != ("spatial",):
            rep.skipped[key] = "not a spatial block"
            return
        put(f"blocks.{b}.{sub}", value, key)
    elif rest[0] == "adaLN_modulation":
        if blk.adaLN_modulation is None:
            rep.skipped[key] = "cond_injection='in_context': no adaLN"
            return
        ours = blk.adaLN_modulation[1].get_parameter(rest[-1])
        attn_rows, mlp_rows = value[: 3 * D], value[3 * D :]
        if len(blk.kinds) == 1:
            put(f"blocks.{b}.adaLN_modulation.1.{rest[-1]}", value, key)
            return
        chunks = []
        for kind in blk.kinds:
            keep = mode == "latte" or kind == "spatial"
            chunks.append(attn_rows if keep else torch.zeros_like(attn_rows))
        put(
            f"blocks.{b}.adaLN_modulation.1.{rest[-1]}",
            torch.cat(chunks + [mlp_rows]).to(ours.dtype),
            key,
            "attention rows copied to each attention"
            if mode == "latte"
            else "attention rows to the spatial attention, zeros (gate 0) to the temporal one",
        )
    else:
        rep.skipped[key] = "no counterpart in VideoDiT blocks"
