"""One sample: a *plan* (json, caption, label, target shape, frame indices, crop and flip; no video
decode), then `realize` (decord decodes only those frames, at the cover size; crop; flip).

Plans are cheap, so everything that decides batches works on plans: bucket batching and packing
group plans and only the grouped ones are decoded, and a resumed epoch re-plans the batches it
already trained on without decoding them.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import torch

from curation.schema import EMB, JSON, LATENT, MP4, TXT
from datamodules.buckets import key_rng
from datamodules.decode import IMAGE_FIELDS, decode_image, decode_video, probe_video
from datamodules.options import COUNTERS, C, Options, bucket_rng, draws_image, make_buckets
from datamodules.sampling import frame_indices, max_frames, sampling_step
from datamodules.transforms import LatentMappingError, cover_size, crop_offsets, latent_view, to_tensor

log = logging.getLogger(__name__)


class Planner:
    """Plans and realizes the samples of one split for one worker; counts what it drops."""

    def __init__(self, opts: Options, *, train: bool, image_shards: bool, counters: torch.Tensor):
        self.o, self.train, self.image_shards = opts, train, image_shards
        self.counters = counters  # (num_workers, len(COUNTERS)) int64, shared memory
        self.grid = opts.grid
        self.buckets = make_buckets(opts, self.grid) if opts.batching == "bucket" else None
        self.failures = 0  # decode failures in a row (a run of them means broken shards)

    def count(self, wid: int, name: str, n: int = 1) -> None:
        self.counters[wid, C[name]] += n

    def stats(self, wid: int) -> dict:
        return dict(zip(COUNTERS, self.counters[wid].tolist()))

    # ---- plan: no video decode -------------------------------------------------------------------
    def prepare(self, raw: dict, *, wid: int, epoch: int, pas: int) -> dict | None:
        """A plan for one raw webdataset sample, or None (counted) when it is refused."""
        o, train = self.o, self.train
        key = raw.get("__key__", "")
        try:
            meta = json.loads(raw[JSON]) if JSON in raw else {}
            meta.setdefault("key", key)
            meta["__url__"] = raw.get("__url__", "")
            if train and meta.get("split", "train") != "train":
                self.count(wid, "heldout")
                return None
            caption = raw[TXT].decode("utf-8", "replace") if TXT in raw else str(meta.get("caption", ""))
            label = int(raw["cls"].decode()) if "cls" in raw else int(meta.get("label", -1))
            rng = key_rng(key, o.seed, epoch, pas) if train else None
            image_field = next((f for f in IMAGE_FIELDS if f in raw), None)
            if MP4 in raw:
                plan = self._plan_video(raw[MP4], meta, rng, wid=wid)
            elif image_field:
                plan = self._plan_image(raw[image_field], meta, rng, wid=wid)
            else:
                raise ValueError(
                    f"no {MP4} or image field (has {sorted(k for k in raw if not k.startswith('__'))})"
                )
        except Exception as exn:  # noqa: BLE001 - a bad sample costs one sample, never the run
            self.count(wid, "corrupt")
            log.warning("sample %s (%s): %r, skipped", key, raw.get("__url__"), exn)
            return None
        if plan is None:
            return None
        plan.update(caption=caption, label=label, meta=meta)
        if o.load_latents and LATENT in raw:
            plan["latent_bytes"] = raw[LATENT]
        if EMB in raw:
            meta["has_emb"] = True
        return plan

    def shape(self, h: int, w: int, n: int, step: float, *, image: bool, rng, wid: int):
        """(Bucket or None, T, H, W) for a clip of native (n, h, w) frames; None when refused."""
        if self.buckets is not None:
            b = self.buckets.assign(
                height=h, width=w, num_source=n, step=step, image=image, rng=bucket_rng(rng)
            )
            if b is None:
                self.count(wid, "no_bucket")
                return None
            return b, b.num_frames, b.height, b.width
        t = 1 if image else min(self.o.max_frames or self.o.num_frames, max_frames(n, step))
        if t < self.o.min_frames and not image:
            self.count(wid, "short")
            return None
        return (None, *self.grid.fit(t, h, w, max_tokens=self.o.sample_token_cap))

    def _plan(self, load, h, w, shape, rng, meta: dict, fps: float, idx: list[int]) -> dict:
        bucket, t, hh, ww = shape
        rh, rw = cover_size(h, w, hh, ww)
        top, left = crop_offsets(rh, rw, hh, ww, rng)
        if self.o.load_latents:  # crops on the latent grid, so that latents can follow them
            _, dh, dw = self.o.latent_downsample
            top, left = top - top % dh, left - left % dw
        flip = bool(self.o.hflip and rng is not None and rng.random() < 0.5)
        meta.update(frame_indices=idx, crop=[top, left, hh, ww], flip=flip)
        tokens = self.grid.tokens(t, hh, ww) if self.o.batching == "pack" else 0
        return {"load": lambda: load((rh, rw)), "fps": fps, "bucket": bucket, "tokens": tokens,
                "native": (h, w), "resized": (rh, rw)}  # fmt: skip

    def _plan_video(self, data: bytes, meta: dict, rng, *, wid: int) -> dict | None:
        o = self.o
        if all(k in meta for k in ("num_frames", "fps", "height", "width")):
            n, fps = int(meta["num_frames"]), float(meta["fps"])
            h, w = int(meta["height"]), int(meta["width"])
        else:
            info = probe_video(data)
            n, fps, h, w = info.num_frames, info.fps, info.height, info.width
        step = sampling_step(fps, frame_stride=o.frame_stride, target_fps=o.target_fps)
        as_image = draws_image(o, rng, image_shards=self.image_shards)
        shape = self.shape(h, w, n, step, image=as_image, rng=rng, wid=wid)
        if shape is None:
            return None
        if as_image:  # a frame drawn from the video (Latte/VDM joint training)
            idx, eff_fps = [int(rng.integers(0, n)) if rng is not None else n // 2], 0.0
        else:
            got = frame_indices(n, fps, num_frames=shape[1], step=step, rng=rng, short_clips=o.short_clips)
            if got is None:
                self.count(wid, "short")
                return None
            idx, eff_fps = got
        return self._plan(
            lambda size: decode_video(data, idx, size=size), h, w, shape, rng, meta, eff_fps, idx
        )

    def _plan_image(self, data: bytes, meta: dict, rng, *, wid: int) -> dict | None:
        frames = decode_image(data)  # (1, H, W, 3): images are small, decoded here to learn their size
        h, w = frames.shape[1:3]
        shape = self.shape(h, w, 1, 1.0, image=True, rng=rng, wid=wid)
        if shape is None:
            return None

        def load(size):
            if size == (h, w):
                return frames
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (1, 3, H, W)
            x = torch.nn.functional.interpolate(
                x, size=size, mode="bilinear", antialias=True, align_corners=False
            )
            return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (1, rh, rw, 3)

        return self._plan(load, h, w, shape, rng, meta, 0.0, [0])

    # ---- realize: decode ---------------------------------------------------------------------------
    def realize(self, plan: dict, *, wid: int) -> dict | None:
        """Decode a plan into a sample ({"video" (3, T, H, W) uint8, ...}); None (counted) if it fails.
        Raises after a long run of failures in a row: the shards look broken, spinning would hide it."""
        meta = plan["meta"]
        try:
            frames = plan["load"]()  # (T, >=rh, >=rw, 3) uint8
            top, left, hh, ww = meta["crop"]
            video = to_tensor(frames, top=top, left=left, height=hh, width=ww, flip=meta["flip"])
            sample = {k: plan[k] for k in ("caption", "label", "fps", "meta", "bucket", "tokens")}
            sample["video"] = video  # (3, T, H, W) uint8 view; collate gathers it
            if "latent_bytes" in plan:  # the latent of exactly these frames, crop and flip
                sample["latent"] = latent_view(
                    torch.from_numpy(np.load(io.BytesIO(plan["latent_bytes"]))).float(),
                    frame_indices=meta["frame_indices"],
                    crop=meta["crop"],
                    flip=meta["flip"],
                    native=plan["native"],
                    resized=plan["resized"],
                    factors=tuple(self.o.latent_downsample),
                    key=meta.get("key", ""),
                )
        except LatentMappingError:
            raise  # a configuration error: skipping every sample would hide it
        except Exception as exn:  # noqa: BLE001 - a bad sample costs one sample, never the run
            self.count(wid, "corrupt")
            log.warning("sample %s (%s): %r, skipped", meta.get("key"), meta.get("__url__"), exn)
            self.failures += 1
            if self.failures > 4 * self.o.pack_window + 1000:
                raise RuntimeError(
                    f"{self.failures} samples in a row failed to decode (counters {self.stats(wid)}): "
                    "the training shards look broken"
                ) from exn
            return None
        self.failures = 0
        self.count(wid, "samples")
        self.count(wid, "images", int(video.shape[1] == 1))
        return sample
