"""Sample videos during training: every N optimizer steps, with the EMA weights, for fixed seeds,
prompts / labels and a fixed conditioning task. Written as mp4 (PyAV, H.264) under
`<log_dir>/samples/step_XXXXXXX/` and, with a TensorBoard logger, as frame strips (one image per
sample, frames side by side) under `samples/<i>`.

    callbacks:
      - class_path: lightning_modules.callbacks.SampleVideos
        init_args: {every_n_steps: 500, num_samples: 4, task: predict, given_frames: 2}

Masked tasks (predict / interpolate / i2v) take their given frames from the first training batch
seen (cached once and kept in checkpoints, so every sampling round continues the same clips).
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
from lightning.pytorch.utilities import rank_zero_only

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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._reference is None:
            if "videos" in batch:  # packed: the clips that share the first clip's shape
                first = batch["videos"][0].shape
                clips = [v for v in batch["videos"] if v.shape == first]
                self._reference = torch.stack(clips)[: self.num_samples].detach().cpu()
            else:
                self._reference = batch["video"][: self.num_samples].detach().cpu()
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
        """One sampling round; every rank must call it (the log dir is agreed on collectively),
        rank 0 generates and writes."""
        root = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "samples")
        return self._sample(trainer, pl_module, root)

    @rank_zero_only
    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule, root: Path) -> list[Path]:
        from lightning_modules.sample import task_mask

        ref = self._reference
        t, h, w = (s if s is not None else d for s, d in zip(self.shape, ref.shape[2:]))
        n = self.num_samples
        given = mask = None
        if self.task != "uncond":
            reps = -(-n // ref.shape[0])
            given = ref.repeat(reps, 1, 1, 1, 1)[:n]
            if tuple(given.shape[2:]) != (t, h, w):
                raise ValueError(
                    f"task={self.task!r} continues training clips of shape {tuple(ref.shape[2:])}; "
                    f"leave num_frames/height/width unset or equal to it (got {(t, h, w)})"
                )
            mask = task_mask(self.task, t, h, w, k=self.given_frames)
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
        step_dir = root / f"step_{trainer.global_step:07d}"
        paths = [
            write_mp4(step_dir / f"{self.task}_{i:02d}{'_ema' if ema else ''}.mp4", v, fps=self.fps)
            for i, v in enumerate(videos)
        ]
        self.written.extend(paths)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for i, v in enumerate(videos):
                    strip = rearrange((v.clamp(-1, 1) + 1) / 2, "c t h w -> c h (t w)")  # frames side by side
                    logger.experiment.add_image(f"samples/{self.task}_{i}", strip, trainer.global_step)
        return paths
