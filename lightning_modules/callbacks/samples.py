"""Sample videos during training: every N optimizer steps, with the EMA weights, for fixed seeds,
prompts / labels and a fixed conditioning task. Written as mp4 (PyAV, H.264) under
`<log_dir>/samples/step_XXXXXXX/` and, with a TensorBoard logger, as frame strips (one image per
sample, frames side by side) under `samples/<i>`.

    callbacks:
      - class_path: lightning_modules.callbacks.SampleVideos
        init_args: {every_n_steps: 500, num_samples: 4, task: predict, given_frames: 2}

Masked tasks (predict / interpolate / i2v) take their given frames from reference clips cached once
and kept in checkpoints (every sampling round continues the same clips): the first validation
clips when there is validation data, else the first training clips that are videos (T > 1). A task
the clips are too short for (an image batch, 1 frame for `predict`) falls back to unconditional
samples with a warning, and no sampling error stops training: it is reported and training goes on.
Under a sharded strategy (FSDP2 / FSDP) every rank generates (the sharded forward needs all of
them) and rank 0 writes; otherwise rank 0 alone generates.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import lightning as L
import numpy as np
import torch
from einops import rearrange
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lightning_modules.callbacks.ema import use_ema


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    return (
        rearrange(((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), "c t h w -> t h w c")
        .cpu()
        .numpy()
    )


def write_mp4(path: str | Path, video: torch.Tensor, *, fps: float = 8.0, crf: int = 18) -> Path:
    """Write (3, T, H, W) in [-1, 1] as H.264 yuv420p mp4 (odd sizes padded by one edge pixel)."""
    frames = to_uint8(video)  # (T, H, W, 3)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p needs even sizes
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


class SampleVideos(Callback):
    def __init__(
        self,
        *,
        every_n_steps: int = 1000,
        num_samples: int = 4,
        seed: int = 0,
        task: Literal["uncond", "predict", "interpolate", "i2v"] = "uncond",
        given_frames: int = 1,
        prompts: list[str] | None = None,
        labels: list[int] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        fps: float = 8.0,
        out_dir: str | None = None,
        at_train_end: bool = True,
    ):
        """every_n_steps: optimizer steps between rounds; task: conditioning mask (see
        `lightning_modules.sample.task_mask`), given_frames its k; prompts / labels: one per sample
        (cycled); num_frames/height/width: None = the first training batch's shape; steps /
        cfg_scale: None = the module's defaults; out_dir: None = `<log_dir>/samples`."""
        self.every_n_steps, self.num_samples, self.seed = every_n_steps, num_samples, seed
        self.task, self.given_frames = task, given_frames
        self.prompts, self.labels = prompts, labels
        self.shape = (num_frames, height, width)
        self.steps, self.cfg_scale, self.fps = steps, cfg_scale, fps
        self.out_dir, self.at_train_end = out_dir, at_train_end
        self._reference: torch.Tensor | None = None  # (n, 3, T, H, W) first training clips
        self._last_step = -1
        self.written: list[Path] = []

    def _cycle(self, values: list | None) -> list | None:
        return None if not values else [values[i % len(values)] for i in range(self.num_samples)]

    # ------------------------------------------------------------------ reference clips
    @staticmethod
    def _clips(batch: dict) -> list[torch.Tensor]:
        """A batch's clips as a list of (3, T, H, W) float in [-1, 1] on the CPU."""
        clips = list(batch["videos"]) if "videos" in batch else list(batch["video"])
        out = []
        for c in clips:
            c = c.detach().cpu()
            out.append(c.float() / 127.5 - 1 if c.dtype == torch.uint8 else c.float())
        return out

    def _take_reference(self, clips: list[torch.Tensor]) -> None:
        """Keep up to num_samples clips of one shape, videos (T > 1) before images."""
        clips = sorted(clips, key=lambda c: c.shape[1] < 2)  # stable: videos first, then images
        if not clips:
            return
        first = clips[0].shape
        self._reference = torch.stack([c for c in clips if c.shape == first][: self.num_samples])

    def on_train_start(self, trainer, pl_module) -> None:
        if self._reference is not None or self.task == "uncond":
            return
        loaders = trainer.val_dataloaders if trainer.limit_val_batches else None
        if loaders is None and trainer.datamodule is not None and trainer.limit_val_batches:
            try:
                loaders = trainer.datamodule.val_dataloader()
            except Exception:  # no validation data configured
                loaders = None
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        if loader is None:
            return
        clips: list[torch.Tensor] = []
        try:
            for batch in loader:
                clips += self._clips(batch)
                if sum(c.shape[1] > 1 for c in clips) >= self.num_samples:
                    break
        except Exception as e:  # never stop training for sample logging
            rank_zero_warn(f"SampleVideos: could not read validation clips ({e}); using training clips")
            return
        self._take_reference(clips)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._reference is None or (self._reference.shape[2] < 2 and self.task != "uncond"):
            clips = self._clips(batch)
            if self._reference is None or any(c.shape[1] > 1 for c in clips):
                self._take_reference(clips)  # images only until a batch with videos comes by
        step = trainer.global_step
        if step > 0 and step != self._last_step and step % self.every_n_steps == 0:
            self._last_step = step
            self.sample(trainer, pl_module)

    def state_dict(self) -> dict:
        """The cached given clips travel with checkpoints, so a resumed run continues the same ones."""
        return {"reference": self._reference}

    def load_state_dict(self, state_dict: dict) -> None:
        self._reference = state_dict.get("reference")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_train_end and trainer.global_step != self._last_step and self._reference is not None:
            self._last_step = trainer.global_step
            self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Path]:
        """One sampling round; every rank must call it (the log dir is agreed on collectively). Errors
        are reported, not raised: sample logging never stops training."""
        root = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "samples")
        sharded = isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
        if not sharded and trainer.global_rank != 0:
            return []
        try:
            return self._sample(trainer, pl_module, root)
        except Exception as e:  # pragma: no branch - reported, training goes on
            rank_zero_warn(
                f"SampleVideos: sampling at step {trainer.global_step} failed and was skipped: {e!r}"
            )
            return []

    def _plan(self) -> tuple[str, tuple[int, int, int], torch.Tensor | None, torch.Tensor | None]:
        """(task, (T, H, W), given, mask) for this round; a masked task the reference clips cannot
        serve falls back to unconditional samples, with a warning."""
        from lightning_modules.sample import task_mask

        ref = self._reference
        ref_shape = tuple(ref.shape[2:]) if ref is not None else (None, None, None)
        shape = tuple(s if s is not None else d for s, d in zip(self.shape, ref_shape))  # (T, H, W)
        if None in shape:
            raise ValueError("no clip seen yet and num_frames/height/width unset: nothing to size samples by")
        if self.task == "uncond":
            return "uncond", shape, None, None
        need = {"predict": self.given_frames + 1, "interpolate": 2, "i2v": 2}[self.task]
        reason = None
        if ref is None:
            reason = "no reference clip"
        elif tuple(ref.shape[2:]) != shape:
            reason = (
                f"num_frames/height/width {shape} differ from the reference clips' {tuple(ref.shape[2:])}"
            )
        elif shape[0] < need:
            reason = f"the reference clips have {shape[0]} frame(s); task {self.task!r} needs {need}"
        if reason is not None:
            rank_zero_warn(f"SampleVideos: {reason}: sampling unconditionally instead of {self.task!r}")
            return "uncond", shape, None, None
        n = self.num_samples
        given = ref.repeat(-(-n // ref.shape[0]), 1, 1, 1, 1)[:n]
        return self.task, shape, given, task_mask(self.task, *shape, k=self.given_frames)

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule, root: Path) -> list[Path]:
        task, (t, h, w), given, mask = self._plan()
        n = self.num_samples
        with use_ema(trainer, pl_module) as ema:
            videos = pl_module.generate(
                n,
                num_frames=t,
                height=h,
                width=w,
                seed=self.seed,
                batch_size=n,
                labels=self._cycle(self.labels),
                captions=self._cycle(self.prompts),
                given=given,
                mask=mask,
                steps=self.steps,
                cfg_scale=self.cfg_scale,
            )  # (n, 3, T, H, W)
        if trainer.global_rank != 0:
            return []
        step_dir = root / f"step_{trainer.global_step:07d}"
        paths = [
            write_mp4(step_dir / f"{task}_{i:02d}{'_ema' if ema else ''}.mp4", v, fps=self.fps)
            for i, v in enumerate(videos)
        ]
        self.written.extend(paths)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for i, v in enumerate(videos):
                    strip = rearrange((v.clamp(-1, 1) + 1) / 2, "c t h w -> c h (t w)")  # frames side by side
                    logger.experiment.add_image(f"samples/{task}_{i}", strip, trainer.global_step)
        return paths
