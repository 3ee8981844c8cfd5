"""FVD (and optional per-frame FID / IS, video IS) during training, on EMA weights.

Every `every_n_steps` optimizer steps and once at the end of training the callback generates
`num_fake` clips with `pl_module.generate(...)` inside `use_ema(trainer, pl_module)`, streams them
through the protocol's detector and logs `val/fvd` (`val/fvd_uncalibrated` with random stand-in
detectors). Real statistics are computed once (from shards / a video folder, optionally cached to
an .npz, or from the datamodule's val loader) and kept. Under DDP every rank generates its share
and the float64 statistics are merged exactly; every rank logs the same value.

Cost is bounded by `num_fake`, `num_real`, `batch_size`, `steps` and `every_n_steps`.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.metrics.detectors import FVDDetector, load_fvd_detector
from lightning_modules.metrics.frechet import GaussianStats
from lightning_modules.metrics.fvd import (
    accumulate,
    dist_info,
    fake_statistics_from_generator,
    fvd_from_stats,
    real_statistics,
)
from lightning_modules.metrics.i3d import NUM_CLASSES
from lightning_modules.metrics.protocols import get_protocol, to_uint8


class FVDCallback(Callback):
    """Args:
    real: held-out set (shards folder/.tar/glob, video folder, frame folders) or "val_dataloader"
        (clips of the datamodule's validation loader, first `num_real` in loader order).
    height, width: resolution to generate at (the training resolution).
    every_n_steps: evaluate every N optimizer steps (0 = only at the end); at_train_end: also at the end.
    protocol: preset name; num_real / num_fake / num_frames / stride override it (a custom protocol).
    batch_size, seed, steps, cfg_scale, labels: passed to `generate` (seed: same samples every time).
    metrics: subset of ("fvd", "fid", "is").
    i3d_torchscript, i3d_state_dict, inception_weights, c3d_torchscript: local weight files (or env vars).
    allow_random_detector: random-init stand-ins when files are missing (logged as *_uncalibrated).
    real_split, real_cache: shard split to read, optional .npz cache of the real statistics.
    detector: an already loaded `FVDDetector` to use instead of loading one (shared between callbacks).
    """

    def __init__(
        self,
        *,
        real: str = "val_dataloader",
        height: int,
        width: int,
        every_n_steps: int = 5000,
        at_train_end: bool = True,
        protocol: str = "fvd2048_16f",
        num_real: int | None = None,
        num_fake: int | None = None,
        num_frames: int | None = None,
        stride: int | None = None,
        batch_size: int = 8,
        seed: int = 0,
        steps: int | None = None,
        cfg_scale: float | None = None,
        labels: list[int] | None = None,
        metrics: tuple[str, ...] = ("fvd",),
        i3d_torchscript: str | None = None,
        i3d_state_dict: str | None = None,
        inception_weights: str | None = None,
        c3d_torchscript: str | None = None,
        allow_random_detector: bool = False,
        real_split: str = "val",
        real_cache: str | None = None,
        log_prefix: str = "val/",
        detector: FVDDetector | None = None,
    ):
        super().__init__()
        self.protocol = get_protocol(protocol).override(
            num_real=num_real, num_fake=num_fake, num_frames=num_frames, stride=stride
        )
        self.real, self.real_split, self.real_cache = real, real_split, real_cache
        self.height, self.width = height, width
        self.every_n_steps, self.at_train_end = every_n_steps, at_train_end
        self.batch_size, self.seed, self.steps, self.cfg_scale, self.labels = (
            batch_size,
            seed,
            steps,
            cfg_scale,
            labels,
        )
        unknown = set(metrics) - {"fvd", "fid", "is"}
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from fvd, fid, is")
        self.metrics = tuple(metrics)
        self.weights = dict(
            i3d_torchscript=i3d_torchscript,
            i3d_state_dict=i3d_state_dict,
            inception_weights=inception_weights,
            c3d_torchscript=c3d_torchscript,
        )
        self.allow_random = allow_random_detector
        self.log_prefix = log_prefix
        self.detector = detector
        self._real_stats: GaussianStats | None = None
        self._frame_real_done = False
        self._frame_metrics = None
        self._last_step = -1
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_end and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    # ------------------------------------------------------------------ work
    def _load(self, pl_module: L.LightningModule) -> None:
        if self.detector is None:
            self.detector = load_fvd_detector(
                self.protocol,
                i3d_torchscript=self.weights["i3d_torchscript"],
                i3d_state_dict=self.weights["i3d_state_dict"],
                allow_random=self.allow_random,
                device=pl_module.device,
            )
        if ("fid" in self.metrics or "is" in self.metrics) and self._frame_metrics is None:
            from lightning_modules.metrics.fid_is import FrameFIDIS

            self._frame_metrics = FrameFIDIS(
                weights=self.weights["inception_weights"],
                allow_random=self.allow_random,
                fid="fid" in self.metrics,
                inception_score="is" in self.metrics,
                device=pl_module.device,
            )

    def _real_from_loader(self, trainer: L.Trainer) -> GaussianStats:
        """First `num_real` clips of the val loader, as uint8, first frames of each.

        Rank 0 computes them and broadcasts: whether a datamodule's val loader is split by rank
        differs between datamodules, and every rank must compare against the same real set.
        """
        rank, _ = dist_info()
        want = self.protocol.num_real
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if loader is None:
            raise ValueError("FVDCallback(real='val_dataloader') needs a datamodule with a val_dataloader")
        span = self.protocol.span

        def clips():
            taken = 0
            for batch in loader:
                if "video" not in batch:
                    raise ValueError("real='val_dataloader' needs bucketed batches with a 'video' tensor")
                video = batch["video"]  # (B, 3, T, H, W) in [-1, 1]
                if video.shape[2] < span:
                    raise ValueError(
                        f"val clips have {video.shape[2]} frames but the FVD protocol needs {span} "
                        f"({self.protocol.num_frames} frames, stride {self.protocol.stride})"
                    )
                video = video[:, :, : span : self.protocol.stride][: want - taken]
                taken += len(video)
                yield to_uint8(video)
                if taken >= want:
                    return

        if rank != 0:
            return GaussianStats(NUM_CLASSES).broadcast(0)
        stats = accumulate(
            self.detector, clips(), total=want, desc="real clips (val loader)", extra=self._frame_real
        )
        return stats.broadcast(0)

    def _frame_real(self, batch: torch.Tensor) -> None:
        if self._frame_metrics is not None and self._frame_metrics.fid is not None:
            self._frame_metrics.update_real(batch)

    def _real(self, trainer: L.Trainer) -> GaussianStats:
        if self._real_stats is None:
            if self.real == "val_dataloader":
                self._real_stats = self._real_from_loader(trainer)
            else:
                extra = self._frame_real if self._frame_metrics is not None else None
                self._real_stats, _ = real_statistics(
                    self.real,
                    self.protocol,
                    self.detector,
                    split=self.real_split,
                    batch_size=self.batch_size,
                    cache=self.real_cache,
                    extra=extra,
                )
            if self._real_stats.count < 2:
                raise ValueError(f"FVD needs at least 2 real clips, got {self._real_stats.count}")
        return self._real_stats

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from lightning_modules.callbacks.ema import use_ema

        t0 = time.time()
        self._load(pl_module)
        real = self._real(trainer)
        if self._frame_metrics is not None:  # fresh fake side, real frames kept
            if self._frame_metrics.fid is not None:
                self._frame_metrics.fid.reset()
            if self._frame_metrics.inception_score is not None:
                self._frame_metrics.inception_score.reset()
        extra = self._frame_metrics.update_fake if self._frame_metrics is not None else None
        gen_kwargs = {
            k: v for k, v in dict(steps=self.steps, cfg_scale=self.cfg_scale).items() if v is not None
        }
        with use_ema(trainer, pl_module):
            fake, _ = fake_statistics_from_generator(
                self._generate_fn(pl_module),
                self.protocol,
                self.detector,
                height=self.height,
                width=self.width,
                seed=self.seed,
                batch_size=self.batch_size,
                extra=extra,
                **gen_kwargs,
            )
        suffix = "" if self.detector.calibrated else "_uncalibrated"
        values = {}
        if "fvd" in self.metrics:
            values[f"{self.log_prefix}fvd{suffix}"] = fvd_from_stats(real, fake, self.protocol)
        if self._frame_metrics is not None:
            frame_suffix = "" if self._frame_metrics.calibrated else "_uncalibrated"
            values.update(
                {f"{self.log_prefix}{k}{frame_suffix}": v for k, v in self._frame_metrics.compute().items()}
            )
        self._log(trainer, values)
        self._last_step = trainer.global_step
        self.history.append({"step": trainer.global_step, **values, "seconds": time.time() - t0})
        tag = "" if self.detector.calibrated else " [uncalibrated: random-init detector]"
        rank_zero_info(
            f"step {trainer.global_step}: {', '.join(f'{k}={v:.3f}' for k, v in values.items())}{tag} "
            f"({self.protocol.name}, {fake.count} fake / {real.count} real clips, {time.time() - t0:.1f}s)"
        )
        return values

    def _generate_fn(self, pl_module: L.LightningModule):
        if self.labels is None:
            return pl_module.generate
        labels = list(self.labels)

        def generate(n, *, seed, first_index=0, **kwargs):
            # labels cycle over the sample index so every rank/batch split gets the same labels
            return pl_module.generate(
                n,
                seed=seed,
                first_index=first_index,
                labels=[labels[(first_index + i) % len(labels)] for i in range(n)],
                **kwargs,
            )

        return generate

    def _log(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"history": self.history, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self._last_step = state_dict.get("last_step", -1)


__all__ = ["FVDCallback"]
