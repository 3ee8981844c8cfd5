"""Precomputed latents follow the frames the loader hands over (10.3): frame stride, crop and flip
map through the codec factors, so the latent the loader attaches equals the latent computed from
the decoded frames; a resize cannot be followed and stops the run with a message naming the fix."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.decode import decode_video
from datamodules.synthetic import clip_meta, encode_mp4, write_shards
from datamodules.transforms import LatentMappingError
from datamodules.video_shards import VideoShardsDataModule

T, H, W = 12, 24, 32


def pool_codec(video: torch.Tensor) -> torch.Tensor:
    """A stand-in codec with factors (1, 2, 2): 2x2 average pooling of [-1, 1] frames (C, T, H, W)."""
    return F.avg_pool3d(video[None], (1, 2, 2))[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
        mp4 = encode_mp4(frames, 24.0)
        decoded = torch.from_numpy(decode_video(mp4, list(range(T)), size=(H, W))).permute(3, 0, 1, 2)
        latent = pool_codec(decoded.float() / 127.5 - 1).numpy()  # (3, T, H/2, W/2): the whole clip
        buf = io.BytesIO()
        np.save(buf, latent)
        key = f"l{i:03d}"
        samples.append({"__key__": key, "mp4": mp4, "latent.npy": buf.getvalue(), "txt": key,
                        "json": clip_meta(key, num_frames=T, fps=24.0, height=H, width=W, split="train")})  # fmt: skip
    write_shards(str(root / "train-%06d.tar"), samples)
    return root


def loader(root, **kw):
    opts = dict(train_shards=str(root / "train-*.tar"), num_frames=4, frame_stride=2, height=H, width=16,
                hflip=True, load_latents=True, latent_downsample=(1, 2, 2), patch_size=(1, 2, 2), batch_size=2,
                num_workers=0, batches_per_epoch=4, seed=3)  # fmt: skip
    dm = VideoShardsDataModule(**(opts | kw))
    dm.setup("fit")
    return dm


def test_loader_latents_equal_latents_of_the_frames_it_hands_over(shards):
    dm = loader(shards)
    seen = set()
    for batch in dm.train_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        for video, latent, meta in zip(batch["video"], batch["latent"], batch["meta"]):
            assert latent.shape == (3, 4, H // 2, 8)
            torch.testing.assert_close(latent, pool_codec(video), atol=1e-5, rtol=0)
            seen.add((meta["frame_indices"][0], meta["crop"][1], meta["flip"]))
    assert len({s[1] for s in seen}) > 1 and {s[2] for s in seen} == {True, False}  # crops and flips varied


def test_latents_with_a_resize_stop_the_run_naming_the_fix(shards):
    dm = loader(shards, height=12, width=16)  # 24x32 -> 12x16: a resize
    with pytest.raises(LatentMappingError, match="load_latents=false"):
        next(iter(dm.train_dataloader()))
