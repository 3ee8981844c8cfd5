"""flex backend (10.6): its BlockMask comes from the segment boundaries, never from an N x N mask
evaluation, lists the same tiles create_block_mask would, and attends exactly like SDPA."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets import attention
from lightning_modules.nets.attention import PackedLayout, segment_block_mask

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def test_segment_block_mask_lists_the_tiles_create_block_mask_finds():
    seg = torch.repeat_interleave(torch.arange(6), torch.tensor([100, 300, 5, 250, 129, 128]))  # (912,)
    ours = segment_block_mask(seg)
    ref = flex.create_block_mask(
        lambda b, h, q, k: seg[q] == seg[k], None, None, len(seg), len(seg), device="cpu"
    )
    assert torch.equal(ours.to_dense() > 0, ref.to_dense() > 0)
    big = segment_block_mask(
        torch.repeat_interleave(torch.arange(16), torch.full((16,), 4096))
    )  # 65 k tokens
    assert big.kv_indices.numel() == 512 * 512  # tiles, not tokens: 1 MiB where N x N bools are 4 GiB


@pytest.mark.parametrize("kind", ["full", "spatial", "temporal"])
def test_flex_packed_attention_equals_sdpa_without_a_dense_mask(kind, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("create_block_mask evaluates the N x N mask: must not be used")

    monkeypatch.setattr(flex, "create_block_mask", refuse)  # the library's N x N builder
    monkeypatch.setattr(attention, "create_block_mask", refuse, raising=False)  # or a copy of it in ours
    monkeypatch.setattr(attention, "_compiled_flex", lambda: flex.flex_attention)  # eager on CPU: tiny N
    grids = [(3, 4, 6), (1, 8, 8), (5, 2, 3)]
    n = sum(t * h * w for t, h, w in grids)
    q, k, v = (torch.randn(1, n, 2, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = PackedLayout(grids=grids, backend="sdpa").attend(q, k, v, kind)
    got = PackedLayout(grids=grids, backend="flex").attend(q, k, v, kind)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
