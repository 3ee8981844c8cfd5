"""Packing: token accounting, budgets never exceeded, native shapes kept, utilisation."""

import itertools
import math

import numpy as np
import pytest

from datamodules.packing import StreamPacker, TokenGrid, first_fit_decreasing
from datamodules.synthetic import clip_sample, frame_index, write_shards
from datamodules.video_shards import VideoShardsDataModule


def test_token_count_follows_the_contract():
    g = TokenGrid(patch_size=(1, 2, 2), latent_downsample=(4, 8, 8))
    assert g.multiple == (16, 16)
    assert g.tokens(9, 64, 32) == math.ceil(9 / 4) * 4 * 2 == 24
    assert g.tokens(1, 16, 16) == 1
    with pytest.raises(ValueError, match="multiple of 16x16"):
        g.tokens(8, 60, 32)


def test_fit_only_shrinks_keeps_aspect_and_respects_the_cap():
    g = TokenGrid(patch_size=(1, 2, 2), latent_downsample=(1, 8, 8))
    rng = np.random.default_rng(0)
    for _ in range(500):
        t, h, w = int(rng.integers(1, 33)), int(rng.integers(16, 1100)), int(rng.integers(16, 1100))
        cap = int(rng.integers(t * 4, 20000))
        ft, fh, fw = g.fit(t, h, w, max_tokens=cap)
        assert ft == t and fh <= max(h, 16) and fw <= max(w, 16) and fh % 16 == 0 and fw % 16 == 0
        assert g.tokens(ft, fh, fw) <= cap or (fh, fw) == (16, 16)
        if min(fh, fw) >= 64:
            assert abs(math.log((fh / fw) / (h / w))) < 0.35  # aspect kept up to patch rounding


def test_first_fit_decreasing_never_exceeds_capacity_and_keeps_every_item():
    rng = np.random.default_rng(1)
    for _ in range(50):
        sizes = rng.integers(1, 600, size=int(rng.integers(1, 80))).tolist()
        bins = first_fit_decreasing(sizes, 1000)
        assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
        assert all(sum(sizes[i] for i in b) <= 1000 for b in bins)
        assert len(bins) <= math.ceil(sum(sizes) / 1000) * 11 / 9 + 1  # FFD bound


def test_stream_packer_fills_bins_from_a_window():
    rng = np.random.default_rng(2)
    sizes = rng.integers(20, 400, size=3000).tolist()
    bins = list(StreamPacker(tokens_per_batch=2048, window=128, min_fill=0.97, size=lambda x: x)(iter(sizes)))
    assert sorted(x for b in bins for x in b) == sorted(sizes)
    assert all(sum(b) <= 2048 for b in bins)
    full = bins[:-5]  # the final flush may leave a few partial packs
    assert sum(map(sum, full)) / (2048 * len(full)) >= 0.97


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    shapes = [(20, 36, 64), (12, 48, 64), (30, 64, 36), (16, 48, 48), (9, 28, 64), (2, 96, 128)]
    samples = [
        clip_sample(f"p{i:03d}_s0_c0", num_frames=t, height=h, width=w, fps=24.0)
        for i, (t, h, w) in zip(range(18), itertools.cycle(shapes))
    ]
    write_shards(str(root / "train-%06d.tar"), samples, maxcount=6)
    return root


def test_packed_batches_keep_native_shapes_within_budget(mixed):
    dm = VideoShardsDataModule(train_shards=str(mixed / "train-*.tar"), batching="pack", tokens_per_batch=6000,
                               max_tokens_per_sample=4000, num_frames=16, num_workers=0, pack_window=32,
                               latent_downsample=(1, 1, 1))  # fmt: skip
    grid = TokenGrid(patch_size=(1, 2, 2), latent_downsample=(1, 1, 1))
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.batches_per_rank > 0
    for b in batches:
        assert "videos" in b and b["shapes"].shape == (len(b["videos"]), 3)
        total = 0
        for v, shape, m in zip(b["videos"], b["shapes"].tolist(), b["meta"]):
            t, h, w = shape
            assert list(v.shape) == [3, t, h, w] and v.min() >= -1 and v.max() <= 1
            assert t == min(16, m["num_frames"]) and h <= m["height"] and w <= m["width"]
            assert grid.tokens(t, h, w) <= 4000
            if grid.tokens(t, m["height"], m["width"]) <= 4000:  # no downscale needed: native size
                assert (h, w) == (m["height"], m["width"])
            assert [frame_index(v[:, i]) for i in range(t)] == m["frame_indices"]
            total += grid.tokens(t, h, w)
        assert total <= 6000
    assert dm.data_stats()["utilization"] <= 1.0
