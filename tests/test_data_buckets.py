"""Bucketing: one shape per batch, no upscaling past the tolerance, determinism, ranks, tiny datasets."""

import itertools
import math

import numpy as np
import pytest
import torch

from datamodules.buckets import Buckets, key_rng
from datamodules.packing import TokenGrid
from datamodules.synthetic import clip_sample, write_shards
from datamodules.transforms import upscale
from datamodules.video_shards import VideoShardsDataModule

GRID = TokenGrid(patch_size=(1, 2, 2), latent_downsample=(1, 1, 1))
CONFIG = {32: {1: (1.0, 8), 8: (1.0, 4), 16: (1.0, 2)}, 48: {8: (0.5, 2)}}
# (frames, height, width, fps): 16:9, 4:3, 9:16, 1:1, ~2.3:1 and one too small for any bucket
CLIPS = [(20, 36, 64, 24.0), (12, 48, 64, 25.0), (30, 64, 36, 30.0), (17, 48, 48, 24.0), (9, 28, 64, 24.0),
         (10, 16, 16, 24.0)]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    samples = [
        clip_sample(f"c{i:03d}_s0_c0", num_frames=t, height=h, width=w, fps=fps)
        for i, (t, h, w, fps) in zip(range(24), itertools.cycle(CLIPS))
    ]
    write_shards(str(root / "train-%06d.tar"), samples, maxcount=3)  # 8 shards
    return root


def make(root, **kw):
    args = dict(
        train_shards=str(root / "train-*.tar"), buckets=CONFIG, num_workers=0, latent_downsample=(1, 1, 1)
    )
    args.update(kw)
    return VideoShardsDataModule(**args)


def test_bucket_table_shapes_are_whole_patches_near_the_area():
    b = Buckets(buckets=CONFIG, grid=GRID, aspect_ratios=[9 / 16, 1.0, 16 / 9])
    for bucket in b.all:
        assert bucket.height % 2 == 0 and bucket.width % 2 == 0
        assert bucket.height * bucket.width == pytest.approx(bucket.resolution**2, rel=0.1)
    with pytest.raises(ValueError, match="tokens_per_batch"):
        Buckets(buckets={32: {8: (1.0, 0)}}, grid=GRID)
    auto = Buckets(buckets={32: {8: (1.0, 0)}}, grid=GRID, tokens_per_batch=8192, aspect_ratios=[1.0])
    assert auto.all[0].batch_size == 8192 // GRID.tokens(8, 32, 32) == 4


def test_assignment_never_upscales_past_tolerance_and_prefers_large():
    b = Buckets(buckets=CONFIG, grid=GRID, max_upscale=1.25)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w, n = int(rng.integers(8, 200)), int(rng.integers(8, 200)), int(rng.integers(1, 40))
        got = b.assign(height=h, width=w, num_source=n, step=1.0, image=False, rng=None)
        if got is not None:
            assert upscale(h, w, got.height, got.width) <= 1.25 + 1e-9
            assert got.num_frames <= n and got.num_frames > 1
    big = b.assign(height=360, width=640, num_source=100, step=1.0, image=False, rng=None)
    assert (big.resolution, big.num_frames, big.height / big.width) == (
        48,
        8,
        pytest.approx(9 / 16, rel=0.05),
    )
    mid = b.assign(height=36, width=36, num_source=100, step=1.0, image=False, rng=None)
    assert (mid.resolution, mid.num_frames) == (32, 16)  # 48 would upscale 36 -> 48 (1.33x)
    short = b.assign(height=36, width=36, num_source=10, step=1.0, image=False, rng=None)
    assert short.num_frames == 8  # the largest frame count the clip supplies
    image = b.assign(height=36, width=36, num_source=1, step=1.0, image=True, rng=None)
    assert image.num_frames == 1
    assert b.assign(height=16, width=16, num_source=100, step=1.0, image=False, rng=None) is None


def test_keep_probability_is_deterministic_given_seed_and_epoch():
    b = Buckets(buckets={48: {8: (0.5, 2)}, 32: {8: (1.0, 4)}}, grid=GRID)

    def res(epoch):
        return [
            b.assign(
                height=360, width=640, num_source=50, step=1.0, image=False, rng=key_rng(f"k{i}", 0, epoch)
            ).resolution
            for i in range(400)
        ]

    e0, e0_again, e1 = res(0), res(0), res(1)
    assert e0 == e0_again and e0 != e1
    assert 0.4 < np.mean([r == 48 for r in e0]) < 0.6  # kept at 48 with probability 0.5, else 32


def test_every_batch_has_one_bucket_shape_and_no_upscaling(corpus):
    dm = make(corpus, max_upscale=1.25, seed=3)
    shapes = {(b.num_frames, b.height, b.width): b for b in Buckets(buckets=CONFIG, grid=GRID).all}
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.batches_per_rank
    seen = set()
    for batch in batches:
        v = batch["video"]  # (B, 3, T, H, W): stacking proves one shape
        assert tuple(v.shape[2:]) in shapes and v.shape[0] == shapes[tuple(v.shape[2:])].batch_size
        for m in batch["meta"]:
            assert upscale(m["height"], m["width"], v.shape[3], v.shape[4]) <= 1.25 + 1e-9
            assert m["frame_indices"][-1] < m["num_frames"]
            seen.add(m["key"])
        assert v.min() >= -1 and v.max() <= 1
    assert len({tuple(b["video"].shape[2:]) for b in batches}) > 1  # several buckets in use
    assert not any(k.startswith(("c005", "c011", "c017", "c023")) for k in seen)  # 16x16: no bucket
    assert dm.data_stats()["no_bucket"] > 0


def test_batches_per_epoch_follow_the_config(corpus):
    dm = make(corpus)
    b = Buckets(buckets=CONFIG, grid=GRID)
    counts = {}
    for i, (t, h, w, _) in zip(range(24), itertools.cycle(CLIPS)):
        rng = key_rng(f"c{i:03d}_s0_c0", 0, 0, 0)
        got = b.assign(
            height=h,
            width=w,
            num_source=t,
            step=1.0,
            image=False,
            rng=key_rng("bucket", int(rng.integers(2**31))),
        )
        if got is not None:
            counts[got] = counts.get(got, 0) + 1
    expected = sum(math.ceil(n / bk.batch_size) for bk, n in counts.items())
    assert dm.planned_batches(dm.shard_urls("train")) == expected
    for world in (1, 2, 3):
        dm = make(corpus, rank=0, world_size=world)
        dm.setup("fit")
        assert dm.batches_per_rank == math.ceil(expected / world)
    assert make(corpus, batches_per_epoch=10, rank=1, world_size=4).planned_batches([]) == 10


@pytest.mark.parametrize("batching", ["bucket", "pack"])
def test_two_ranks_disjoint_samples_equal_batch_counts(corpus, batching):
    extra = {"tokens_per_batch": 4096, "buckets": None, "num_frames": 16} if batching == "pack" else {}
    per_rank = []
    for rank in range(2):
        dm = make(corpus, batching=batching, rank=rank, world_size=2, num_workers=2 if rank else 0, **extra)
        batches = list(dm.train_dataloader())
        per_rank.append(batches)
        assert len(batches) == dm.batches_per_rank
        for b in batches:  # float in [-1, 1] also when it crossed from a worker process
            for v in b["videos"] if "videos" in b else [b["video"]]:
                assert v.dtype == torch.float32 and -1 <= v.min() and v.max() <= 1
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    keys = [{m["key"] for b in batches for m in b["meta"]} for batches in per_rank]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    if batching == "pack":
        for batches in per_rank:
            for b in batches:
                assert "videos" in b and sum(GRID.tokens(*s) for s in b["shapes"].tolist()) <= 4096


def test_tiny_dataset_still_yields_batches_on_every_rank(tmp_path):
    write_shards(
        str(tmp_path / "train-%06d.tar"),
        [clip_sample("only_s0_c0", num_frames=10, height=32, width=32, fps=24.0)],
    )
    counts = []
    for rank in range(2):
        dm = VideoShardsDataModule(train_shards=str(tmp_path / "train-*.tar"), num_frames=8, height=32, width=32,
                                   batch_size=4, num_workers=2, rank=rank, world_size=2,
                                   latent_downsample=(1, 1, 1))  # fmt: skip
        batches = list(dm.train_dataloader())
        counts.append(len(batches))
        assert batches and all(b["video"].shape == (4, 3, 8, 32, 32) for b in batches)
    assert counts == [1, 1]  # ceil(ceil(1 / 4) / 2) = 1: repeated, never empty
