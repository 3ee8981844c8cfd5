"""VideoDiT: shapes for every variant and conditioning mode, packed == unpacked, masks, init."""

import pytest
import torch

from lightning_modules.nets import DIT_PRESETS, VideoDiT
from lightning_modules.nets.attention import PackedLayout, rope_3d

BLOCKS = ("factorized", "late_fusion", "vdt", "spatial_temporal", "split_heads", "full")
POS = ("rope", "sincos", "sincos_framewise")


def tiny(**kw):
    cfg = dict(in_channels=3, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2)
    cfg.update(kw)
    return VideoDiT(**cfg)


def randomize(model, seed=0):
    """adaLN-Zero makes a fresh model output zeros; give every weight a value so comparisons bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("block_type", BLOCKS)
@pytest.mark.parametrize("pos_embed", POS)
@pytest.mark.parametrize("cond", ["none", "class", "text", "pooled"])
def test_forward_shapes(block_type, pos_embed, cond):
    kw = {"class": dict(num_classes=5), "text": dict(text_dim=12), "pooled": dict(pooled_text_dim=10)}.get(
        cond, {}
    )
    model = randomize(tiny(block_type=block_type, pos_embed=pos_embed, learn_sigma=cond == "class", **kw))
    x = torch.randn(2, 3, 3, 8, 12)
    args = {
        "class": dict(y=torch.tensor([1, 5])),
        "text": dict(text=torch.randn(2, 4, 12), text_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()),
        "pooled": dict(pooled_text=torch.randn(2, 10)),
    }.get(cond, {})
    out = model(x, torch.tensor([3, 700]), mask=torch.rand(2, 1, 3, 8, 12) > 0.5, **args)
    assert out.shape == (2, 6 if cond == "class" else 3, 3, 8, 12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("patch_size", [(2, 2, 2), (1, 4, 4)])
def test_tubelets_and_odd_lengths(patch_size):
    """Tubelets (pt = 2) pad an odd T internally and crop it back."""
    model = randomize(tiny(patch_size=patch_size))
    out = model(torch.randn(1, 3, 5, 8, 8), torch.tensor([10]))
    assert out.shape == (1, 3, 5, 8, 8)


def test_fresh_model_outputs_zero():
    """adaLN-Zero: one initialize_weights() zeroes the modulations and the output layer."""
    model = tiny(num_classes=3, text_dim=8)
    out = model(
        torch.randn(2, 3, 2, 8, 8), torch.tensor([1, 2]), y=torch.tensor([0, 1]), text=torch.randn(2, 3, 8)
    )
    assert torch.count_nonzero(out) == 0


def _clips():
    shapes = [(3, 4, 8, 8), (3, 2, 8, 12), (3, 1, 6, 4), (3, 4, 8, 8), (3, 3, 4, 6)]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(s, generator=g) for s in shapes]
    masks = [torch.rand((1, *s[1:]), generator=g) > 0.5 for s in shapes]
    return xs, masks


@pytest.mark.parametrize("block_type", BLOCKS)
@pytest.mark.parametrize("pos_embed", POS)
def test_packed_equals_per_sample(block_type, pos_embed):
    """Acceptance: packed output == per-sample `forward` to 1e-5 (fp32), with classes, text and masks."""
    model = randomize(
        tiny(block_type=block_type, pos_embed=pos_embed, num_classes=4, text_dim=8, learn_sigma=True)
    )
    xs, masks = _clips()
    n = len(xs)
    t = torch.linspace(0, 999, n)
    y = torch.tensor([0, 3, 4, -1, 2])  # 4 = null class, -1 = no label
    text = torch.randn(n, 5, 8)
    text_mask = torch.rand(n, 5) > 0.3
    text_mask[:, 0] = True
    text_mask[2] = False  # a sample with no valid caption token
    with torch.no_grad():
        packed = model.forward_packed(xs, t, masks=masks, y=y, text=text, text_mask=text_mask)
        for i in range(n):
            single = model(
                xs[i][None],
                t[i : i + 1],
                mask=masks[i][None],
                y=y[i : i + 1],
                text=text[i : i + 1],
                text_mask=text_mask[i : i + 1],
            )[0]
            assert packed[i].shape == single.shape == (6, *xs[i].shape[1:])
            torch.testing.assert_close(packed[i], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block_type", BLOCKS)
def test_packed_tubelets_and_pooled_text(block_type):
    model = randomize(tiny(block_type=block_type, patch_size=(2, 2, 2), pooled_text_dim=6))
    xs, _ = _clips()
    pooled = torch.randn(len(xs), 6)
    t = torch.arange(len(xs)).float() * 100
    with torch.no_grad():
        packed = model.forward_packed(xs, t, pooled_text=pooled)
        for i, x in enumerate(xs):
            torch.testing.assert_close(
                packed[i], model(x[None], t[i : i + 1], pooled_text=pooled[i : i + 1])[0], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("block_type", BLOCKS)
def test_dense_mask_backend_matches_grouped(block_type):
    """The reference dense-mask backend and the grouped default give the same packed output."""
    model = randomize(tiny(block_type=block_type))
    xs, masks = _clips()
    t = torch.full((len(xs),), 50.0)
    with torch.no_grad():
        grouped = model.forward_packed(xs, t, masks=masks)
        model.attn_backend = "sdpa_dense"
        dense = model.forward_packed(xs, t, masks=masks)
    for a, b in zip(grouped, dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_dense"])
def test_packed_attention_plan_is_built_once_per_batch(monkeypatch, backend):
    """Segment structures are cached on the layout: one build per attention kind, not per layer."""
    calls = []
    method = "sdpa_groups" if backend == "sdpa" else "segments"
    orig = getattr(PackedLayout, method)
    cache = "_groups" if backend == "sdpa" else "_segments"

    def counting(self, kind):
        if kind not in getattr(self, cache):
            calls.append(kind)
        return orig(self, kind)

    monkeypatch.setattr(PackedLayout, method, counting)
    model = randomize(tiny(block_type="vdt", depth=4, attn_backend=backend))
    xs, _ = _clips()
    with torch.no_grad():
        model.forward_packed(xs, torch.zeros(len(xs)))
    assert sorted(calls) == ["spatial", "temporal"]


def test_temporal_attention_stays_in_its_pixel_track():
    """Perturbing one clip never changes another clip's packed output."""
    model = randomize(tiny(block_type="full"))
    xs, _ = _clips()
    t = torch.zeros(len(xs))
    with torch.no_grad():
        a = model.forward_packed(xs, t)
        xs[1] = xs[1] + 5.0
        b = model.forward_packed(xs, t)
    for i in (0, 2, 3, 4):
        torch.testing.assert_close(a[i], b[i], atol=1e-6, rtol=0)
    assert not torch.allclose(a[1], b[1])


def test_mask_token_is_given_only_if_whole_patch_is_given():
    model = randomize(tiny(patch_size=(1, 2, 2)))
    x, t = torch.randn(1, 3, 2, 4, 4), torch.tensor([5])
    none = torch.zeros(1, 1, 2, 4, 4, dtype=torch.bool)
    partial = none.clone()
    partial[..., 0, 0, 0] = True  # one pixel of the first patch
    whole = none.clone()
    whole[..., 0, :2, :2] = True  # the whole first patch
    with torch.no_grad():
        base = model(x, t, mask=none)
        torch.testing.assert_close(model(x, t, mask=partial), base)
        torch.testing.assert_close(model(x, t), base)  # no mask == nothing given
        assert not torch.allclose(model(x, t, mask=whole), base)


def test_rope_is_relative():
    """RoPE: q.k depends on coordinate differences only (what makes it valid for any shape/packing)."""
    q, k = torch.randn(1, 1, 1, 12), torch.randn(1, 1, 1, 12)
    from lightning_modules.nets.attention import apply_rope

    def score(pq, pk):
        return (
            apply_rope(q, rope_3d(torch.tensor([pq]), 12)) * apply_rope(k, rope_3d(torch.tensor([pk]), 12))
        ).sum()

    torch.testing.assert_close(score((1, 2, 3), (0, 0, 1)), score((5, 7, 9), (4, 5, 7)), atol=1e-5, rtol=0)
    assert not torch.allclose(score((1, 2, 3), (0, 0, 1)), score((1, 2, 3), (0, 1, 1)))


def test_gradient_checkpointing_gives_same_gradients():
    x, t = torch.randn(2, 3, 2, 8, 8), torch.tensor([1, 500])
    grads = []
    for ckpt in (False, True):
        model = randomize(tiny(block_type="vdt", grad_checkpointing=ckpt)).train()
        model(x, t).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_presets_and_errors():
    assert DIT_PRESETS["S/2"] == dict(depth=12, hidden_size=384, num_heads=6, patch_size=(1, 2, 2))
    assert {"S/2", "B/2", "L/2", "XL/2", "S/4"} <= set(DIT_PRESETS)
    for name, cfg in DIT_PRESETS.items():
        assert cfg["hidden_size"] % cfg["num_heads"] == 0, name
    with pytest.raises(ValueError, match="multiples of the patch size"):
        tiny()(torch.randn(1, 3, 2, 7, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="text_dim"):
        tiny()(torch.randn(1, 3, 2, 8, 8), torch.tensor([0]), text=torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="block_type"):
        tiny(block_type="spatial")
    with pytest.raises(ValueError, match="attn_backend"):
        tiny(attn_backend="xformers")


def test_bf16_autocast_runs_both_paths():
    """CUDA training runs under bf16 autocast; the same code path is exercised here on CPU."""
    model = randomize(tiny(block_type="vdt", num_classes=3, text_dim=8))
    xs, masks = _clips()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xs[0][None], torch.tensor([5]), y=torch.tensor([1]), text=torch.randn(1, 3, 8))
        packed = model.forward_packed(xs, torch.zeros(len(xs)), masks=masks)
    assert torch.isfinite(out).all() and all(torch.isfinite(p).all() for p in packed)


@pytest.mark.slow
def test_flex_attention_backend_matches_grouped_sdpa():
    """flex_attention with a BlockMask (compiled; ~35 s to compile on CPU) == the grouped default."""
    model = randomize(tiny(block_type="vdt"))
    xs, masks = _clips()
    t = torch.arange(len(xs)).float()
    with torch.no_grad():
        ref = model.forward_packed(xs, t, masks=masks)
        model.attn_backend = "flex"
        out = model.forward_packed(xs, t, masks=masks)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash"])
def test_packed_backends_on_cuda_match_per_sample_bf16(backend):
    """On a GPU (bf16 autocast), every packed backend matches the per-sample fast path."""
    from lightning_modules.nets.attention import flash_attn_varlen_func

    if backend == "flash" and flash_attn_varlen_func is None:
        pytest.skip("flash-attn is not installed")
    model = randomize(tiny(block_type="vdt", hidden_size=64, num_heads=2, attn_backend=backend)).cuda()
    xs, masks = _clips()
    xs, masks = [x.cuda() for x in xs], [m.cuda() for m in masks]
    t = torch.arange(len(xs), device="cuda").float()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        packed = model.forward_packed(xs, t, masks=masks)
        for i, x in enumerate(xs):
            single = model(x[None], t[i : i + 1], mask=masks[i][None])[0]
            torch.testing.assert_close(packed[i].float(), single.float(), atol=3e-2, rtol=3e-2)


def test_dit_config_accepts_every_backend_block_and_pos_embed():
    """The CLI validates DiTConfig's Literals: each must list exactly what VideoDiT accepts, so
    `--model.dit.attn_backend=sdpa_dense` is not refused while the net supports it."""
    import typing

    from lightning_modules.nets.attention import ATTN_BACKENDS
    from lightning_modules.nets.dit import BLOCK_TYPES, COND_INJECTIONS, FRAME_CONDS, POS_EMBEDS
    from lightning_modules.video_diffusion import DiTConfig

    hints = typing.get_type_hints(DiTConfig)
    for name, allowed in (
        ("attn_backend", ATTN_BACKENDS),
        ("block_type", BLOCK_TYPES),
        ("pos_embed", POS_EMBEDS),
        ("cond_injection", COND_INJECTIONS),
        ("frame_cond", FRAME_CONDS),
    ):
        literal = next(a for a in typing.get_args(hints[name]) if a is not type(None))
        assert set(typing.get_args(literal)) == set(allowed), name


def test_block_order_of_each_variant():
    """Latte's variants as block layouts: interleaved, late fusion, one block with either order, full."""
    layouts = {b: [blk.kinds for blk in tiny(block_type=b, depth=4).blocks] for b in BLOCKS}
    s, t = ("spatial",), ("temporal",)
    assert layouts["factorized"] == [s, t, s, t]
    assert layouts["late_fusion"] == [s, s, t, t]
    assert layouts["vdt"] == [("temporal", "spatial")] * 4
    assert layouts["spatial_temporal"] == [("spatial", "temporal")] * 4
    assert layouts["full"] == [("full",)] * 4
    assert layouts["split_heads"] == [("split",)] * 4
    with pytest.raises(ValueError, match="even"):
        tiny(block_type="late_fusion", depth=3)


@pytest.mark.parametrize("part", ["spatial", "temporal"])
def test_perturbing_frame_3_reaches_only_its_frame_or_its_track(part):
    """Behaviour, not shapes: late fusion's spatial half never mixes frames and its temporal half
    never mixes positions. One token (frame 3, top-left patch) is perturbed."""
    model = randomize(tiny(block_type="late_fusion", depth=2))
    model.blocks = model.blocks[:1] if part == "spatial" else model.blocks[1:]
    assert model.blocks[0].kinds == (part,)
    x = torch.randn(1, 3, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(1)
    with torch.no_grad():
        a = model(x, t)
        x[:, :, 3, :2, :2] += 5.0
        b = model(x, t)
    changed = (a - b).abs().amax(dim=1)[0] > 1e-6  # (T, H, W)
    expect = torch.zeros_like(changed)
    if part == "spatial":
        expect[3] = True  # the whole of frame 3, no other frame
    else:
        expect[:, :2, :2] = True  # the top-left patch in every frame, no other position
    assert torch.equal(changed, expect)
