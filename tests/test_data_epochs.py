"""Epoch sizing from shards/index.json (no tar read) and equal evaluation batch counts per rank."""

import itertools
import json
import os

import pytest

from datamodules.epochs import write_index
from datamodules.synthetic import clip_sample, write_shards
from datamodules.video_shards import VideoShardsDataModule

CONFIG = {32: {1: (1.0, 8), 8: (1.0, 4), 16: (1.0, 2)}, 48: {8: (0.5, 2)}}
# (frames, height, width, fps): several aspect ratios, one clip too small for any bucket
CLIPS = [(20, 36, 64, 24.0), (12, 48, 64, 25.0), (30, 64, 36, 30.0), (17, 48, 48, 24.0), (9, 28, 64, 24.0),
         (10, 16, 16, 24.0)]  # fmt: skip


@pytest.fixture()
def corpus(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    samples = [
        clip_sample(f"c{i:03d}_s0_c0", num_frames=t, height=h, width=w, fps=fps)
        for i, (t, h, w, fps) in zip(range(30), itertools.cycle(CLIPS))
    ]
    write_shards(str(shards / "train-%06d.tar"), samples[:24], maxcount=3)  # 8 shards
    write_shards(str(shards / "val-%06d.tar"), samples[24:], maxcount=2)  # 3 shards
    return tmp_path


def make(root, **kw):
    args = dict(data_dir=str(root), buckets=CONFIG, num_workers=0, latent_downsample=(1, 1, 1))
    return VideoShardsDataModule(**{**args, **kw})


@pytest.mark.parametrize("batching", ["bucket", "pack"])
def test_with_an_index_setup_sizes_the_epoch_without_opening_a_tar(corpus, batching):
    extra = {"tokens_per_batch": 4096, "buckets": None, "num_frames": 16} if batching == "pack" else {}
    scanned = make(corpus, batching=batching, **extra).planned_batches(make(corpus).shard_urls("train"))
    write_index(str(corpus / "shards"))
    for tar in sorted((corpus / "shards").glob("*.tar")):  # unreadable for anyone, root included
        tar.unlink()
        tar.mkdir()
    dm = make(corpus, batching=batching, rank=1, world_size=2, **extra)
    dm.setup("fit")
    assert dm.batches_per_rank == -(-scanned // 2) and scanned > 1


def test_index_sizing_scans_nothing_and_falls_back_when_a_shard_is_missing(corpus, monkeypatch):
    write_index(str(corpus / "shards"))
    urls = make(corpus).shard_urls("train")
    expected = make(corpus).planned_batches(urls)
    opened = []
    import datamodules.shards as shards

    real = shards.scan_metadata
    monkeypatch.setattr("datamodules.epochs.scan_metadata", lambda u: opened.append(u) or real(u))
    assert make(corpus).planned_batches(urls) == expected
    assert opened == []
    # a shard missing from the index: fall back to scanning (with a warning for many shards)
    index = json.loads((corpus / "shards" / "index.json").read_text())
    for group in index["splits"].values():  # drop one training shard from the index
        group["shards"] = [sh for sh in group["shards"] if sh["name"] != os.path.basename(urls[-1])]
    (corpus / "shards" / "index.json").write_text(json.dumps(index))
    assert make(corpus).planned_batches(urls) == expected
    assert len(opened) == len(urls)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_yields_the_same_number_of_validation_batches(corpus, world, workers):
    # 6 val clips in 3 shards, bucketed: a rank short of ceil(N / world) repeats a batch marked padding
    per_rank = []
    for rank in range(world):
        dm = make(corpus, rank=rank, world_size=world, num_workers=workers)
        per_rank.append(list(dm.val_dataloader()))
    counts = [len(b) for b in per_rank]
    assert len(set(counts)) == 1 and counts[0] > 0, counts
    real = [m["key"] for batches in per_rank for b in batches for m in b["meta"] if not m.get("padding")]
    single = [m["key"] for b in make(corpus, num_workers=0).val_dataloader() for m in b["meta"]]
    assert sorted(real) == sorted(single)  # every clip once, padding aside
    assert len(single) == 5  # the sixth val clip fits no bucket
    n = sum(1 for _ in make(corpus, num_workers=0).val_dataloader())
    padded = sum(1 for batches in per_rank for b in batches if all(m.get("padding") for m in b["meta"]))
    assert padded == world * counts[0] - n


def test_an_index_of_shards_named_anything_sizes_like_a_scan(tmp_path):
    """`python -m datamodules.epochs` on shards made elsewhere: the split comes from each clip's json."""
    samples = [clip_sample(f"u{i:03d}_s0_c0", num_frames=t, height=h, width=w, fps=fps)
               for i, (t, h, w, fps) in zip(range(20), itertools.cycle(CLIPS))]  # fmt: skip
    samples[0]["json"]["split"] = "val"  # a held-out clip
    write_shards(str(tmp_path / "ucf-%06d.tar"), samples, maxcount=4)
    dm = VideoShardsDataModule(train_shards=str(tmp_path / "ucf-*.tar"), buckets=CONFIG, num_workers=0,
                               latent_downsample=(1, 1, 1))  # fmt: skip
    urls = dm.shard_urls("train")
    scanned = dm.planned_batches(urls)
    write_index(str(tmp_path))
    from datamodules.epochs import index_metas

    metas = index_metas(urls)
    assert metas is not None and len(metas) == 20 and sum(m["split"] == "train" for m in metas) == 19
    assert dm.planned_batches(urls) == scanned > 1
