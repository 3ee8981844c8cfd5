"""FVD (and FID) end to end: select clips, stream them through each feature set, merge statistics.

A feature set is anything with `name`, `dim`, `sha256`, `options()` and `features(videos, side)`:
the I3D `FVDDetector` (FVD) and the per-frame `FrameInception` (FID). Only the sets a metric needs
are passed in, and each has its own real-statistics cache file.

Shared by the standalone evaluator and the training callback. Work is split across DDP ranks
by clip index (rank r takes clips r, r + world, ...) and the float64 statistics are merged
exactly, so the result does not depend on the number of ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from .cache import cache_key, cache_path, load_stats, save_stats
from .frechet import GaussianStats, stats_distance
from .protocols import Protocol, check_clip_length, to_uint8
from .videos import (
    Clip,
    VideoSource,
    iter_clip_batches,
    min_video_frames,
    open_sources,
    resize_center_crop,
    select_clips,
)


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def accumulate(
    feature_sets: dict,
    batches: Iterable[torch.Tensor],
    *,
    protocol: Protocol,
    side: str = "real",
    total: int | None = None,
    desc: str = "features",
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
    sizes: set | None = None,
) -> dict[str, GaussianStats]:
    """Stream uint8 (B, 3, T, H, W) batches through each feature set into float64 statistics.

    `feature_sets`: name -> object with `dim` and `features(batch, side) -> (N, dim)` (the I3D
    `FVDDetector`, the per-frame `FrameInception`). `extra(batch)` sees every batch too (fake-only
    consumers: Inception Score, video IS). `sizes` collects the (H, W) of every batch.
    """
    feature_sets, single = _as_sets(feature_sets)
    stats = {name: GaussianStats(fs.dim) for name, fs in feature_sets.items()}
    rank, _ = dist_info()
    with tqdm(total=total, desc=desc, unit="clip", disable=not progress or rank != 0) as bar:
        for batch in batches:
            check_clip_length(batch, protocol, desc)
            if sizes is not None:
                sizes.add(tuple(batch.shape[-2:]))
            for name, fs in feature_sets.items():
                stats[name].update(fs.features(batch, side))
            if extra is not None:
                extra(batch)
            bar.update(len(batch))
    return stats["i3d"] if single else stats


def _gather(stats: dict[str, GaussianStats]) -> dict[str, GaussianStats]:
    return {name: s.all_gather() for name, s in stats.items()}


class _Callable:
    """A bare detector `f(videos) -> (B, 400)` as a feature set."""

    def __init__(self, detector):
        self.detector, self.dim = detector, getattr(detector, "dim", 400)
        self.sha256 = getattr(detector, "sha256", "")

    def features(self, videos, side="real"):
        return self.detector(videos)

    def options(self):
        return {"name": "i3d"}


def _as_sets(feature_sets) -> tuple[dict, bool]:
    """(name -> feature set, whether a single detector was passed: then a single stats is returned)."""
    if isinstance(feature_sets, dict):
        return feature_sets, False
    single = feature_sets if hasattr(feature_sets, "features") else _Callable(feature_sets)
    return {"i3d": single}, True


def select_real_clips(
    spec: str | list[VideoSource],
    protocol: Protocol,
    *,
    split: str = "val",
    label_field: str = "label",
    opened: tuple[str, list[VideoSource]] | None = None,
) -> tuple[list[Clip], dict]:
    """The protocol's real clips from `spec` (a path, or already opened sources), without decoding.

    `opened`: the (kind, sources) of `open_sources(spec, ...)` when the caller already has them.
    """
    if opened is not None:
        kind, sources = opened
    elif isinstance(spec, str):
        kind, sources = open_sources(spec, split=split, label_field=label_field)
    else:
        kind, sources = "sources", spec
    clips, info = select_clips(
        sources,
        count=protocol.num_real,
        num_frames=protocol.num_frames,
        stride=protocol.stride,
        selection=protocol.real_selection,
        clip_start=protocol.clip_start,
        seed=protocol.seed,
        short="discard",
        min_length=protocol.min_length,
        when_fewer=protocol.when_fewer,
    )
    info.update(
        source=str(spec) if kind != "sources" else None, kind=kind, split=split if kind == "shards" else None
    )
    return clips, info


def usable_real_sources(sources: list[VideoSource], protocol: Protocol) -> list[VideoSource]:
    """Every video of the real set long enough for the protocol (what the references' dataset holds),
    in key order: the pool `--labels real` draws the fakes' label histogram from."""
    need = min_video_frames(protocol.num_frames, protocol.stride, protocol.min_length)
    return sorted((s for s in sources if s.num_frames >= need), key=lambda s: s.key)


def real_transform(protocol: Protocol, size: tuple[int, int] | None):
    """The per-clip transform of real frames: None (native size) or resize + centre crop to `size`."""
    if protocol.real_resize == "native":
        return None
    if size is None:
        raise ValueError(
            f"real_resize='train' ({protocol.name}) needs the fakes' (training) size: pass --height/--width"
        )
    return functools.partial(resize_center_crop, size=tuple(size), conversion=protocol.uint8_conversion)


def real_statistics(
    spec: str | tuple[list[Clip], dict],
    protocol: Protocol,
    feature_sets: dict,
    *,
    split: str = "val",
    batch_size: int = 8,
    cache: str | None = None,
    progress: bool = True,
    resize_to: tuple[int, int] | None = None,
) -> tuple[dict[str, GaussianStats], dict]:
    """Statistics of the protocol's real clips for each feature set (name -> `features`).

    `spec`: shards / video folder / frame folders, or the (clips, info) of `select_real_clips`.
    With `cache` (a base path; one file per feature set, `cache_path`), a feature set whose file
    was computed for the same clips, protocol, transform and detector file is read back (a
    different one is an error); the others are computed (decoding the clips once) and written.
    `resize_to`: the fakes' (H, W) when the protocol resizes real clips (`real_resize="train"`).
    All ranks return the merged stats.
    """
    feature_sets, single = _as_sets(feature_sets)
    clips, info = select_real_clips(spec, protocol, split=split) if isinstance(spec, str) else spec
    info = dict(info)
    transform = real_transform(protocol, resize_to)
    transform_key = {
        "real_resize": protocol.real_resize,
        "size": list(resize_to) if transform is not None else None,
        "conversion": protocol.uint8_conversion if transform is not None else None,
    }
    stats: dict[str, GaussianStats] = {}
    keys, hits = {}, {}
    for name, fs in feature_sets.items():
        keys[name] = cache_key(
            real_clips_sha256=info["clips_sha256"],
            protocol=protocol.as_dict(),
            detector_sha256=fs.sha256,
            features={**fs.options(), **transform_key},
        )
        cached = load_stats(cache_path(cache, name), keys[name]) if cache is not None else None
        hits[name] = cached is not None
        if cached is not None:
            stats[name] = cached
    todo = {name: fs for name, fs in feature_sets.items() if name not in stats}
    sizes: set = set()
    if todo:
        rank, world = dist_info()
        mine = clips[rank::world]  # each rank featurises every world-th clip; merged over ranks
        computed = _gather(
            accumulate(
                todo,
                iter_clip_batches(mine, batch_size, transform=transform),
                protocol=protocol,
                side="real",
                total=len(mine),
                desc="real clips",
                progress=progress,
                sizes=sizes,
            )
        )
        for name, st in computed.items():
            stats[name] = st
            if cache is not None and rank == 0:
                save_stats(cache_path(cache, name), st, keys[name])
    sizes_from = "every clip"
    if not sizes and clips:  # all read from the cache: the size of the first clip stands for the set
        first = clips[0].source.load(clips[0].indices[:1])
        sizes = {tuple((transform(first) if transform else first).shape[1:3])}
        sizes_from = "first clip (statistics from the cache)"
    info.update(
        sizes_from=sizes_from,
        cache={name: str(cache_path(cache, name)) for name in feature_sets} if cache else None,
        cache_hit=hits,
        count=len(clips),
        feature_counts={name: st.count for name, st in stats.items()},  # clips for i3d, frames for inception
        sizes=sorted(list(s) for s in sizes) or None,
        resize=transform_key,
    )
    return (stats["i3d"] if single else stats), info


def fake_statistics_from_folder(
    spec: str,
    protocol: Protocol,
    feature_sets: dict,
    *,
    batch_size: int = 8,
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
) -> tuple[dict[str, GaussianStats], dict]:
    """Statistics of `num_fake` generated videos, the first `num_frames` frames of each.

    Which videos: the first in sorted names, or a seeded random subset (`fake_selection`); a shard
    folder is read whole (all its tars, whatever their split prefix). Fakes
    are never subsampled (a generator produces frames at its training rate) and a fake shorter
    than `num_frames` is an error, not a silent skip.
    """
    feature_sets, single = _as_sets(feature_sets)
    kind, sources = open_sources(spec, split=None)  # every tar of a shard folder: fakes have no split
    clips, info = select_clips(
        sources,
        count=protocol.num_fake,
        num_frames=protocol.num_frames,
        stride=1,
        selection=protocol.fake_selection,
        clip_start="first",
        seed=protocol.seed,
        short="error",
        when_fewer=protocol.when_fewer,
        what="fake",
    )
    rank, world = dist_info()
    mine = clips[rank::world]
    sizes: set = set()
    stats = _gather(
        accumulate(
            feature_sets,
            iter_clip_batches(mine, batch_size),
            protocol=protocol,
            side="fake",
            total=len(mine),
            desc="fake clips",
            progress=progress,
            extra=extra,
            sizes=sizes,
        )
    )
    info.update(source=str(spec), kind=kind, count=len(clips), sizes=sorted(list(s) for s in sizes) or None)
    return (stats["i3d"] if single else stats), info


def fake_statistics_from_generator(
    generate: Callable[..., torch.Tensor],
    protocol: Protocol,
    feature_sets: dict,
    *,
    height: int,
    width: int,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    extra: Callable[[torch.Tensor], None] | None = None,
    **generate_kwargs,
) -> tuple[dict[str, GaussianStats], dict]:
    """Statistics of `num_fake` samples of `generate(n, num_frames=, height=, width=, seed=, batch_size=)`.

    Each rank generates its share (rank r: batches r, r + world, ...); sample i is seeded by
    (seed, i) (`generate(..., first_index=start)`), so the samples are the same whatever the number
    of ranks and the batch size. Output in [-1, 1] is converted to uint8 the protocol's way
    (`uint8_conversion`) before the detectors.
    """
    feature_sets, single = _as_sets(feature_sets)
    conversion = getattr(protocol, "uint8_conversion", "round")
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
            yield to_uint8(video, conversion)

    total = sum(min(batch_size, n - s) for s in starts)
    stats = _gather(
        accumulate(
            feature_sets,
            batches(),
            protocol=protocol,
            side="fake",
            total=total,
            desc="generated clips",
            progress=progress,
            extra=extra,
        )
    )
    info = {
        "kind": "generator",
        "count": n,
        "seed": seed,
        "seeds": f"sample i is seeded by ({seed}, i), i = 0..{n - 1}, whatever the batch size and ranks",
        "height": height,
        "width": width,
        "sizes": [[height, width]],
        "batch_size": batch_size,
        "conversion": conversion,
        **{k: v for k, v in generate_kwargs.items() if v is not None},
    }
    return (stats["i3d"] if single else stats), info


def fvd_from_stats(real: GaussianStats, fake: GaussianStats, protocol: Protocol) -> float:
    return stats_distance(real, fake, divisor=protocol.cov_divisor, sqrtm=protocol.sqrtm)
