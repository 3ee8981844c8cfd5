"""SampleVideos never stops training: reference clips come from validation data when there is any,
a task the clips are too short for (images, T = 1) falls back to unconditional samples with a
warning, and a sampling error is reported, not raised."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules.callbacks import SampleVideos
from lightning_modules.video_diffusion import VideoDiffusion

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)}


class ImagesThenVideos(SyntheticVideoDataModule):
    """Training batches are images (T = 1); validation clips are 4-frame videos."""

    def train_dataloader(self):
        images = SyntheticVideoDataModule(
            num_samples=8, num_frames=1, height=16, width=16, batch_size=4, patch_size=TINY["patch_size"]
        )
        return images.train_dataloader()


def _fit(tmp_path, data, cb, **kw):
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[cb],
        **kw,
    )
    trainer.fit(VideoDiffusion(dit=dict(TINY), objective="flow", sample_steps=2), datamodule=data)
    return trainer


def _data(**kw):
    return ImagesThenVideos(
        num_samples=8, num_val_samples=4, num_frames=4, height=16, width=16, batch_size=4,
        patch_size=TINY["patch_size"], **kw,
    )  # fmt: skip


def test_predict_takes_its_given_frames_from_validation_clips_when_training_starts_with_images(tmp_path):
    cb = SampleVideos(
        every_n_steps=1, num_samples=2, task="predict", given_frames=2, out_dir=str(tmp_path / "s")
    )
    trainer = _fit(tmp_path, _data(), cb, limit_val_batches=1)
    assert trainer.global_step == 2
    assert cb._reference is not None and cb._reference.shape[1:] == (3, 4, 16, 16)  # validation clips
    names = sorted(p.name for p in cb.written)
    assert names and all(n.startswith("predict_") for n in names), names


def test_a_task_the_clips_are_too_short_for_falls_back_to_unconditional_with_a_warning(tmp_path):
    cb = SampleVideos(
        every_n_steps=1, num_samples=2, task="predict", given_frames=2, out_dir=str(tmp_path / "s")
    )
    with pytest.warns(UserWarning, match="sampling unconditionally"):
        trainer = _fit(tmp_path, _data(), cb, limit_val_batches=0)  # only image batches to take clips from
    assert trainer.global_step == 2
    names = sorted(p.name for p in cb.written)
    assert names and all(n.startswith("uncond_") for n in names), names


def test_a_sampling_error_is_reported_and_training_goes_on(tmp_path, monkeypatch):
    def broken(self, *a, **k):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(VideoDiffusion, "generate", broken)
    cb = SampleVideos(every_n_steps=1, num_samples=2, task="uncond", num_frames=4, height=16, width=16)
    with pytest.warns(UserWarning, match="simulated"):
        trainer = _fit(tmp_path, _data(), cb, limit_val_batches=0)
    assert trainer.global_step == 2 and cb.written == []
