"""Training under the precisions and optimizers a GPU run uses, reproduced on CPU: bf16-mixed with
gradient clipping and a fused AdamW (Lightning refuses to clip for an optimizer that could unscale
inside its step, though bf16 never scales)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules.video_diffusion import VideoDiffusion

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)}


def _data():
    return SyntheticVideoDataModule(
        num_samples=8, num_frames=4, height=16, width=16, batch_size=4, patch_size=TINY["patch_size"]
    )


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_trains_with_clipping(precision, tmp_path):
    torch.manual_seed(0)
    model = VideoDiffusion(dit=dict(TINY), objective="flow", fused_optimizer=True, lr=1e-3)
    clip = 0.05
    norms = []

    class Spy(L.Callback):  # the gradient norm the optimizer stepped with (the step leaves .grad alone)
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            assert opt.defaults["fused"], "the fused optimizer must be kept"

            def hook(optimizer, args, kwargs):  # after the step: the closure (backward, clip) has run
                grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))

            opt.register_step_post_hook(hook)

    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=3,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Spy()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=_data())
    assert trainer.global_step == 3 and len(norms) == 3
    assert all(0 < n <= clip * 1.001 for n in norms), norms  # clipped, not skipped


def test_fused_is_chosen_on_cuda_only_where_clipping_allows():
    model = VideoDiffusion(dit=dict(TINY))
    assert model._use_fused_optimizer() is False  # CPU, no trainer: plain (foreach) AdamW
