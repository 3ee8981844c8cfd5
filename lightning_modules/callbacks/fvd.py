"""FVD (and optional per-frame FID / IS, video IS) during training, on EMA weights.

Every `every_n_steps` optimizer steps and once at the end of training the callback generates
`num_fake` clips with `pl_module.generate(...)` inside `use_ema(trainer, pl_module)`, streams them
through the protocol's detector and logs `val/fvd` (`val/fvd_uncalibrated` with random stand-in
detectors). Real statistics are computed once (from shards / a video folder, optionally cached to
an .npz, or from the datamodule's val loader) and kept. Under DDP every rank generates its share
and the float64 statistics are merged exactly; every rank logs the same value. A val loader split
by rank is gathered too (features merged, labels / captions / count shared by every rank), so the
real statistic does not depend on the number of GPUs.

Cost is bounded by `num_fake`, `num_real`, `batch_size`, `steps` and `every_n_steps`.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_modules.metrics.conditioning import conditioned_generate, model_conditioning
from lightning_modules.metrics.conditioning import resolve as resolve_conditioning
from lightning_modules.metrics.detectors import FVDDetector, load_fvd_detector, random_detector_dir
from lightning_modules.metrics.frechet import GaussianStats
from lightning_modules.metrics.fvd import (
    accumulate,
    dist_info,
    fake_statistics_from_generator,
    fvd_from_stats,
    real_statistics,
    select_real_clips,
    usable_real_sources,
)
from lightning_modules.metrics.protocols import get_protocol, to_uint8
from lightning_modules.metrics.videos import open_sources


def _gather_objects(obj) -> list:
    """`obj` of every rank, in rank order (`[obj]` without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class FVDCallback(Callback):
    """Args:
    real: held-out set (shards folder/.tar/glob, video folder, frame folders) or "val_dataloader"
        (clips of the datamodule's validation loader, first `num_real` in loader order; under DDP the
        ranks' shares are gathered, so the statistic and the label histogram do not depend on the
        number of GPUs: see `_real_from_loader`).
    height, width: resolution to generate at (the training resolution).
    every_n_steps: evaluate every N optimizer steps (0 = only at the end); at_train_end: also at the end.
    protocol: preset name; num_real / num_fake / num_frames / stride override it (a custom protocol).
    batch_size, seed, steps, cfg_scale: passed to `generate` (seed: same samples every time).
    labels: class labels of the fakes: "real" (the label histogram of every usable video of the real
        set, the whole split as StyleGAN-V; with "val_dataloader" the taken loader clips'), "selected"
        (the selected real clips' histogram), "uniform", or a list
        (cycled); None samples the null class, which for a class-conditional model is warned about
        and recorded (`history[i]["conditioning"]`).
    prompts: "captions" (the real clips' captions), a text file (one per line) or a list, cycled.
    metrics: subset of ("fvd", "fid", "is"); only the detectors they need are loaded.
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
        labels: list[int] | str | None = None,
        prompts: list[str] | str | None = None,
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
        self.batch_size, self.seed, self.steps, self.cfg_scale = batch_size, seed, steps, cfg_scale
        self.labels, self.prompts = labels, prompts
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
        self._real_stats: dict[str, GaussianStats] | None = None
        self._real_labels: list | None = None
        self._real_captions: list | None = None
        self._real_count: int | None = None
        self._label_pool: tuple = (None, None, None)  # labels, keys, description: labels="real"
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
        if "fvd" in self.metrics and self.detector is None:
            self.detector = load_fvd_detector(
                self.protocol,
                i3d_torchscript=self.weights["i3d_torchscript"],
                i3d_state_dict=self.weights["i3d_state_dict"],
                allow_random=self.allow_random,
                device=pl_module.device,
                # the stand-in evaluate uses: the same file (sha256) after a restart, so real_cache is reused
                random_dir=random_detector_dir(),
            )
        if ("fid" in self.metrics or "is" in self.metrics) and self._frame_metrics is None:
            from lightning_modules.metrics.fid_is import FrameInception

            self._frame_metrics = FrameInception(
                weights=self.weights["inception_weights"],
                allow_random=self.allow_random,
                fid="fid" in self.metrics,
                inception_score="is" in self.metrics,
                device=pl_module.device,
            )

    def _feature_sets(self) -> dict:
        sets = {}
        if "fvd" in self.metrics:
            sets["i3d"] = self.detector
        if "fid" in self.metrics:
            sets["inception"] = self._frame_metrics
        return sets

    def _real_from_loader(self, trainer: L.Trainer) -> dict[str, GaussianStats]:
        """The first `num_real` clips of the val loader, as uint8, the first `span` frames of each.

        The val loader decides where its clips start (their first frames here, whatever the
        protocol's `clip_start`). Under DDP the statistic must not depend on the number of GPUs, and
        every rank must sample from the same label histogram:

        * whether the datamodule's val loader is split by rank is detected by comparing a
          fingerprint of each rank's first batch (equal everywhere: not split);
        * split: rank r's i-th clip is clip `i * world + r` of the unsplit loader (the interleaving
          of `DistributedSampler`), taken when that position is below `num_real`, so the ranks
          together take the first `num_real` clips whatever the world size; not split: rank 0 takes
          them all;
        * each rank's features are merged exactly into one statistic (`GaussianStats.all_gather`),
          and the taken clips' labels / captions are gathered to every rank in loader order
          (`all_gather_object`), so `labels="real"` / `prompts="captions"` and the clip count (the
          "fewer than 2 clips" error included) are the same on every rank.
        """
        rank, world = dist_info()
        want = self.protocol.num_real
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if loader is None:
            raise ValueError("FVDCallback(real='val_dataloader') needs a datamodule with a val_dataloader")
        span = self.protocol.span
        batches = iter(loader)
        first = next(batches, None)
        if first is not None and "video" not in first:
            raise ValueError("real='val_dataloader' needs bucketed batches with a 'video' tensor")
        split = False
        if world > 1:
            mark = None
            if first is not None:
                mark = hashlib.sha256(first["video"].detach().cpu().float().numpy().tobytes()).hexdigest()
            marks = _gather_objects(mark)
            split = len(set(marks)) > 1
        taken: list[
            tuple[int, int | None, str | None]
        ] = []  # (position in the unsplit loader, label, caption)

        def position(i: int) -> int | None:
            if split:
                return i * world + rank
            return i if rank == 0 else None

        def clips():
            local = 0
            for batch in itertools.chain([first] if first is not None else [], batches):
                if "video" not in batch:
                    raise ValueError("real='val_dataloader' needs bucketed batches with a 'video' tensor")
                video = batch["video"]  # (B, 3, T, H, W) in [-1, 1]
                if video.shape[2] < span:
                    raise ValueError(
                        f"val clips have {video.shape[2]} frames but the FVD protocol needs {span} "
                        f"({self.protocol.num_frames} frames, stride {self.protocol.stride})"
                    )
                lab, cap = batch.get("label"), batch.get("caption")
                keep = []
                for j in range(len(video)):
                    pos = position(local + j)
                    if pos is not None and pos < want:
                        keep.append(j)
                        y = int(lab[j]) if lab is not None else None
                        taken.append(
                            (pos, None if y is None or y < 0 else y, cap[j] if cap is not None else None)
                        )
                local += len(video)
                if keep:
                    yield to_uint8(
                        video[keep][:, :, : span : self.protocol.stride], self.protocol.uint8_conversion
                    )
                nxt = position(local)
                if nxt is None or nxt >= want:
                    return

        sets = self._feature_sets()
        if sets:
            stats = accumulate(
                sets, clips(), protocol=self.protocol, side="real", total=want, desc="real clips (val loader)"
            )
        else:
            stats = {}
            for _ in clips():  # conditions only (labels, captions)
                pass
        every = sorted(item for part in _gather_objects(taken) for item in part)
        self._real_labels = [y for _, y, _ in every] or None
        self._real_captions = [c for _, _, c in every] or None
        self._real_count = len(every)
        self._label_pool = (self._real_labels, None, f"the {len(every)} val-loader clips (every rank's)")
        return {name: st.all_gather() for name, st in stats.items()}

    def _real(self, trainer: L.Trainer) -> dict[str, GaussianStats]:
        if self._real_stats is None:
            if self.real == "val_dataloader":
                self._real_stats = self._real_from_loader(trainer)
            else:
                opened = open_sources(self.real, split=self.real_split)
                clips, info = select_real_clips(
                    self.real, self.protocol, split=self.real_split, opened=opened
                )
                pool = usable_real_sources(opened[1], self.protocol)  # labels="real": the whole split
                self._label_pool = (
                    [s.label for s in pool],
                    [s.key for s in pool],
                    f"every usable video of {self.real}: {len(pool)} videos",
                )
                self._real_labels = [c.source.label for c in clips]
                self._real_captions = [c.source.caption for c in clips]
                self._real_count = len(clips)
                self._real_stats = {}
                if self._feature_sets():
                    self._real_stats, _ = real_statistics(
                        (clips, info),
                        self.protocol,
                        self._feature_sets(),
                        split=self.real_split,
                        batch_size=self.batch_size,
                        cache=self.real_cache,
                        resize_to=(self.height, self.width),
                    )
            if self._real_count < 2:
                raise ValueError(f"FVD needs at least 2 real clips, got {self._real_count}")
            if self._real_count < self.protocol.num_real:
                rank_zero_warn(
                    f"FVDCallback: only {self._real_count} real clips for the {self.protocol.num_real} of "
                    f"{self.protocol.name}: all were used; the logged value is not the preset's number"
                )
        return self._real_stats

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from lightning_modules.callbacks.ema import use_ema
        from lightning_modules.metrics.fid_is import fid_from_stats

        t0 = time.time()
        self._load(pl_module)
        real = self._real(trainer)
        labels, captions, conditioning = resolve_conditioning(
            model_conditioning(pl_module),
            labels=self.labels,
            prompts=self.prompts,
            n=self.protocol.num_fake,
            seed=self.seed,
            real_labels=self._real_labels,
            real_captions=self._real_captions,
            real_keys=[str(i) for i in range(self._real_count or 0)],
            all_labels=self._label_pool[0],
            all_keys=self._label_pool[1],
            label_source=self._label_pool[2],
        )
        if conditioning.get("unconditional_run_of_conditional_model"):
            rank_zero_warn(f"FVDCallback: {conditioning['warning']}")
        if self._frame_metrics is not None:  # fresh fake side, real statistics kept
            self._frame_metrics.reset_fake()
        extra = (
            self._frame_metrics.update_fake
            if self._frame_metrics is not None and "fid" not in self.metrics
            else None
        )
        gen_kwargs = {
            k: v for k, v in dict(steps=self.steps, cfg_scale=self.cfg_scale).items() if v is not None
        }
        with use_ema(trainer, pl_module):
            fake, _ = fake_statistics_from_generator(
                conditioned_generate(pl_module.generate, labels, captions),
                self.protocol,
                self._feature_sets(),
                height=self.height,
                width=self.width,
                seed=self.seed,
                batch_size=self.batch_size,
                extra=extra,
                **gen_kwargs,
            )
        values = {}
        if "fvd" in self.metrics:
            suffix = "" if self.detector.calibrated else "_uncalibrated"
            values[f"{self.log_prefix}fvd{suffix}"] = fvd_from_stats(real["i3d"], fake["i3d"], self.protocol)
        if self._frame_metrics is not None:
            frame_suffix = "" if self._frame_metrics.calibrated else "_uncalibrated"
            frame_values = {}
            if "fid" in self.metrics:
                frame_values["fid"] = fid_from_stats(real["inception"], fake["inception"])
            if "is" in self.metrics:
                frame_values.update(self._frame_metrics.compute_is())
            values.update({f"{self.log_prefix}{k}{frame_suffix}": v for k, v in frame_values.items()})
        self._log(trainer, values)
        self._last_step = trainer.global_step
        self.history.append(
            {
                "step": trainer.global_step,
                **values,
                "seconds": time.time() - t0,
                # fewer real clips than the preset asks: a custom protocol, named as such
                "protocol": self.protocol.override(
                    num_real=min(self._real_count, self.protocol.num_real)
                ).name,
                "real_clips": self._real_count,
                "conditioning": {
                    k: conditioning[k]
                    for k in (
                        "mode",
                        "label_source",
                        "label_histogram",
                        "unconditional_run_of_conditional_model",
                    )
                },
            }
        )
        calibrated = all(d.calibrated for d in (self.detector, self._frame_metrics) if d is not None)
        tag = "" if calibrated else " [uncalibrated: random-init detector]"
        rank_zero_info(
            f"step {trainer.global_step}: {', '.join(f'{k}={v:.3f}' for k, v in values.items())}{tag} "
            f"({self.history[-1]['protocol']}, {self.protocol.num_fake} fake / {self._real_count} real clips, "
            f"{conditioning['mode']}, {time.time() - t0:.1f}s)"
        )
        return values

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
