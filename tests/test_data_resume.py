"""Training loaders resume exactly mid-epoch: after load_state_dict({"taken": k}) a fresh loader
yields the same batches an uninterrupted pass yields after its first k (Lightning saves and loads
this state in checkpoints; tests/test_resume.py checks a whole resumed fit)."""

import pytest
import torch

from datamodules.synthetic import SyntheticVideoDataModule, clip_sample, write_shards
from datamodules.video_shards import VideoShardsDataModule


def _keys(batch):
    return [m["key"] for m in batch["meta"]], batch["video"]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_shards")
    (root / "shards").mkdir()
    samples = [
        clip_sample(f"src{i:03d}_s0000_c00", num_frames=12, height=32, width=48, fps=24.0) for i in range(10)
    ]
    write_shards(str(root / "shards" / "train-%06d.tar"), samples, maxcount=4)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_loader_resumes_mid_epoch(shard_dir, workers):
    def loader():
        dm = VideoShardsDataModule(
            data_dir=str(shard_dir),
            num_frames=4,
            height=32,
            width=32,
            batch_size=2,
            num_workers=workers,
            latent_downsample=(1, 1, 1),
            seed=3,
        )
        dm.setup("fit")
        return dm.train_dataloader()

    full = [_keys(b) for b in loader()]
    assert len(full) >= 4
    first = loader()
    it = iter(first)
    head = [_keys(next(it)) for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 0, "taken": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [_keys(b) for b in resumed]
    got = head + rest
    assert [k for k, _ in got] == [k for k, _ in full]
    assert len(list(resumed)) == len(full)  # the skip applies to the resumed pass only
    for (_, a), (_, b) in zip(got, full):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [_keys(b)[0] for b in loader()] == [k for k, _ in full]  # a fresh loader skips nothing


def test_synthetic_loader_resumes_mid_epoch_and_reshuffles_per_epoch():
    dm = SyntheticVideoDataModule(num_samples=24, num_frames=2, height=8, width=8, batch_size=3, seed=5)
    full = [_keys(b)[0] for b in dm.train_dataloader()]
    loader = dm.train_dataloader()
    it = iter(loader)
    head = [_keys(next(it))[0] for _ in range(3)]
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    assert head + [_keys(b)[0] for b in resumed] == full
    other = dm.train_dataloader()
    other.sampler.set_epoch(1)
    assert [_keys(b)[0] for b in other] != full  # a new epoch, a new order (same on every rerun)


def test_state_of_a_finished_epoch_skips_nothing_in_the_next():
    """An end-of-epoch checkpoint holds (epoch e, all batches taken); the resumed run starts e + 1."""
    dm = SyntheticVideoDataModule(num_samples=12, num_frames=2, height=8, width=8, batch_size=3, seed=5)
    loader = dm.train_dataloader()
    n = len(list(loader))
    assert loader.state_dict() == {"epoch": 0, "taken": n}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    resumed.sampler.set_epoch(1)
    fresh = dm.train_dataloader()
    fresh.sampler.set_epoch(1)
    assert [_keys(b)[0] for b in resumed] == [_keys(b)[0] for b in fresh] and n > 0
