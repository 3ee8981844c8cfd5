"""Start from an image DiT: a checkpoint in DiT's exact key layout (names and shapes of
facebookresearch/DiT models.py, re-stated below from its published description, not copied) loads
into our presets with every key accounted for; with mode="per_frame" the video model on a static
clip gives DiT's own output on every frame; parameter counts next to DiT's and Latte's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from lightning_modules.nets import DIT_PRESETS, VideoDiT, init_from_image_dit, load_image_dit_checkpoint

# ------------------------------------------------------------------------------------------------
# A re-statement of DiT's forward with DiT's module names (so its state_dict has DiT's keys)
# ------------------------------------------------------------------------------------------------


def dit_pos_embed(dim: int, side: int) -> np.ndarray:
    """DiT/MAE 2D sin-cos: grid from meshgrid(w, h), the first half of the dims encodes that first
    grid (the column), the second half the row; 1D part: concat(sin, cos), omega = 1/10000^(i/(d/2))."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    return np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)  # (side*side, dim)


class _Attn(nn.Module):  # timm Attention: qkv (with bias) -> (3, heads, head_dim) split, SDPA, proj
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _mod(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class _Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = _Attn(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = _Mlp(d, 4 * d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        s1, c1, g1, s2, c2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1[:, None] * self.attn(_mod(self.norm1(x), s1, c1))
        return x + g2[:, None] * self.mlp(_mod(self.norm2(x), s2, c2))


class _PatchEmbed(nn.Module):
    def __init__(self, c, d, p):
        super().__init__()
        self.proj = nn.Conv2d(c, d, p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), (h w) order


class _Final(nn.Module):
    def __init__(self, d, p, c_out):
        super().__init__()
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * c_out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_mod(self.norm_final(x), shift, scale))


class _TEmb(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class _YEmb(nn.Module):
    def __init__(self, classes, d):
        super().__init__()
        self.embedding_table = nn.Embedding(classes + 1, d)  # + the CFG null class (dropout > 0)


class RefDiT(nn.Module):
    def __init__(self, *, input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6,
                 num_classes=1000, learn_sigma=True):  # fmt: skip
        super().__init__()
        self.p, self.c_out = patch_size, in_channels * (2 if learn_sigma else 1)
        side = input_size // patch_size
        self.x_embedder = _PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = _TEmb(hidden_size)
        self.y_embedder = _YEmb(num_classes, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(_Block(hidden_size, num_heads) for _ in range(depth))
        self.final_layer = _Final(hidden_size, patch_size, self.c_out)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.data.copy_(torch.from_numpy(dit_pos_embed(hidden_size, side)).float()[None])

    def forward(self, x, t, y):
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            h = block(h, c)
        h = self.final_layer(h, c)  # (B, N, p*p*c_out)
        side, p = int(h.shape[1] ** 0.5), self.p
        h = h.reshape(h.shape[0], side, side, p, p, self.c_out)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(h.shape[0], self.c_out, side * p, side * p)


def random_dit(**kw) -> RefDiT:
    torch.manual_seed(0)
    model = RefDiT(**kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.02 if p.ndim > 1 else 0.01)
    return model.eval()


DIT_COUNTS = {"S/2": 32_963_360, "B/2": 130_512_416, "L/2": 458_102_816, "XL/2": 675_129_632}


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_reference_dit_has_dits_parameter_counts_and_keys():
    """Our re-statement has DiT's exact parameter counts, so its names and shapes are DiT's."""
    for name, want in DIT_COUNTS.items():
        cfg = DIT_PRESETS[name]
        with torch.device("meta"):
            ref = RefDiT(hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"])
        assert _count(ref) == want, name
    keys = set(RefDiT(depth=1, hidden_size=12, num_heads=2).state_dict())
    assert {"pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight",
            "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight",
            "blocks.0.adaLN_modulation.1.weight", "final_layer.linear.weight",
            "final_layer.adaLN_modulation.1.bias"} <= keys  # fmt: skip


def test_preset_parameter_counts_next_to_dit_and_latte(capsys):
    """Our presets (factorized, same depth as DiT: Latte's layout) next to DiT's counts: ours has no
    pos_embed parameter (sin-cos is computed) and a 2-row mask embedding; nothing else differs."""
    rows = []
    for name, want in DIT_COUNTS.items():
        with torch.device("meta"):
            ours = VideoDiT(**DIT_PRESETS[name], in_channels=4, num_classes=1000, learn_sigma=True)
        d = ours.hidden_size
        assert _count(ours) == want - 256 * d + 2 * d, name
        rows.append(f"{name}: ours {_count(ours):,}  DiT {want:,}")
    with torch.device("meta"):
        latte = VideoDiT(**DIT_PRESETS["XL/2"], in_channels=4, num_classes=101, learn_sigma=True)
    # Latte-XL/2 (16 frames, 101 classes, learned sigma) 673,994,912 = DiT-XL/2 - label table (1001 rows)
    # + temp_embed (16 x 1152); ours: no pos/temp tables, a 102-row label table, the mask embedding
    assert 673_994_912 == 675_129_632 - 1001 * 1152 + 16 * 1152
    assert _count(latte) == 673_994_912 - 256 * 1152 - 16 * 1152 + 102 * 1152 + 2 * 1152
    rows.append(f"Latte-XL/2 (101 classes): ours {_count(latte):,}  Latte 673,994,912")
    with capsys.disabled():
        print("\n" + "\n".join(rows))


def _static_clip_check(dit_kw, video_kw, frames=3, atol=1e-4):
    ref = random_dit(**dit_kw)
    ours = VideoDiT(
        pos_embed="sincos_framewise", learn_sigma=True, in_channels=dit_kw.get("in_channels", 4), **video_kw
    )
    rep = init_from_image_dit(ours, ref.state_dict(), mode="per_frame")
    assert rep.accounts_for(ref.state_dict()), rep
    ours.eval()
    size = dit_kw.get("input_size", 32)
    img = torch.randn(2, dit_kw.get("in_channels", 4), size, size, generator=torch.Generator().manual_seed(3))
    k = dit_kw.get("num_classes", 1000)
    t, y = torch.tensor([10, 600]), torch.tensor([5, k])  # k: DiT's null class == ours
    with torch.no_grad():
        want = ref(img, t, y)  # (B, 2C, H, W)
        got = ours(img[:, :, None].expand(-1, -1, frames, -1, -1), t, y=y)  # (B, 2C, T, H, W)
    for f in range(frames):
        torch.testing.assert_close(got[:, :, f], want, atol=atol, rtol=0)
    return rep


def test_per_frame_s2_equals_dit_on_every_frame_of_a_static_clip():
    """Acceptance: DiT-S/2 shapes (4 channels, 1000 classes, learned sigma, 32x32 latents), VDT-style
    blocks with a spatial and a temporal attention: every frame's output == DiT's to 1e-4."""
    cfg = DIT_PRESETS["S/2"]
    rep = _static_clip_check(
        dict(hidden_size=384, depth=12, num_heads=6),
        dict(**cfg, block_type="vdt", num_classes=1000),
    )
    assert not rep.skipped.keys() - {"pos_embed"}
    assert "VideoDiT computes the same values" in rep.skipped["pos_embed"]


@pytest.mark.parametrize(
    "block_type,depth,patch", [("factorized", 4, (1, 2, 2)), ("late_fusion", 4, (1, 2, 2)),
                               ("spatial_temporal", 2, (1, 2, 2)), ("vdt", 2, (2, 2, 2))]
)  # fmt: skip
def test_per_frame_equals_dit_for_each_separable_variant(block_type, depth, patch):
    """Spatial path = DiT's blocks in order; temporal layers start as the identity; tubelets are
    inflated (kernel / pt, decoder rows repeated), so a static clip still gives DiT's frames."""
    _static_clip_check(
        dict(input_size=16, hidden_size=48, depth=2, num_heads=4, num_classes=10),
        dict(
            hidden_size=48, depth=depth, num_heads=4, patch_size=patch, block_type=block_type, num_classes=10
        ),
        frames=4,
    )


def test_per_frame_refuses_full_and_split_heads():
    ref = random_dit(input_size=8, hidden_size=24, depth=1, num_heads=2, num_classes=3)
    for block_type in ("full", "split_heads"):
        ours = VideoDiT(hidden_size=24, depth=1, num_heads=2, block_type=block_type, num_classes=3)
        with pytest.raises(ValueError, match="per_frame"):
            init_from_image_dit(ours, ref.state_dict(), mode="per_frame")


def test_latte_mode_takes_every_key_of_a_same_size_preset(tmp_path):
    """Acceptance: a random-init checkpoint in DiT's layout loads into our S/2 preset with mode="latte"
    (DiT block i -> video block i, spatial and temporal alike); every key is in the report, only the
    fixed pos_embed is skipped (we compute the same values). Latte's `{"ema": ...}` files load too."""
    ref = random_dit()
    sd = ref.state_dict()
    ours = VideoDiT(
        **DIT_PRESETS["S/2"], in_channels=4, num_classes=1000, learn_sigma=True, pos_embed="sincos"
    )
    before = {n: p.clone() for n, p in ours.named_parameters()}
    rep = init_from_image_dit(ours, sd, mode="latte")
    assert rep.accounts_for(sd), rep
    assert set(rep.skipped) == {"pos_embed"}
    assert len(rep.loaded) + len(rep.reshaped) == len(sd) - 1
    assert set(rep.reshaped) == {
        "x_embedder.proj.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
    }
    assert rep.untouched == ["mask_embedder.weight"]
    torch.testing.assert_close(
        ours.blocks[1].attns[0].qkv.weight, sd["blocks.1.attn.qkv.weight"]
    )  # temporal block 1
    changed = [n for n, p in ours.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # every tensor came from the checkpoint (or the mask row zeroed)
    torch.save({"ema": sd, "model": {}, "opt": {}}, tmp_path / "latte.pt")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "dit_ddp.pt")
    for f in ("latte.pt", "dit_ddp.pt"):
        loaded = load_image_dit_checkpoint(tmp_path / f)
        assert loaded.keys() == sd.keys()
    print(rep)


def test_latte_mode_across_sizes_and_classes_reports_what_it_skips():
    ref = random_dit(input_size=8, hidden_size=24, depth=4, num_heads=2, num_classes=7)
    sd = ref.state_dict()
    sd["temp_embed"] = torch.zeros(1, 16, 24)  # Latte's checkpoints carry it
    ours = VideoDiT(hidden_size=24, depth=2, num_heads=2, block_type="vdt", num_classes=0, learn_sigma=False)
    rep = init_from_image_dit(ours, sd, mode="latte")
    assert rep.accounts_for(sd)
    assert "unconditional" in rep.skipped["y_embedder.embedding_table.weight"]
    assert "blocks.3.attn.qkv.weight" in rep.skipped and "temp_embed" in rep.skipped
    assert "learned-sigma half dropped" in rep.reshaped["final_layer.linear.weight"]
    # both attentions of a two-attention block got DiT block 1's attention
    torch.testing.assert_close(ours.blocks[1].attns[0].proj.weight, ours.blocks[1].attns[1].proj.weight)
    with pytest.raises(ValueError, match="mode"):
        init_from_image_dit(ours, sd, mode="other")


@pytest.mark.parametrize("block_type", ["factorized", "late_fusion"])
def test_per_frame_refuses_fewer_spatial_slots_than_dit_blocks(block_type):
    """factorized / late_fusion at DiT's depth have half as many spatial blocks: per_frame would keep
    only part of DiT (no longer the image model per frame), so it refuses; twice the depth fits."""
    ref = random_dit(input_size=8, hidden_size=24, depth=2, num_heads=2, num_classes=3)
    ours = VideoDiT(hidden_size=24, depth=2, num_heads=2, block_type=block_type, num_classes=3)
    before = {n: p.clone() for n, p in ours.named_parameters()}
    with pytest.raises(ValueError, match="one spatial slot per DiT block"):
        init_from_image_dit(ours, ref.state_dict(), mode="per_frame")
    assert all(torch.equal(p, before[n]) for n, p in ours.named_parameters())  # nothing half-copied
    ours = VideoDiT(hidden_size=24, depth=4, num_heads=2, block_type=block_type, num_classes=3)
    rep = init_from_image_dit(ours, ref.state_dict(), mode="per_frame")
    assert not rep.skipped.keys() - {"pos_embed"}


@pytest.mark.parametrize("frame_cond", ["concat", "cross_attn", "adaln"])
def test_per_frame_start_is_dit_per_frame_with_captions_and_given_frames(frame_cond):
    """Layers DiT lacks start as the identity in per_frame: caption cross-attention, the pooled-text
    and given-frame (adaLN scheme) embedders, given-frame cross-attention. With captions, a pooled
    caption and frame 0 given, every generated frame of a static clip is DiT's output on it."""
    ref = random_dit(input_size=16, hidden_size=48, depth=2, num_heads=4, num_classes=10)
    ours = VideoDiT(pos_embed="sincos_framewise", learn_sigma=True, in_channels=4, hidden_size=48, depth=2,
                    num_heads=4, patch_size=(1, 2, 2), block_type="vdt", num_classes=10, text_dim=16,
                    pooled_text_dim=8, frame_cond=frame_cond)  # fmt: skip
    init_from_image_dit(ours, ref.state_dict(), mode="per_frame")
    ours.eval()
    g = torch.Generator().manual_seed(3)
    img = torch.randn(2, 4, 16, 16, generator=g)
    t, y = torch.tensor([10, 600]), torch.tensor([5, 10])
    mask = torch.zeros(2, 1, 3, 16, 16, dtype=torch.bool)
    mask[:, :, 0] = True  # frame 0 given
    text, pooled = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    text_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        want = ref(img, t, y)
        got = ours(img[:, :, None].expand(-1, -1, 3, -1, -1), t, y=y, mask=mask, text=text,
                   text_mask=text_mask, pooled_text=pooled)  # fmt: skip
    for f in (1, 2):
        torch.testing.assert_close(got[:, :, f], want, atol=1e-4, rtol=0)


def test_per_frame_refuses_in_context_conditioning():
    """in_context blocks have no adaLN gate: a temporal block's MLP would act from the start."""
    ref = random_dit(input_size=8, hidden_size=24, depth=1, num_heads=2, num_classes=3)
    ours = VideoDiT(hidden_size=24, depth=2, num_heads=2, num_classes=3, cond_injection="in_context")
    with pytest.raises(ValueError, match="in_context"):
        init_from_image_dit(ours, ref.state_dict(), mode="per_frame")
    init_from_image_dit(ours, ref.state_dict(), mode="latte")  # latte makes no identity claim


def test_loads_dits_own_training_checkpoint(tmp_path):
    """DiT's train.py saves {"model", "ema", "opt", "args": argparse.Namespace}: it loads (under a
    weights-only unpickler that allows only the Namespace), and the EMA weights are the ones taken."""
    import argparse

    model = random_dit(input_size=8, hidden_size=24, depth=1, num_heads=2, num_classes=3)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    args = argparse.Namespace(model="DiT-S/2", image_size=256, num_classes=3, global_seed=0)
    torch.save(
        {"model": model.state_dict(), "ema": ema, "opt": opt.state_dict(), "args": args},
        tmp_path / "0001000.pt",
    )
    sd = load_image_dit_checkpoint(tmp_path / "0001000.pt")
    assert sd.keys() == ema.keys() and all(torch.equal(sd[k], ema[k]) for k in ema)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "args": args}, tmp_path / "no_ema.pt")
    sd = load_image_dit_checkpoint(tmp_path / "no_ema.pt")
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
