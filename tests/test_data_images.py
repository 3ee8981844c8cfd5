"""Image-video joint training: single frames (T=1) mixed in at a ratio, from videos or image shards."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from datamodules.synthetic import clip_sample, frame_index, write_shards
from datamodules.video_shards import VideoShardsDataModule


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    shapes = [(20, 36, 64), (16, 48, 48), (24, 64, 36)]
    samples = [
        clip_sample(f"v{i:03d}_s0_c0", num_frames=t, height=h, width=w, fps=24.0)
        for i, (t, h, w) in zip(range(12), itertools.cycle(shapes))
    ]
    write_shards(str(root / "train-%06d.tar"), samples, maxcount=4)
    images = []
    for i in range(10):
        buf = io.BytesIO()
        Image.fromarray(np.full((40 + 4 * i, 56, 3), 200, np.uint8)).save(buf, format="png")
        meta = {"key": f"img{i:03d}", "height": 40 + 4 * i, "width": 56, "split": "train"}
        images.append({"__key__": f"img{i:03d}", "png": buf.getvalue(), "json": meta, "txt": f"image {i}"})
    write_shards(str(root / "images-%06d.tar"), images, maxcount=5)
    return root


def test_frames_drawn_from_videos_at_the_ratio(videos):
    dm = VideoShardsDataModule(train_shards=str(videos / "train-*.tar"), image_ratio=0.5, num_frames=8, height=32,
                               width=32, batch_size=2, image_batch_size=3, num_workers=0, batches_per_epoch=40,
                               latent_downsample=(1, 1, 1))  # fmt: skip
    batches = list(dm.train_dataloader())
    images = [b for b in batches if b["video"].shape[2] == 1]
    clips = [b for b in batches if b["video"].shape[2] == 8]
    assert len(images) + len(clips) == len(batches) == 40
    assert all(b["video"].shape[0] == 3 for b in images) and all(b["video"].shape[0] == 2 for b in clips)
    for b in images:
        assert b["fps"].eq(0).all()
        for v, m in zip(b["video"], b["meta"]):
            assert (
                len(m["frame_indices"]) == 1
                and frame_index(v[:, 0]) == m["frame_indices"][0] < m["num_frames"]
            )
    n_img, n_clip = 3 * len(images), 2 * len(clips)
    assert 0.35 < n_img / (n_img + n_clip) < 0.65


def test_image_shards_mixed_at_the_ratio(videos):
    dm = VideoShardsDataModule(train_shards=str(videos / "train-*.tar"), image_shards=str(videos / "images-*.tar"),
                               image_ratio=0.4, num_frames=8, height=32, width=32, batch_size=2, image_batch_size=2,
                               num_workers=0, batches_per_epoch=30, latent_downsample=(1, 1, 1))  # fmt: skip
    batches = list(dm.train_dataloader())
    images = [b for b in batches if b["video"].shape[2] == 1]
    assert images and len(images) < len(batches)
    for b in images:
        assert all(m["key"].startswith("img") for m in b["meta"]) and b["caption"][0].startswith("image ")
        assert (b["video"] - (200 / 127.5 - 1)).abs().max() < 0.02  # the png's flat grey
    assert all(m["key"].startswith("v") for b in batches if b["video"].shape[2] == 8 for m in b["meta"])
    assert dm.planned_batches(dm.shard_urls("train")) > 6  # images add to the epoch: 12 clips / 2 + images


def test_image_buckets_take_images(videos):
    buckets = {32: {1: (1.0, 4), 8: (1.0, 2)}}
    dm = VideoShardsDataModule(train_shards=str(videos / "train-*.tar"), buckets=buckets, image_ratio=0.5,
                               num_workers=0, batches_per_epoch=20, latent_downsample=(1, 1, 1))  # fmt: skip
    shapes = {tuple(b["video"].shape[:3]) for b in dm.train_dataloader()}
    assert (4, 3, 1) in shapes and (2, 3, 8) in shapes
