"""Sampling: the `SampleVideos` callback (mp4s every N steps with EMA weights, TensorBoard images)
and the `python -m lightning_modules.sample` CLI for each task."""

from __future__ import annotations

import json

import av
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules import sample as sample_cli
from lightning_modules.callbacks import EMA, SampleVideos
from lightning_modules.callbacks.samples import write_mp4
from lightning_modules.video_diffusion import VideoDiffusion


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (T, H, W, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    L.seed_everything(0)
    model = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
        num_classes=4,
        mask_probs={"predict": 0.5, "unconditional": 0.5},
        sample_steps=3,
    )
    sampler = SampleVideos(every_n_steps=2, num_samples=3, task="predict", given_frames=2, labels=[0, 1])
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=TensorBoardLogger(tmp, name="tb"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=tmp,
        callbacks=[EMA(decay=0.5), sampler, ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True)],
    )
    data = SyntheticVideoDataModule(
        num_samples=8,
        num_val_samples=2,
        num_frames=6,
        height=16,
        width=16,
        batch_size=2,
        num_classes=4,
        patch_size=(1, 4, 4),
    )
    trainer.fit(model, datamodule=data)
    return {"tmp": tmp, "trainer": trainer, "sampler": sampler, "ckpt": tmp / "ckpt" / "last.ckpt"}


def test_callback_writes_mp4s_with_ema_every_n_steps_and_at_the_end(run):
    written = run["sampler"].written
    steps = sorted({p.parent.name for p in written})
    assert steps == ["step_0000002", "step_0000003"]  # every 2 steps, plus the end of training
    assert len(written) == 6 and all(p.name.endswith("_ema.mp4") for p in written)
    frames = _frames(written[0])
    assert frames.shape == (6, 16, 16, 3)
    # the predicted clips continue the first training clips: their first 2 frames are those clips'
    ref = run["sampler"]._reference  # (n, 3, T, H, W)
    given = ((ref[0, :, :2].permute(1, 2, 3, 0) + 1) * 127.5).round().numpy()
    assert np.abs(frames[:2].astype(float) - given).mean() < 8  # H.264 at crf 18 is close, not exact


def test_callback_keeps_its_given_clips_in_checkpoints(run):
    state = torch.load(run["ckpt"], weights_only=True)["callbacks"]
    (saved,) = [v["reference"] for k, v in state.items() if k.startswith("SampleVideos")]
    assert torch.equal(saved, run["sampler"]._reference)


def test_callback_logs_frame_strips_to_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = run["trainer"].logger.log_dir
    acc = EventAccumulator(log_dir, size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert "samples/predict_0" in tags
    assert {e.step for e in acc.Images("samples/predict_0")} == {2, 3}


@pytest.mark.parametrize("task", ["uncond", "predict", "interpolate", "i2v"])
def test_sample_cli_writes_videos_for_each_task(run, tmp_path, task):
    given = tmp_path / "given.mp4"
    write_mp4(given, torch.rand(3, 6, 16, 16) * 2 - 1)
    out = tmp_path / "out"
    args = [
        "--ckpt",
        str(run["ckpt"]),
        "--task",
        task,
        "--num",
        "2",
        "--out",
        str(out),
        "--steps",
        "2",
        "--label",
        "1",
        "2",
    ]
    if task != "uncond":
        args += ["--given", str(given), "--given-frames", "2"]
    paths = sample_cli.main(args)
    assert [p.name for p in paths] == [f"{task}_000.mp4", f"{task}_001.mp4"]
    assert _frames(paths[0]).shape == (6, 16, 16, 3)  # the training clip shape from the checkpoint
    record = json.loads((out / "samples.json").read_text())
    assert record["shape"] == [6, 16, 16] and record["args"]["task"] == task


def test_sample_cli_masked_task_needs_given(run, tmp_path):
    with pytest.raises(SystemExit, match="--given"):
        sample_cli.main(["--ckpt", str(run["ckpt"]), "--task", "predict", "--out", str(tmp_path)])


def test_task_masks():
    m = sample_cli.task_mask("interpolate", 9, 2, 2, stride=4)
    assert m[0, :, 0, 0].nonzero().flatten().tolist() == [0, 4, 8]
    assert sample_cli.task_mask("predict", 5, 2, 2, k=2)[0, :, 0, 0].tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert sample_cli.task_mask("i2v", 4, 2, 2, frame=3)[0, :, 0, 0].tolist() == [False, False, False, True]
    assert not sample_cli.task_mask("uncond", 4, 2, 2).any()
    with pytest.raises(ValueError, match="unknown"):
        sample_cli.task_mask("outpaint", 4, 2, 2)


def test_sample_cli_extends_past_the_training_length(run, tmp_path):
    """--task extend --frames 3xT: 18 frames from a checkpoint trained on 6-frame clips; the mp4
    decodes and plays, samples.json records chunk length, overlap and conditioning."""
    out = tmp_path / "out"
    paths = sample_cli.main(["--ckpt", str(run["ckpt"]), "--task", "extend", "--frames", "3xT", "--overlap", "2",
                             "--num", "1", "--out", str(out), "--steps", "2", "--label", "1"])  # fmt: skip
    assert _frames(paths[0]).shape == (18, 16, 16, 3)
    record = json.loads((out / "samples.json").read_text())
    assert record["shape"] == [18, 16, 16] and record["chunk_frames"] == 6 and record["overlap"] == 2
    assert record["conditioning"] == "replace"  # the checkpoint was trained with masks


def test_sample_cli_extends_an_unmasked_flow_checkpoint_with_guidance_pc_and_frameskip(tmp_path):
    """--task extend on a checkpoint trained WITHOUT masks (rectified flow): reconstruction guidance
    (auto), Langevin corrector steps and frameskip keyframes; 3x the training length, playable mp4,
    the settings in samples.json."""
    torch.manual_seed(0)
    model = VideoDiffusion(dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
                           objective="flow", sample_steps=2)  # fmt: skip
    model.sample_shape = (4, 16, 16)
    ckpt = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "flow.ckpt")
    out = tmp_path / "out"
    paths = sample_cli.main(["--ckpt", str(tmp_path / "flow.ckpt"), "--task", "extend", "--frames", "3xT",
                             "--overlap", "1", "--frameskip", "2", "--corrector-steps", "1",
                             "--guidance-weight", "3", "--num", "1", "--out", str(out), "--no-ema"])  # fmt: skip
    assert _frames(paths[0]).shape == (12, 16, 16, 3)
    record = json.loads((out / "samples.json").read_text())
    assert record["shape"] == [12, 16, 16] and record["chunk_frames"] == 4 and record["overlap"] == 1
    assert record["conditioning"] == "guidance" and record["guidance_weight"] == 3.0
    assert record["corrector_steps"] == 1 and record["frameskip"] == 2
