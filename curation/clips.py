"""Frame-accurate clip extraction: one sequential decode of the source, every clip re-encoded.

Stream copy cannot cut between keyframes, so each clip is re-encoded (PyAV, `extract.codec`,
default libx264 with `crf`/`preset`) from exactly the decoded frames [start, end) of the shared
decode-order index (`analysis.iter_frames`), optionally downscaled (`max_short_side`).

Timing, stated in each clip's json (`timing`):
  source  (extract.fps=0) every frame once, at its true time from the clip's start: a
          variable-frame-rate source gives a variable-frame-rate clip, a constant one a constant one;
  cfr     (extract.fps=F) an explicit resample to F frames per second by timestamps: output frame
          k shows the source frame on screen at k / F seconds into the clip.
Every written file is re-opened and its frames counted (its packets, one per frame, read from the
container, the first one decoded; a file that disagrees is decoded in full for the count): a clip
that does not hold exactly the frames it claims is an error, never a silent sample.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from curation.analysis import iter_frames, rotate
from curation.config import ExtractConfig
from curation.decoded import DecodedFrames


@dataclass
class ClipSpec:
    key: str
    start: int  # source frames [start, end)
    end: int
    path: str  # final mp4 path


@dataclass
class ClipOut:
    key: str
    num_frames: int
    fps: float  # the constant rate (cfr), or frames / duration (source timing)
    width: int
    height: int
    error: str = ""
    duration: float = 0.0  # seconds the clip plays
    timing: str = "source"  # "source" (true frame times) or "cfr" (resampled to extract.fps)
    variable_fps: bool = False  # frame intervals differ (source timing of a variable-rate source)


TIME_BASE = Fraction(1, 90000)  # clip timestamps with source timing (the MPEG clock)


def output_rate(source_rate: Fraction, cfg: ExtractConfig) -> Fraction:
    if cfg.fps and cfg.fps > 0:
        return Fraction(cfg.fps).limit_denominator(1001)
    return source_rate


def output_size(width: int, height: int, cfg: ExtractConfig) -> tuple[int, int]:
    """(w, h) of the clip: downscaled to max_short_side if set, both even (yuv420p)."""
    s = 1.0
    if cfg.max_short_side and min(width, height) > cfg.max_short_side:
        s = cfg.max_short_side / min(width, height)
    even = lambda x: max(2, int(x) // 2 * 2)  # noqa: E731
    return even(round(width * s)), even(round(height * s))


def resample(n: int, source_rate: Fraction, rate: Fraction) -> np.ndarray:
    """Source-frame offsets (0..n-1) of each output frame when resampling n frames to `rate`."""
    if rate == source_rate:
        return np.arange(n)
    m = max(1, math.floor(n * rate / source_rate + Fraction(1, 10**6)))
    return np.minimum((np.arange(m) * source_rate / rate).astype(np.float64).astype(np.int64), n - 1)


def resample_times(times: np.ndarray, rate: Fraction) -> np.ndarray:
    """Source-frame offsets of each output frame when resampling by timestamps to `rate`:
    output frame k shows the last source frame starting at or before k / rate. `times`: the
    clip's frame start times and its end, (n + 1,) seconds."""
    rel = np.asarray(times, np.float64) - times[0]
    m = max(1, math.floor(rel[-1] * float(rate) + 1e-6))
    idx = np.searchsorted(rel[:-1], np.arange(m) / float(rate) + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(rel) - 2)


TICK = 1e-3  # the coarsest common container clock (Matroska / WebM: 1 ms)


def is_variable(times: np.ndarray) -> bool:
    """Frame intervals (of frame start times and the end) differ by more than 2 % and more than one
    clock tick (as probe.py): 29.97 fps on a 1 ms clock (gaps of 33 and 34 ms) is constant."""
    gaps = np.diff(np.asarray(times, np.float64))
    return bool(gaps.size > 1 and gaps.max() - gaps.min() > max(0.02 * np.median(gaps), TICK * 1.001))


# rates a camera records at: an evenly spaced stretch within 0.5 % of one is taken to be at it
COMMON_RATES = tuple(
    Fraction(r)
    for r in (12, 15, "24000/1001", 24, 25, "30000/1001", 30, 48, 50, "60000/1001", 60, 100, 120, 240)
)


def stretch_rate(t: np.ndarray, source_rate: Fraction) -> Fraction:
    """The rate of an evenly spaced stretch of a variable-rate source, not the file's average
    rate (a 50 fps stretch of a 24 fps-average file plays at 50 fps): a common camera rate within
    0.5 % of its mean rate (the clock's rounding, e.g. 33 / 34 ms gaps at 29.97 fps on a 1 ms clock,
    averages out), else 1 / its median frame gap as a fraction with denominator <= 1001."""
    t = np.asarray(t, np.float64)
    gap = float(np.median(np.diff(t)))
    if gap <= 0 or t[-1] <= t[0]:
        return source_rate
    mean = (len(t) - 1) / float(t[-1] - t[0])
    near = min(COMMON_RATES, key=lambda r: abs(float(r) - mean))
    if abs(float(near) - mean) <= 0.005 * mean:
        return near
    return Fraction(1 / gap).limit_denominator(1001)


def _plan_slots(
    spec: ClipSpec, times: np.ndarray, rate: Fraction, cfr: bool, vfr_source: bool = False
) -> tuple[dict, Fraction, Fraction]:
    """({source frame: [output timestamps]}, their time base, the clip's rate) of one clip:
    resampled to `rate` (cfr), each frame once at 1 / rate (source timing, even intervals; for a
    variable-rate source the stretch's own rate), or each frame once at its own time (source
    timing of a variable-rate stretch)."""
    t = times[spec.start : spec.end + 1]
    slots: dict[int, list[int]] = {}
    if cfr:
        for k, off in enumerate(resample_times(t, rate)):
            slots.setdefault(spec.start + int(off), []).append(k)
        return slots, 1 / rate, rate
    if not is_variable(t):
        own = stretch_rate(t, rate) if vfr_source else rate
        return {spec.start + k: [k] for k in range(spec.end - spec.start)}, 1 / own, own
    return (
        {spec.start + k: [round((t[k] - t[0]) / TIME_BASE)] for k in range(spec.end - spec.start)},
        TIME_BASE,
        rate,
    )


class _Writer:
    def __init__(
        self, spec: ClipSpec, rate: Fraction, size: tuple[int, int], cfg: ExtractConfig, time_base: Fraction
    ):
        self.spec, self.size, self.rate, self.time_base = spec, size, rate, time_base
        self.tmp = spec.path + ".tmp"
        self.container = av.open(self.tmp, "w", format="mp4")
        options = {}
        if cfg.codec in ("libx264", "libx265"):
            # an explicit thread count (and mbtree off, see ExtractConfig) make the bytes reproducible
            params = "x264-params" if cfg.codec == "libx264" else "x265-params"
            extra = f":{cfg.x264_params}" if cfg.x264_params else ""
            options = {
                "crf": str(cfg.crf),
                "preset": cfg.preset,
                params: f"threads={max(1, cfg.threads)}{extra}",
            }
        self.stream = self.container.add_stream(cfg.codec, rate=rate, options=options)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.thread_count = cfg.threads
        self.stream.codec_context.time_base = time_base
        self.count = 0
        self.last_pts = 0
        self.scaler = VideoReformatter()

    def write(self, frame: av.VideoFrame, slots: list[int], rotation: int) -> None:
        """Encode a decoded source frame once per output timestamp in `slots`. Without rotation the
        frame goes to the encoder as decoded (FFmpeg scales it if needed): no RGB round trip."""
        if rotation:
            rgb = rotate(frame.to_ndarray(format="rgb24"), rotation)  # (H, W, 3)
            if rgb.shape[1::-1] != self.size:
                rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        elif (frame.width, frame.height) != self.size:
            frame = self.scaler.reformat(
                frame, width=self.size[0], height=self.size[1], format="yuv420p", interpolation="AREA"
            )
        frame.pict_type = PictureType.NONE  # let the encoder choose frame types, not the source's
        for pts in slots:
            frame.pts, frame.time_base = pts, self.time_base
            self.container.mux(self.stream.encode(frame))
            self.count += 1
            self.last_pts = pts

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()
        os.replace(self.tmp, self.spec.path)


def count_frames(path: str) -> int:
    """Frames in a written clip, counted by decoding it."""
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def held_frames(path: str) -> int:
    """Frames a written clip holds, without decoding them all: its video packets (one per frame
    in MP4) counted from the container, and the stream checked readable by decoding until its
    first frame comes out (0 if none does). ~10x cheaper than count_frames."""
    with av.open(path) as c:
        stream = c.streams.video[0]
        n, first = 0, False
        for packet in c.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            n += 1
            if not first:
                first = bool(packet.decode())
        if not first:  # frames held back by the decoder (B-frame delay): flush
            first = bool(stream.decode(None)) if n else False
        return n if first else 0


def extract(
    path: str,
    specs: list[ClipSpec],
    *,
    source_rate: Fraction,
    rotation: int,
    cfg: ExtractConfig,
    threads: int = 1,
    frame_pts: list | None = None,
    frame_times: np.ndarray | None = None,
    key_frames: list | None = None,
    decoded: DecodedFrames | None = None,
) -> list[ClipOut]:
    """Write every clip of one source in one forward decode (seeking over long gaps between
    clips when `frame_pts`, the analysis pass's pts of every frame index, allows); verify each
    clip's frames. `frame_times`: (N + 1,) seconds of every frame's start and the last one's end
    (Analysis.times); without them frames are taken as evenly spaced at `source_rate`.
    `key_frames` (Analysis.key_frames): where a key frame lies between two clips, the decode seeks
    to it rather than decoding through the gap, whatever its length (never more decoding).
    `decoded`: the analysis pass's decoded frames (curation/decoded.py); frames it holds are not
    decoded again."""
    if not specs:
        return []
    if frame_times is None:
        frame_times = np.arange(max(s.end for s in specs) + 1) / float(source_rate)
    times = np.asarray(frame_times, np.float64)
    cfr = bool(cfg.fps and cfg.fps > 0)
    rate = output_rate(source_rate, cfg)
    plan = {}  # source frame index -> [(spec, output timestamps)]
    final = {}  # key -> last source frame the clip uses
    expected, time_base, clip_rate = {}, {}, {}
    vfr_source = is_variable(times)
    for spec in specs:
        slots, time_base[spec.key], clip_rate[spec.key] = _plan_slots(spec, times, rate, cfr, vfr_source)
        final[spec.key] = max(slots)
        expected[spec.key] = sum(len(v) for v in slots.values())
        for index, ts in sorted(slots.items()):
            plan.setdefault(index, []).append((spec, ts))
    writers: dict[str, _Writer] = {}
    results: dict[str, ClipOut] = {}
    try:
        gap = max(1, round(cfg.seek_gap_seconds * float(source_rate))) if _seekable(frame_pts) else 1 << 62
        keys = key_frames if key_frames is not None and _seekable(frame_pts) else None
        for first, last in _segments(specs, final, gap, keys):
            for index, frame in _frames_from(path, first, frame_pts, threads, decoded, keys):
                if index > last:
                    break
                jobs = plan.get(index)
                if not jobs:
                    continue
                fw, fh = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
                for spec, slots in jobs:
                    w = writers.get(spec.key)
                    if w is None:
                        size = output_size(fw, fh, cfg)
                        w = writers[spec.key] = _Writer(
                            spec, clip_rate[spec.key], size, cfg, time_base[spec.key]
                        )
                    w.write(frame, slots, rotation)
                    if index == final[spec.key]:
                        w.close()
                        del writers[spec.key]
                        results[spec.key] = _verify(spec, w, expected[spec.key], times, cfr)
    finally:
        for w in writers.values():  # clips the decode never finished (source shorter than probed)
            w.container.close()
            if os.path.exists(w.tmp):
                os.remove(w.tmp)
    out = []
    for spec in specs:
        out.append(
            results.get(spec.key)
            or ClipOut(
                spec.key,
                0,
                float(rate),
                0,
                0,
                error=f"source ended before frame {spec.end - 1} (decoded frames stop early)",
            )
        )
    return out


def _segments(
    specs: list[ClipSpec], final: dict, gap: int, keys: list | None = None
) -> list[tuple[int, int]]:
    """[first, last] source-frame ranges to decode, each from its own seek. With the source's key
    frame indices `keys`, a clip starts a new range exactly when a key frame lies after the
    current range's last frame and at or before the clip's first: decoding from it never costs
    more than decoding through the gap (a seek without one would land before the range's end).
    Without `keys`, clips closer than `gap` frames share a range."""
    import bisect

    out: list[list[int]] = []
    for spec in sorted(specs, key=lambda s: s.start):
        if keys is not None and out:
            near = bisect.bisect_right(keys, spec.start) == bisect.bisect_right(keys, out[-1][1])
        else:
            near = bool(out) and spec.start - out[-1][1] <= gap
        if out and near:
            out[-1][1] = max(out[-1][1], final[spec.key])
        else:
            out.append([spec.start, final[spec.key]])
    return [(a, b) for a, b in out]


def _seekable(frame_pts: list | None) -> bool:
    """Frames can be named by pts: all known and distinct."""
    return bool(frame_pts) and None not in frame_pts and len(set(frame_pts)) == len(frame_pts)


def _frames_from(
    path: str,
    first: int,
    frame_pts: list | None,
    threads: int,
    decoded: DecodedFrames | None,
    keys: list | None = None,
):
    """(index, frame) from frame `first` on: from the analysis pass's `decoded` frames where they
    hold the rest of the source, else decoded (until the held frames begin)."""
    if decoded is not None and decoded.covers_from(first):
        yield from decoded.iter_from(first)
        return
    frames = _decode_from(path, first, frame_pts, threads, keys)
    try:
        for index, frame in frames:
            yield index, frame
            if decoded is not None and decoded.covers_from(index + 1):
                frames.close()  # the decoder and file close before the held frames are used
                yield from decoded.iter_from(index + 1)
                return
    finally:
        frames.close()


def _decode_from(path: str, first: int, frame_pts: list | None, threads: int, keys: list | None = None):
    """(index, frame) from frame `first` on. With the analysis pass's pts per index (unique, known)
    we seek to the keyframe before `first` and name frames by pts; otherwise decode from the start
    and count, exactly as the analysis pass did. When frame `first` does not come out after the
    seek (a leading frame of an open GOP: it references the GOP before the key frame the seek
    landed on, and FFmpeg drops it), the seek goes back a key frame (`keys`, the analysis pass's
    key-frame indices; without them further and further back) until it does."""
    if not _seekable(frame_pts) or first == 0:
        for d in iter_frames(path, threads=threads):
            if d.index >= first:
                yield d.index, d.frame
        return
    index_of = {p: i for i, p in enumerate(frame_pts)}
    for target in _seek_targets(first, keys):
        if target == 0:
            yield from _decode_from(path, first, None, threads)
            return
        frames, whole = _decode_after_seek(path, frame_pts[target], index_of, threads), None
        try:
            for i, frame in frames:
                if i < first:
                    continue
                if whole is None and not (whole := i == first):
                    break  # frame `first` was dropped: seek further back
                yield i, frame
        finally:
            frames.close()
        if whole is not False:
            return


def _seek_targets(first: int, keys: list | None):
    """Frame indices to seek to for a decode from `first`: itself (FFmpeg lands on the key frame
    before it), then the key frames before it, latest first, then the start."""
    import bisect

    yield first
    before = keys[: bisect.bisect_left(keys, first)] if keys else []
    if before:
        yield from reversed(before[-2:])
    else:
        back = 16
        while first - back > 0:
            yield first - back
            back *= 4
    yield 0


def _decode_after_seek(path: str, pts: int, index_of: dict, threads: int):
    """(index, frame) of every frame named in `index_of` that decodes after a seek to the key frame
    at or before `pts`."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = max(0, threads)
        container.seek(pts, stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue  # the analysis pass skipped the same corrupt packet
            for frame in frames:
                i = index_of.get(frame.pts)
                if i is not None:
                    yield i, frame


def _verify(spec: ClipSpec, w: _Writer, expected: int, times: np.ndarray, cfr: bool) -> ClipOut:
    n = held_frames(spec.path)
    if n != expected:  # count by decoding, for the record (the error stands either way)
        n = count_frames(spec.path)
    err = ""
    if n != expected or w.count != expected:
        err = f"frame count mismatch: wrote {w.count}, file holds {n}, expected {expected}"
        os.remove(spec.path)
    if cfr:
        return ClipOut(spec.key, n, float(w.rate), w.size[0], w.size[1], err, n / float(w.rate), "cfr", False)
    t = times[spec.start : spec.end + 1]
    duration, variable = float(t[-1] - t[0]), is_variable(t)
    fps = n / duration if variable and duration > 0 else float(w.rate)
    return ClipOut(spec.key, n, fps, w.size[0], w.size[1], err, duration, "source", variable)
