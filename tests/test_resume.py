"""Exact resume: a deterministic CPU run stopped at step k and resumed from its checkpoint reaches
the same weights, EMA, optimizer state and LR schedule as an uninterrupted run.

Mid-epoch resume needs a resumable train loader (Lightning restores loaders that implement
`state_dict` / `load_state_dict`): the stock `SyntheticVideoDataModule` has one
(datamodules/resumable.py), and so does `VideoShardsDataModule` (tests/test_data_resume.py).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules.callbacks import EMA
from lightning_modules.video_diffusion import VideoDiffusion


def _run(tmp_path, *, max_steps: int, ckpt_path=None, every: int | None = None):
    L.seed_everything(0)
    model = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
        num_classes=4,
        mask_probs={"unconditional": 0.5, "predict": 0.25, "block": 0.25},
        lr=3e-3,
        weight_decay=0.01,
        warmup_steps=3,
        lr_schedule="cosine",
    )
    data = SyntheticVideoDataModule(
        num_samples=20,
        num_val_samples=4,
        num_frames=4,
        height=16,
        width=16,
        batch_size=4,
        num_classes=4,
        patch_size=(1, 4, 4),
    )
    ema = EMA(decay=0.9)
    callbacks = [ema]
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1, save_last=False)
        )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(every),
        limit_val_batches=1,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        deterministic=True,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model, ema


def _state(trainer, model, ema):
    opt = trainer.optimizers[0].state_dict()
    sched = trainer.lr_scheduler_configs[0].scheduler
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "ema": {k: v.clone() for k, v in ema.shadow.items()},
        "opt": {(i, k): v.clone() for i, s in opt["state"].items() for k, v in s.items()},
        "lr": sched.get_last_lr(),
        "sched_epoch": sched.last_epoch,
        "step": trainer.global_step,
    }


@pytest.mark.parametrize("stop", [3, 5])
def test_resumed_run_equals_uninterrupted_run(tmp_path, stop):
    # 5 batches per epoch: a resume at step 3 is mid-epoch, one at step 5 starts the next epoch
    # (what an end-of-epoch checkpoint holds); the run crosses an epoch (and a validation)
    full = _state(*_run(tmp_path / "full", max_steps=8, every=stop))
    ckpt = tmp_path / "full" / f"epoch=0-step={stop}.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (tmp_path / "full").iterdir())
    loader_state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 0, "taken": stop}]  # batches trained on, not one prefetched ahead
    resumed = _state(*_run(tmp_path / "resumed", max_steps=8, ckpt_path=ckpt))
    assert resumed["step"] == full["step"] == 8
    assert resumed["sched_epoch"] == full["sched_epoch"] and resumed["lr"] == pytest.approx(full["lr"], abs=0)
    for part in ("weights", "ema", "opt"):
        assert resumed[part].keys() == full[part].keys()
        for k in full[part]:
            torch.testing.assert_close(resumed[part][k], full[part][k], rtol=0, atol=1e-7, msg=f"{part} {k}")
    # and the check can fail: the weights did move between the checkpoint and the end
    at_k = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(not torch.equal(at_k[k], full["weights"][k]) for k in at_k)
