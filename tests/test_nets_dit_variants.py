"""The papers' design space on VideoDiT, tested by behaviour: perturb frame 3 and see which outputs
move (Latte's four variants and full attention, causal time attention), and packed == per-clip for
every variant, causal or not, with in-context tokens and each of VDT's given-frame schemes."""

import pytest
import torch
import torch.nn.functional as F
from test_nets_dit import _clips, randomize  # tests/ is on sys.path (pytest prepend mode)

from lightning_modules.nets import VideoDiT

T, H, W = 6, 8, 8  # input frames and pixels; frame 3 is perturbed at its top-left patch


def tiny(**kw):
    cfg = dict(in_channels=3, hidden_size=32, depth=1, num_heads=2)
    cfg.update(kw)
    return VideoDiT(**cfg)


def changed_map(model, t_frame=3):
    """(T, H, W) bool: where the output moves when frame `t_frame`'s top-left patch is perturbed."""
    x = torch.randn(1, 3, T, H, W, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 10.0)
    with torch.no_grad():
        a = model(x, t)
        x[:, :, t_frame, :2, :2] += 5.0
        b = model(x, t)
    return (a - b).abs().amax(dim=1)[0] > 1e-6


def expected(reach: str, causal: bool, patch_size) -> torch.Tensor:
    """What each attention pattern lets one perturbed token reach, on the token grid, then in pixels.
    spatial: its frame; temporal: its track; split: both; full / mixing blocks: everything. Causal:
    nothing before the perturbed token's frame."""
    pt, ph, pw = patch_size
    gt, gh, gw = -(-T // pt), H // ph, W // pw
    ft = 3 // pt  # token frame of pixel frame 3
    grid = torch.zeros(gt, gh, gw, dtype=torch.bool)
    if reach in ("spatial", "split"):
        grid[ft] = True
    if reach in ("temporal", "split"):
        grid[:, 0, 0] = True
    if reach == "all":
        grid[:] = True
    if causal:
        grid[:ft] = False
    pix = grid.repeat_interleave(pt, 0).repeat_interleave(ph, 1).repeat_interleave(pw, 2)
    return pix[:T]


# block type (depth) -> what one perturbed token reaches
REACH = {
    ("factorized", 2): "all",  # spatial then temporal block
    ("late_fusion", 2): "all",
    ("vdt", 1): "all",  # temporal then spatial inside one block
    ("spatial_temporal", 1): "all",
    ("split_heads", 1): "split",
    ("full", 1): "all",
}


@pytest.mark.parametrize("patch_size", [(1, 2, 2), (2, 2, 2)], ids=["2d", "tubelet"])
@pytest.mark.parametrize("pos_embed", ["rope", "sincos", "sincos_framewise"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("block_type,depth", list(REACH), ids=[b for b, _ in REACH])
def test_perturbing_frame_3_reaches_what_the_variant_allows(block_type, depth, causal, pos_embed, patch_size):
    model = randomize(
        tiny(block_type=block_type, depth=depth, causal=causal, pos_embed=pos_embed, patch_size=patch_size)
    )
    got = changed_map(model)
    want = expected(REACH[(block_type, depth)], causal, patch_size)
    assert torch.equal(got, want), (
        f"changed frames {got.any(-1).any(-1).tolist()} != {want.any(-1).any(-1).tolist()}"
    )


@pytest.mark.parametrize("kind", ["spatial", "temporal", "full", "split"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_each_attention_kind_alone(kind, causal):
    """One block with one attention of each kind: spatial never mixes frames, temporal never mixes
    positions, split heads mix both (and nothing more), causal never reaches frames 0-2."""
    model = randomize(tiny(block_type="full", causal=causal))
    model.blocks[0].kinds = (kind,)
    reach = {"full": "all"}.get(kind, kind)
    assert torch.equal(changed_map(model), expected(reach, causal, (1, 2, 2)))


def test_split_heads_needs_two_heads():
    with pytest.raises(ValueError, match="num_heads >= 2"):
        VideoDiT(in_channels=3, hidden_size=12, depth=1, num_heads=1, block_type="split_heads")


BLOCKS = [b for b, _ in REACH]


def _packed_vs_single(model, with_cond=True):
    xs, masks = _clips()
    n = len(xs)
    t = torch.linspace(0, 999, n)
    y = torch.tensor([0, 3, 4, -1, 2]) if model.num_classes else None
    masks[1] = None  # a clip with nothing given
    masks[3] = torch.zeros_like(masks[0])
    masks[3][:, :2] = True  # two given frames (whole patches given)
    with torch.no_grad():
        packed = model.forward_packed(xs, t, masks=masks, y=y)
        for i in range(n):
            single = model(
                xs[i][None],
                t[i : i + 1],
                mask=None if masks[i] is None else masks[i][None],
                y=None if y is None else y[i : i + 1],
            )[0]
            torch.testing.assert_close(packed[i], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_dense"])
@pytest.mark.parametrize("block_type", BLOCKS)
@pytest.mark.parametrize("pos_embed", ["rope", "sincos", "sincos_framewise"])
def test_causal_packed_equals_per_clip(block_type, backend, pos_embed):
    model = randomize(
        tiny(block_type=block_type, depth=2, causal=True, attn_backend=backend, pos_embed=pos_embed)
    )
    _packed_vs_single(model)


@pytest.mark.parametrize("block_type", BLOCKS)
def test_split_heads_and_causal_with_tubelets_packed(block_type):
    model = randomize(tiny(block_type=block_type, depth=2, causal=True, patch_size=(2, 2, 2), num_classes=4))
    _packed_vs_single(model)


def test_causal_dense_backend_matches_grouped_and_a_reference():
    """Frame-causal full attention: the grouped backend == the dense-mask backend == a hand-written
    masked softmax on one clip."""
    model = randomize(tiny(block_type="full", causal=True))
    xs, _ = _clips()
    t = torch.zeros(len(xs))
    with torch.no_grad():
        grouped = model.forward_packed(xs, t)
        model.attn_backend = "sdpa_dense"
        dense = model.forward_packed(xs, t)
    for a, b in zip(grouped, dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    from lightning_modules.nets.attention import GridLayout

    layout = GridLayout(batch=1, grid=(3, 2, 2), device="cpu")
    q, k, v = torch.randn(3, 1, 12, 2, 4).unbind(0)
    frames = layout.coords[:, 0]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    scores = scores.masked_fill(frames[None, None, None, :] > frames[None, None, :, None], float("-inf"))
    ref = torch.einsum("bhqk,bkhd->bqhd", F.softmax(scores, -1), v)
    torch.testing.assert_close(layout.attend(q, k, v, "full", causal=True), ref, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("block_type", ["vdt", "full", "split_heads"])
def test_causal_flex_backend_matches_grouped(block_type):
    """flex (BlockMask from segment boundaries plus a frame-causal mask_mod) == grouped SDPA."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = randomize(tiny(block_type=block_type, causal=True))
    xs, masks = _clips()
    t = torch.arange(len(xs)).float()
    with torch.no_grad():
        ref = model.forward_packed(xs, t, masks=masks)
        model.attn_backend = "flex"
        out = model.forward_packed(xs, t, masks=masks)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_dense"])
@pytest.mark.parametrize("block_type", ["factorized", "vdt", "split_heads", "full"])
@pytest.mark.parametrize("causal", [False, True])
def test_in_context_tokens_packed_equals_per_clip(block_type, backend, causal):
    model = randomize(
        tiny(
            block_type=block_type,
            depth=2,
            cond_injection="in_context",
            num_classes=4,
            causal=causal,
            attn_backend=backend,
        )
    )
    assert (
        all(b.adaLN_modulation is None for b in model.blocks) and model.final_layer.adaLN_modulation is None
    )
    _packed_vs_single(model)


def test_in_context_tokens_carry_timestep_and_class():
    """Without adaLN the timestep and label reach the output only through the tokens."""
    model = randomize(tiny(block_type="full", cond_injection="in_context", num_classes=4))
    x = torch.randn(1, 3, 2, 8, 8)
    with torch.no_grad():
        base = model(x, torch.tensor([10.0]), y=torch.tensor([1]))
        assert not torch.allclose(base, model(x, torch.tensor([500.0]), y=torch.tensor([1])))
        assert not torch.allclose(base, model(x, torch.tensor([10.0]), y=torch.tensor([2])))
    fresh = tiny(block_type="full", cond_injection="in_context")
    assert fresh(x, torch.tensor([3.0])).count_nonzero() == 0  # the zeroed output layer still starts at 0


@pytest.mark.parametrize("frame_cond", ["concat", "cross_attn", "adaln"])
@pytest.mark.parametrize("block_type", ["factorized", "split_heads"])
def test_frame_conditioning_schemes_packed_equals_per_clip(frame_cond, block_type):
    model = randomize(tiny(block_type=block_type, depth=2, frame_cond=frame_cond, num_classes=4))
    assert (model.frame_embedder is not None) == (frame_cond == "adaln")
    assert (model.blocks[0].frame_cross is not None) == (frame_cond == "cross_attn")
    _packed_vs_single(model)


@pytest.mark.parametrize("frame_cond", ["cross_attn", "adaln"])
def test_frame_conditioning_reaches_through_its_scheme_only(frame_cond):
    """Given frames leave the sequence in the cross-attention and adaLN schemes: with a spatial-only
    model, changing given frame 0 still changes generated frame 5 (through the scheme), and with the
    scheme's layers zeroed it changes nothing at all (its content is not in the sequence)."""
    model = randomize(tiny(block_type="full", frame_cond=frame_cond))
    model.blocks[0].kinds = ("spatial",)
    mask = torch.zeros(1, 1, T, H, W, dtype=torch.bool)
    mask[:, :, :2] = True
    x = torch.randn(1, 3, T, H, W)
    x2 = x.clone()
    x2[:, :, 0] += 3.0
    t = torch.tensor([7.0])
    with torch.no_grad():
        moved = (model(x, t, mask=mask) - model(x2, t, mask=mask)).abs()
        assert moved[:, :, 5].amax() > 1e-4
        layer = model.blocks[0].frame_cross.proj if frame_cond == "cross_attn" else model.frame_embedder.fc2
        layer.weight.zero_()
        layer.bias.zero_()
        still = (model(x, t, mask=mask) - model(x2, t, mask=mask)).abs()
        assert still.amax() == 0


@pytest.mark.parametrize("frame_cond", ["concat", "cross_attn", "adaln"])
def test_causal_masks_given_frames_only_in_the_sequence(frame_cond):
    """What the `causal` docs say: a given *future* frame (4) reaches generated frame 1 through the
    cross-attention and adaLN schemes (they are not masked by time), never through token concatenation
    (the given tokens obey the causal mask)."""
    model = randomize(tiny(block_type="vdt", causal=True, frame_cond=frame_cond))
    mask = torch.zeros(1, 1, T, H, W, dtype=torch.bool)
    mask[:, :, 4] = True
    x = torch.randn(1, 3, T, H, W, generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[:, :, 4] += 3.0
    t = torch.tensor([7.0])
    with torch.no_grad():
        moved = (model(x, t, mask=mask) - model(x2, t, mask=mask))[:, :, :4].abs().amax()
    assert bool(moved > 1e-4) is (frame_cond != "concat"), moved


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "sdpa_dense", "flex", "flash"])
@pytest.mark.parametrize("block_type", ["vdt", "split_heads", "full"])
def test_causal_packed_backends_on_cuda_match_per_clip_bf16(backend, block_type):
    """On a GPU (bf16 autocast), every packed backend's frame-causal attention matches the per-clip
    fast path; flash refuses frame-causal full attention (its mask is per token) with a clear error."""
    from lightning_modules.nets.attention import flash_attn_varlen_func

    if backend == "flash" and flash_attn_varlen_func is None:
        pytest.skip("flash-attn is not installed")
    model = randomize(
        tiny(block_type=block_type, depth=2, hidden_size=64, causal=True, attn_backend=backend)
    ).cuda()
    xs, masks = _clips()
    xs, masks = [x.cuda() for x in xs], [m.cuda() for m in masks]
    t = torch.arange(len(xs), device="cuda").float()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        if backend == "flash" and block_type == "full":
            with pytest.raises(NotImplementedError, match="frame-causal"):
                model.forward_packed(xs, t, masks=masks)
            return
        packed = model.forward_packed(xs, t, masks=masks)
        for i, x in enumerate(xs):
            single = model(x[None], t[i : i + 1], mask=masks[i][None])[0]
            torch.testing.assert_close(packed[i].float(), single.float(), atol=3e-2, rtol=3e-2)
