"""FVD end to end: select clips, stream them through the detector, merge statistics, compare.

Shared by the standalone evaluator and the training callback. Work is split across DDP ranks
by clip index (rank r takes clips r, r + world, ...) and the float64 statistics are merged
exactly, so the result does not depend on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from .cache import cache_key, load_stats, save_stats
from .detectors import FVDDetector
from .frechet import GaussianStats, stats_distance
from .i3d import NUM_CLASSES
from .protocols import Protocol, check_clip_length, to_uint8
from .videos import iter_clip_batches, open_sources, select_clips


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def accumulate(
    detector: FVDDetector,
    batches: Iterable[torch.Tensor],
    *,
    total: int | None = None,
    desc: str = "features",
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
) -> GaussianStats:
    """Stream uint8 (B, 3, T, H, W) batches through the detector into float64 statistics.

    `extra(batch)` sees every batch too (per-frame FID/IS share the decoded clips).
    """
    stats = GaussianStats(NUM_CLASSES)
    rank, _ = dist_info()
    with tqdm(total=total, desc=desc, unit="clip", disable=not progress or rank != 0) as bar:
        for batch in batches:
            check_clip_length(batch, detector.protocol, desc)
            stats.update(detector(batch))
            if extra is not None:
                extra(batch)
            bar.update(len(batch))
    return stats


def real_statistics(
    spec: str,
    protocol: Protocol,
    detector: FVDDetector,
    *,
    split: str = "val",
    batch_size: int = 8,
    cache: str | None = None,
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
) -> tuple[GaussianStats, dict]:
    """Statistics of the protocol's real clips from `spec` (shards, video folder or frame folders).

    With `cache`, reuse the .npz when it was computed for the same clips, protocol and detector
    (a different one is an error); otherwise compute and write it. All ranks return the merged stats.
    """
    kind, sources = open_sources(spec, split=split)
    clips, info = select_clips(
        sources,
        count=protocol.num_real,
        num_frames=protocol.num_frames,
        stride=protocol.stride,
        selection=protocol.real_selection,
        clip_start=protocol.clip_start,
        seed=protocol.seed,
        short="discard",
    )
    info.update(source=str(spec), kind=kind, split=split if kind == "shards" else None)
    key = cache_key(
        real_clips_sha256=info["clips_sha256"], protocol=protocol.as_dict(), detector_sha256=detector.sha256
    )
    if cache is not None and extra is None:
        cached = load_stats(cache, key)
        if cached is not None:
            info.update(cache=str(cache), cache_hit=True, count=cached.count)
            return cached, info
    rank, _ = dist_info()
    stats = _rank_share_stats(clips, detector, batch_size, "real clips", progress, extra)
    if cache is not None and rank == 0:
        save_stats(cache, stats, key)
    info.update(cache=str(cache) if cache else None, cache_hit=False, count=stats.count)
    return stats, info


def _rank_share_stats(clips, detector, batch_size, desc, progress, extra) -> GaussianStats:
    """Each rank featurises every world-th clip; the statistics are merged over ranks."""
    rank, world = dist_info()
    mine = clips[rank::world]
    batches = iter_clip_batches(mine, batch_size)
    return accumulate(
        detector, batches, total=len(mine), desc=desc, progress=progress, extra=extra
    ).all_gather()


def fake_statistics_from_folder(
    spec: str,
    protocol: Protocol,
    detector: FVDDetector,
    *,
    batch_size: int = 8,
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
) -> tuple[GaussianStats, dict]:
    """Statistics of the first `num_fake` generated videos (sorted names), first `num_frames` frames.

    Fakes are never subsampled (a generator produces frames at its training rate) and a fake
    shorter than `num_frames` is an error, not a silent skip.
    """
    kind, sources = open_sources(spec)
    clips, info = select_clips(
        sources,
        count=protocol.num_fake,
        num_frames=protocol.num_frames,
        stride=1,
        selection="first",
        clip_start="first",
        seed=0,
        short="error",
        what="fake",
    )
    stats = _rank_share_stats(clips, detector, batch_size, "fake clips", progress, extra)
    info.update(source=str(spec), kind=kind, count=stats.count)
    return stats, info


def fake_statistics_from_generator(
    generate: Callable[..., torch.Tensor],
    protocol: Protocol,
    detector: FVDDetector,
    *,
    height: int,
    width: int,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
    **generate_kwargs,
) -> tuple[GaussianStats, dict]:
    """Statistics of `num_fake` samples of `generate(n, num_frames=, height=, width=, seed=, batch_size=)`.

    Each rank generates its share (rank r: batches r, r + world, ...); sample i is seeded by
    (seed, i) (`generate(..., first_index=start)`), so the samples are the same whatever the number
    of ranks and the batch size. Output in [-1, 1] is converted to uint8 the StyleGAN-V way before
    the detector.
    """
    rank, world = dist_info()
    n = protocol.num_fake
    starts = list(range(0, n, batch_size))[rank::world]

    def batches():
        for start in starts:
            b = min(batch_size, n - start)
            video = generate(
                b,
                num_frames=protocol.num_frames,
                height=height,
                width=width,
                seed=seed,
                first_index=start,
                batch_size=b,
                **generate_kwargs,
            )  # (b, 3, T, H, W) in [-1, 1]
            yield to_uint8(video)

    total = sum(min(batch_size, n - s) for s in starts)
    stats = accumulate(
        detector, batches(), total=total, desc="generated clips", progress=progress, extra=extra
    ).all_gather()
    info = {
        "kind": "generator",
        "count": stats.count,
        "seed": seed,
        "height": height,
        "width": width,
        "batch_size": batch_size,
        **{k: v for k, v in generate_kwargs.items() if v is not None},
    }
    return stats, info


def fvd_from_stats(real: GaussianStats, fake: GaussianStats, protocol: Protocol) -> float:
    return stats_distance(real, fake, divisor=protocol.cov_divisor, sqrtm=protocol.sqrtm)
