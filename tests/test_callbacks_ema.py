"""EMA callback: the average it keeps, once per optimizer step; saved in and restored from
checkpoints (Latte #55); `use_ema` swaps weights in and back; `load_for_sampling` picks them up."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules.callbacks import EMA, use_ema
from lightning_modules.callbacks.ema import ema_weights_from_checkpoint
from lightning_modules.video_diffusion import VideoDiffusion

DECAY = 0.8


def _model():
    return VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)}, num_classes=4, lr=1e-2
    )


def _data():
    return SyntheticVideoDataModule(
        num_samples=16,
        num_val_samples=4,
        num_frames=4,
        height=16,
        width=16,
        batch_size=2,
        num_classes=4,
        patch_size=(1, 4, 4),
    )


def _trainer(tmp_path, callbacks, **kw):
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kw,
    )


class _RecordWeights(Callback):
    """Trainable weights right after each optimizer step (the ones EMA averages)."""

    def __init__(self):
        self.steps, self.weights = [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step > 0 and (not self.steps or self.steps[-1] != trainer.global_step):
            self.steps.append(trainer.global_step)
            self.weights.append(
                {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
            )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ema")
    L.seed_everything(0)
    model, ema, rec = _model(), EMA(decay=DECAY), _RecordWeights()
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ckpt = ModelCheckpoint(dirpath=tmp, save_last=True)
    trainer = _trainer(tmp, [ema, rec, ckpt], max_steps=4, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=_data())
    return {
        "tmp": tmp,
        "model": model,
        "ema": ema,
        "rec": rec,
        "init": init,
        "trainer": trainer,
        "ckpt": tmp / "last.ckpt",
    }


def test_ema_is_the_average_of_post_step_weights_once_per_optimizer_step(trained):
    rec, ema = trained["rec"], trained["ema"]
    assert rec.steps == [1, 2, 3, 4] and ema.num_updates == 4  # 8 micro-batches, 4 optimizer steps
    expected = dict(trained["init"])
    for w in rec.weights:
        expected = {n: DECAY * expected[n] + (1 - DECAY) * w[n] for n in expected}
    for n, v in expected.items():
        torch.testing.assert_close(ema.shadow[n], v, rtol=1e-5, atol=1e-6)
    raw = rec.weights[-1]
    assert any(not torch.allclose(ema.shadow[n], raw[n]) for n in raw)  # the EMA is not the raw weights


def test_ema_is_saved_in_and_restored_from_the_checkpoint(trained, tmp_path):
    saved = ema_weights_from_checkpoint(torch.load(trained["ckpt"], weights_only=True))
    assert saved is not None and saved.keys() == trained["ema"].shadow.keys()
    for n in saved:
        assert torch.equal(saved[n], trained["ema"].shadow[n])
    # a new run resumed from the checkpoint starts from the stored average, not from the weights
    fresh = EMA(decay=DECAY)
    trainer = _trainer(tmp_path, [fresh], max_steps=4)
    trainer.fit(_model(), datamodule=_data(), ckpt_path=trained["ckpt"])
    assert fresh.num_updates == 4
    for n in saved:
        assert torch.equal(fresh.shadow[n], saved[n])


def test_use_ema_swaps_weights_in_and_back(trained):
    model, ema, trainer = trained["model"], trained["ema"], trained["trainer"]
    raw = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with use_ema(trainer, model) as swapped:
        assert swapped
        for n, p in model.named_parameters():
            if n in ema.shadow:
                assert torch.equal(p, ema.shadow[n])
    for n, p in model.named_parameters():
        if n in raw:
            assert torch.equal(p, raw[n])
    with use_ema(None, model) as swapped:  # no trainer / no EMA callback: a no-op
        assert not swapped


def test_load_for_sampling_uses_ema_weights_unless_told_not_to(trained):
    ema = trained["ema"]
    with_ema = VideoDiffusion.load_for_sampling(trained["ckpt"])
    raw = VideoDiffusion.load_for_sampling(trained["ckpt"], use_ema=False)
    assert not with_ema.training and not raw.training
    for n, p in with_ema.named_parameters():
        if n in ema.shadow:
            assert torch.equal(p, ema.shadow[n])
    for n, p in raw.named_parameters():
        if n in ema.shadow:
            assert torch.equal(p, trained["model"].state_dict()[n])
    assert with_ema.sample_shape == (4, 16, 16)  # the training clip shape travels with the checkpoint


def test_sampling_from_a_checkpoint_without_ema_warns(tmp_path):
    L.seed_everything(0)
    trainer = _trainer(tmp_path, [], max_steps=1, enable_checkpointing=False)
    model = _model()
    trainer.fit(model, datamodule=_data())
    trainer.save_checkpoint(tmp_path / "raw.ckpt")
    with pytest.warns(UserWarning, match="no EMA weights"):
        loaded = VideoDiffusion.load_for_sampling(tmp_path / "raw.ckpt")
    for n, p in loaded.state_dict().items():
        assert torch.equal(p, model.state_dict()[n])


def test_decay_is_validated():
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.5)
