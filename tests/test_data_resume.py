"""Training loaders resume exactly mid-epoch: after load_state_dict({"taken": k}) a fresh loader
yields the same batches an uninterrupted pass yields after its first k (Lightning saves and loads
this state in checkpoints; tests/test_resume.py checks a whole resumed fit)."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.synthetic import SyntheticVideoDataModule, clip_sample, write_shards
from datamodules.video_shards import VideoShardsDataModule
from lightning_modules.video_diffusion import VideoDiffusion


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


@pytest.mark.parametrize("workers,taken", [(0, 2), (2, 2), (2, 3)])  # an odd skip renames the workers
def test_shard_loader_resumes_mid_epoch(shard_dir, workers, taken):
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
    head = [_keys(next(it)) for _ in range(taken)]
    state = first.state_dict()
    assert state == {"epoch": 0, "taken": taken}
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


class _Keys(L.Callback):
    """The sample keys of every training batch, in order."""

    def __init__(self):
        self.keys: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys.append([m["key"] for m in batch["meta"]])


def _fit(root, shard_dir, batching, *, max_steps, ckpt_path=None, every=None):
    L.seed_everything(0)
    model = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
        mask_probs={"unconditional": 0.5, "predict": 0.5}, lr=3e-3, warmup_steps=2, lr_schedule="cosine",
    )  # fmt: skip
    pack = (
        {"batching": "pack", "tokens_per_batch": 160, "max_tokens_per_sample": 64}
        if batching == "pack"
        else {}
    )
    data = VideoShardsDataModule(
        data_dir=str(shard_dir), buckets={32: {4: (1.0, 2)}, 16: {4: (1.0, 3)}} if not pack else None,
        num_frames=4, height=32, width=32, batch_size=2, num_workers=2, latent_downsample=(1, 1, 1),
        patch_size=(1, 4, 4), seed=3, **pack,
    )  # fmt: skip
    keys = _Keys()
    callbacks = [keys]
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, save_last=False)
        )
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(every),
                        limit_val_batches=0, num_sanity_val_steps=0, deterministic=True, default_root_dir=root)  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model, keys.keys


@pytest.mark.parametrize("batching", ["bucket", pytest.param("pack", marks=pytest.mark.slow)])
def test_fit_with_two_workers_resumes_with_the_same_samples_and_weights(tmp_path, shard_dir, batching):
    """Kill after k steps (mid-epoch, and on the last batch of an epoch), resume from the checkpoint:
    the batches after k and the final weights equal an uninterrupted run's."""
    full_trainer, full_model, full_keys = _fit(tmp_path / "full", shard_dir, batching, max_steps=10, every=1)
    per_epoch = full_trainer.num_training_batches
    assert batching == "bucket" or max(len(k) for k in full_keys) >= 2  # packs hold several clips
    assert 2 <= per_epoch < 10 and len(full_keys) == 10
    assert (
        full_keys[:per_epoch] != full_keys[per_epoch : 2 * per_epoch]
    )  # epochs differ, so a skew would show
    for stop in (per_epoch // 2 + 1, per_epoch):  # mid-epoch; the last batch of epoch 0
        ckpt = tmp_path / "full" / f"epoch=0-step={stop}.ckpt"
        assert ckpt.exists(), sorted(p.name for p in (tmp_path / "full").iterdir())
        trainer, model, keys = _fit(
            tmp_path / f"resumed{stop}", shard_dir, batching, max_steps=10, ckpt_path=ckpt
        )
        assert trainer.global_step == 10
        assert keys == full_keys[stop:], f"resumed at step {stop}"
        for k, v in full_model.state_dict().items():
            torch.testing.assert_close(
                model.state_dict()[k], v, rtol=0, atol=1e-6, msg=f"{k} (resumed at {stop})"
            )
