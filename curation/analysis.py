"""One decode pass per source: scene detection, motion and kept frames from the same frames.

Every decoded frame is
  (a) converted to BGR and downscaled exactly as `scenedetect.detect()` does (auto_downscale:
      factor = max(width, height) / analysis.min_width, cv2 INTER_LINEAR) and fed to
      PySceneDetect's detectors through their `process_frame(timecode, frame)` API, with the same
      PTS-based timecodes its PyAV backend builds, so our cut list equals `scenedetect.detect(...,
      backend="pyav")` for the same detector and parameters;
  (b) reduced to a small grayscale frame for frame differences, mean luma and the linearity of
      every 3-frames-apart triple (gradual transitions, curation/scenes.py) on every frame, a tiny
      thumbnail per frame, and Farneback optical flow plus the global shift on consecutive pairs at
      `analysis.flow_fps`;
  (c) kept (JPEG in memory, at `analysis.keep_fps`) for CLIP, thumbnails and perceptual hashes.

Frame indices are decode order (0-based); `iter_frames` is shared with extraction so the two
passes agree on them even when corrupt packets are skipped. Every frame's presentation time is
kept (`Analysis.times`): durations and motion per second come from true timestamps, so
variable-frame-rate sources are timed right.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np
import scenedetect.detectors as sd_detectors
from av.video.reformatter import VideoReformatter
from scenedetect.common import FrameTimecode, Timecode

from curation.config import AnalysisConfig
from curation.decoded import DecodedFrames

LINEAR_K = 3  # linearity triples are (c - LINEAR_K, c, c + LINEAR_K): see curation/scenes.py
MIN_RESPONSE = 0.3  # phase-correlation peaks weaker than this give no per-frame shift (NaN)
TINY_SIDE = 16  # short side of the per-frame thumbnails kept for transition checks


class ContentDetector(sd_detectors.ContentDetector):
    """scenedetect's ContentDetector, its frame score computed in two OpenCV calls: the per-channel
    mean |HSV difference| from cv2.absdiff + cv2.sumElems instead of cv2.split and three int32
    copies per channel. Both sum the same integers exactly (in int64 / double, far below 2**53)
    and divide by the same pixel count, so the scores and cuts are identical; ~4x cheaper per
    frame (tests/test_curation_analysis.py compares cut lists with scenedetect.detect()). With
    edge detection or a stats manager it runs scenedetect's own code."""

    _last_hsv = None

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        if self._weights.delta_edges > 0.0 or self.stats_manager is not None:
            return super()._calculate_frame_score(timecode, frame_img)
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)  # (h, w, 3) uint8
        last, self._last_hsv = self._last_hsv, hsv
        if last is None:
            return 0.0
        n = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum, _ = cv2.sumElems(cv2.absdiff(hsv, last))
        components = (hue / n, sat / n, lum / n, 0.0)  # scenedetect's Components order, no edges
        weights = self._weights
        return sum(c * w for c, w in zip(components, weights, strict=True)) / sum(abs(w) for w in weights)


class _MeanView(np.ndarray):
    """A view of a uint8 frame whose plain mean() is exact and one OpenCV call: the channel sums
    (cv2.sumElems, exact integers in double) over the element count, the value numpy's float64
    pairwise sum gives for uint8 (every partial sum is an integer below 2**53)."""

    def mean(self, axis=None, dtype=None, out=None, **kwargs):
        if axis is None and dtype is None and out is None and not kwargs and self.dtype == np.uint8:
            if self.ndim == 2 or (self.ndim == 3 and self.shape[2] <= 4):
                return np.float64(sum(cv2.sumElems(self.view(np.ndarray))) / self.size)
        return super().mean(axis=axis, dtype=dtype, out=out, **kwargs)


class ThresholdDetector(sd_detectors.ThresholdDetector):
    """scenedetect's ThresholdDetector; its per-frame numpy.mean(frame) (which defers to the
    array's own mean() for an ndarray subclass) is computed by _MeanView: identical value."""

    def process_frame(self, timecode: FrameTimecode, frame_img: np.ndarray) -> list:
        if isinstance(frame_img, np.ndarray):
            frame_img = frame_img.view(_MeanView)
        return super().process_frame(timecode, frame_img)


DETECTORS = {
    "content": ContentDetector,
    "adaptive": sd_detectors.AdaptiveDetector,
    "hash": sd_detectors.HashDetector,
    "histogram": sd_detectors.HistogramDetector,
    "threshold": ThresholdDetector,
}


def make_detectors(cfg: AnalysisConfig) -> list:
    unknown = [d for d in cfg.detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(f"analysis.detectors: unknown {unknown}; choose from {sorted(DETECTORS)}")
    return [DETECTORS[name](**dict(getattr(cfg, name))) for name in cfg.detectors]


def detector_size(width: int, height: int, min_width: int) -> tuple[int, int]:
    """(w, h) of the frames scenedetect's auto_downscale feeds its detectors."""
    factor = max(width, height) / min_width if min_width and max(width, height) >= min_width else 1.0
    if factor <= 1.0:
        return width, height
    return max(1, round(width / factor)), max(1, round(height / factor))


def small_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side at most `short_side`, aspect kept."""
    s = min(1.0, short_side / min(width, height))
    return max(2, round(width * s)), max(2, round(height * s))


def even_size(width: int, height: int) -> tuple[int, int]:
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


def scale_frame(
    reformatter: VideoReformatter,
    frame: av.VideoFrame,
    size: tuple[int, int],
    code: int = cv2.COLOR_YUV2BGR_I420,
) -> np.ndarray:
    """(h, w, 3) uint8 BGR (or RGB) of `frame` at even `size`. FFmpeg area-averages in planar
    4:2:0, then OpenCV converts the small frame: ~3x cheaper than FFmpeg scaling straight to
    packed BGR at 720p (measured 0.44 vs 1.44 ms per frame), and the reformatter is reused so
    its SwsContext is built once."""
    yuv = reformatter.reformat(frame, width=size[0], height=size[1], format="yuv420p", interpolation="AREA")
    return cv2.cvtColor(yuv.to_ndarray(), code)  # (h * 3/2, w) -> (h, w, 3)


@dataclass
class Decoded:
    index: int
    frame: av.VideoFrame
    timecode: FrameTimecode


@dataclass
class DecodeStats:
    corrupt_packets: int = 0


def iter_frames(path: str, *, threads: int = 1, stats: DecodeStats | None = None) -> Iterator[Decoded]:
    """Decode every frame of the first video stream in order, skipping packets that fail to
    decode (counted in `stats`), with scenedetect-PyAV-style timecodes."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = max(0, threads)
        rate = stream.guessed_rate or stream.average_rate
        rate = Fraction(rate.numerator, rate.denominator)
        start_time = stream.start_time or 0
        index = 0
        # the rate as a FrameTimecode: scenedetect takes its validated rate as is, rather than
        # checking `rate` again for every frame; the time base and start offset are converted
        # once per time base (the same values as per frame, a fifth of the Python work)
        rate_tc = FrameTimecode(0, fps=rate)
        frame_tb, tb, start = None, None, 0

        def wrap(frame: av.VideoFrame) -> Decoded:
            nonlocal frame_tb, tb, start
            if frame.pts is None or not frame.time_base:
                tc = FrameTimecode(index, fps=rate_tc)
            else:
                if frame.time_base != frame_tb:
                    frame_tb = frame.time_base
                    tb = Fraction(frame_tb.numerator, frame_tb.denominator)
                    start = start_time
                    if start and stream.time_base != frame_tb:
                        start = int(start * Fraction(stream.time_base) / tb)
                tc = FrameTimecode(timecode=Timecode(pts=frame.pts - start, time_base=tb), fps=rate_tc)
            return Decoded(index, frame, tc)

        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError:
                if stats is not None:
                    stats.corrupt_packets += 1
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError:
                if stats is not None:
                    stats.corrupt_packets += 1
                continue
            for frame in frames:
                yield wrap(frame)
                index += 1


def rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise) to an (H, W, C) image."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


@dataclass
class Analysis:
    num_frames: int
    fps: float
    cuts: list[int]  # first frame of each new scene (decode-order indices)
    diffs: np.ndarray  # (N,) float32 mean |gray_i - gray_{i-1}| (0-255), diffs[0] = 0
    luma: np.ndarray  # (N,) float32 mean gray level
    flow_index: np.ndarray  # (M,) int: flow sample i measures frames (i-1, i)
    flow_mag: np.ndarray  # (M,) float32 mean Farneback flow magnitude, frame diagonals per second
    shift_mag: np.ndarray  # (M,) float32 global shift (phase correlation), frame diagonals per second
    lin_ratio: np.ndarray = None  # (N,) |g_c - (g_c-k + g_c+k) / 2| / |g_c+k - g_c-k| (NaN near the ends)
    lin_diff: np.ndarray = None  # (N,) mean |g_c+k - g_c-k|, k = scenes.LINEAR_K
    tiny: np.ndarray = None  # (N, h, w) uint8 grayscale thumbnails, short side TINY_SIDE
    times: np.ndarray = None  # (N + 1,) float64 seconds: each frame's start from the first, then the end
    shift_dx: np.ndarray = None  # (N,) float32 signed global shift from frame i-1 to i, diagonals/s
    shift_dy: np.ndarray = None  # (NaN for frame 0 and where phase correlation found no clear peak)
    kept: dict[int, bytes] = field(default_factory=dict)  # frame index -> JPEG (RGB, rotated)
    frame_pts: list = field(default_factory=list)  # raw pts of every frame index (None if absent)
    key_frames: list = field(default_factory=list)  # indices of the frames decoded as key frames
    corrupt_packets: int = 0
    detector_size: tuple[int, int] = (0, 0)

    def kept_frames(self, start: int, end: int, k: int) -> list[tuple[int, np.ndarray]]:
        """Up to k kept frames in [start, end), evenly spread: [(index, (H, W, 3) uint8 RGB)]."""
        idx = [i for i in sorted(self.kept) if start <= i < end]
        if len(idx) > k:
            idx = (
                [idx[round(j * (len(idx) - 1) / max(1, k - 1))] for j in range(k)]
                if k > 1
                else [idx[len(idx) // 2]]
            )
        return [(i, decode_jpeg(self.kept[i])) for i in idx]


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def analyze(
    path: str, cfg: AnalysisConfig, *, fps: float, rotation: int = 0, decoded: DecodedFrames | None = None
) -> Analysis:
    """The single analysis decode pass over `path` (see the module docstring). `decoded`: a window
    that keeps the decoded frames for extraction (curation/decoded.py)."""
    detectors = make_detectors(cfg)
    flow_every = max(1, round(fps / cfg.flow_fps)) if cfg.flow_fps > 0 else 0
    keep_every = fps / cfg.keep_fps if cfg.keep_fps > 0 else 0
    next_keep = 0.0
    stats = DecodeStats()
    diffs, luma, flow_index, flow_mag, shift_mag, kept, frame_pts = [], [], [], [], [], {}, []
    shift_dx, shift_dy, times, tiny, recent = {}, {}, [], [], []
    lin_ratio, lin_diff = {}, {}  # centre frame index -> linearity of its triple
    cuts, pts_to_index, key_frames = [], {}, []
    prev_gray = None
    det_wh = small_wh = None
    last_tc = None
    scaler, keeper = VideoReformatter(), VideoReformatter()  # persistent: reuse their SwsContexts
    for d in iter_frames(path, threads=cfg.threads, stats=stats):
        if decoded is not None:
            decoded.add(d.index, d.frame)
        frame_pts.append(d.frame.pts)
        if d.frame.key_frame:
            key_frames.append(d.index)
        times.append(float(d.timecode.seconds))
        if det_wh is None:
            w, h = d.frame.width, d.frame.height
            det_wh = detector_size(w, h, cfg.min_width)
            if cfg.scaler != "scenedetect" and det_wh != (w, h):
                det_wh = even_size(*det_wh)  # scale_frame's 4:2:0 path needs even sizes
            k = max(1, round(min(det_wh) / cfg.flow_short_side))  # integer factor: OpenCV's fast area path
            small_wh = (max(2, det_wh[0] // k), max(2, det_wh[1] // k))
            keep_wh = even_size(*small_size(w, h, cfg.keep_short_side))
            diag = math.hypot(*small_wh)
            window = cv2.createHanningWindow(small_wh, cv2.CV_32F)
            s = TINY_SIDE / min(small_wh)
            tiny_wh = (max(2, round(small_wh[0] * s)), max(2, round(small_wh[1] * s)))
        if (d.frame.width, d.frame.height) != (w, h):  # size changed mid-stream (corrupt): scenedetect
            diffs.append(0.0)  # skips such frames; we keep the index aligned and feed no detector
            luma.append(luma[-1] if luma else 0.0)
            tiny.append(tiny[-1] if tiny else np.zeros(tiny_wh[::-1], np.uint8))
            if (lin := _linearity(recent, None)) is not None:
                lin_ratio[d.index - LINEAR_K], lin_diff[d.index - LINEAR_K] = lin
            continue
        if cfg.scaler == "scenedetect" or det_wh == (w, h):
            bgr = d.frame.to_ndarray(format="bgr24")  # (H, W, 3) exactly as scenedetect's PyAV backend
            det = bgr if det_wh == (w, h) else cv2.resize(bgr, det_wh, interpolation=cv2.INTER_LINEAR)
        else:  # FFmpeg scales and converts in one pass: far cheaper than full-size BGR + cv2.resize
            det = scale_frame(scaler, d.frame, det_wh)
        pts_to_index[_pts(d.timecode)] = d.index
        for detector in detectors:
            cuts += detector.process_frame(d.timecode, det)
        last_tc = d.timecode
        gray = cv2.cvtColor(
            det if det_wh == small_wh else cv2.resize(det, small_wh, interpolation=cv2.INTER_AREA),
            cv2.COLOR_BGR2GRAY,
        )  # (h, w) uint8
        luma.append(cv2.mean(gray)[0])
        diffs.append(0.0 if prev_gray is None else cv2.norm(gray, prev_gray, cv2.NORM_L1) / gray.size)
        tiny.append(cv2.resize(gray, tiny_wh, interpolation=cv2.INTER_AREA))
        gray_f = gray.astype(np.float32)
        if (lin := _linearity(recent, gray_f)) is not None:
            lin_ratio[d.index - LINEAR_K], lin_diff[d.index - LINEAR_K] = lin
        if prev_gray is not None:
            # per second from the true time between the two frames (variable frame rates)
            rate = 1.0 / dt if (dt := times[-1] - times[-2]) > 0 else fps
            # the global translation by phase correlation, on every pair (~0.1 ms): its direction
            # reversals are camera shake (curation/motion.py); Farneback underestimates large or
            # low-texture displacements (shake, smooth pans), which this catches, cheaply
            prev_f = (
                recent[-2] if len(recent) > 1 and recent[-2] is not None else prev_gray.astype(np.float32)
            )
            (dx, dy), response = cv2.phaseCorrelate(prev_f, gray_f, window)
            if response >= MIN_RESPONSE:  # else no clear peak (a cut, a periodic texture): unknown
                shift_dx[d.index], shift_dy[d.index] = dx / diag * rate, dy / diag * rate
            if flow_every and d.index % flow_every == 0:
                flow = cv2.calcOpticalFlowFarneback(
                    prev_gray, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0
                )  # (h, w, 2)
                mag = float(np.sqrt((flow * flow).sum(-1)).mean())  # px per frame at small size
                flow_index.append(d.index)
                flow_mag.append(mag / diag * rate)  # frame diagonals per second: resolution-independent
                shift_mag.append(math.hypot(dx, dy) / diag * rate)
        if keep_every and d.index >= next_keep - 1e-6:
            next_keep += keep_every
            rgb = scale_frame(keeper, d.frame, keep_wh, cv2.COLOR_YUV2RGB_I420)  # (h, w, 3)
            kept[d.index] = encode_jpeg(rotate(rgb, rotation))
        prev_gray = gray
    if last_tc is not None:
        for detector in detectors:
            cuts += detector.post_process(last_tc)
    n = len(diffs)
    cut_idx = sorted({_to_index(c, pts_to_index, fps) for c in cuts})
    return Analysis(
        num_frames=n,
        fps=fps,
        cuts=[c for c in cut_idx if 0 < c < n],
        diffs=np.asarray(diffs, np.float32),
        luma=np.asarray(luma, np.float32),
        flow_index=np.asarray(flow_index, np.int64),
        flow_mag=np.asarray(flow_mag, np.float32),
        shift_mag=np.asarray(shift_mag, np.float32),
        shift_dx=_dense(shift_dx, n, math.nan),
        shift_dy=_dense(shift_dy, n, math.nan),
        lin_ratio=_dense(lin_ratio, n, math.nan),
        lin_diff=_dense(lin_diff, n, 0.0),
        tiny=np.stack(tiny) if tiny else np.zeros((0, 2, 2), np.uint8),
        times=_frame_times(times, fps),
        kept=kept,
        frame_pts=frame_pts,
        key_frames=key_frames,
        corrupt_packets=stats.corrupt_packets,
        detector_size=det_wh or (0, 0),
    )


def _linearity(recent: list, gray: np.ndarray | None) -> tuple[float, float] | None:
    """Push `gray` (float32; None: a skipped frame) into `recent`, the last 2k + 1 frames, and return
    (ratio, diff) of the triple centred k frames back (see Analysis.lin_ratio), once there is one."""
    k = LINEAR_K
    recent.append(gray)
    if len(recent) > 2 * k + 1:
        del recent[0]
    if len(recent) < 2 * k + 1:
        return None
    a, m, b = recent[0], recent[k], recent[-1]
    if a is None or m is None or b is None:
        return math.nan, 0.0
    span = cv2.norm(b, a, cv2.NORM_L1) / a.size
    off = cv2.norm(m, cv2.addWeighted(a, 0.5, b, 0.5, 0.0), cv2.NORM_L1) / a.size
    return (off / span if span > 0 else math.nan), span


def _dense(values: dict, n: int, fill: float) -> np.ndarray:
    out = np.full(n, fill, np.float32)
    for i, v in values.items():
        out[i] = v
    return out


def _frame_times(times: list, fps: float) -> np.ndarray:
    """(N + 1,) seconds from the first frame: each frame's start, then the last frame's end (its
    duration taken as the interval before it). Frames without a usable pts are placed one
    nominal interval after the previous frame."""
    t = np.asarray(times, np.float64)
    if t.size == 0:
        return np.zeros(1)
    if not np.isfinite(t[0]):
        t[0] = 0.0
    bad = ~np.isfinite(t)
    bad[1:] |= t[1:] <= t[:-1]  # missing or non-increasing (corrupt) timestamps
    if bad.any():  # one pass against the repaired previous time: the result always increases
        for i in range(max(1, int(np.argmax(bad))), t.size):
            if not math.isfinite(t[i]) or t[i] <= t[i - 1]:
                t[i] = t[i - 1] + 1.0 / fps
    t -= t[0]
    step = float(t[-1] - t[-2]) if t.size > 1 else 1.0 / fps
    return np.append(t, t[-1] + step)


def _to_index(tc: FrameTimecode, pts_to_index: dict, fps: float) -> int:
    """Decode-order index of the frame a detector's cut timecode names."""
    pts = _pts(tc)
    if pts is not None and pts in pts_to_index:
        return pts_to_index[pts]
    return round(tc.seconds * fps)


def _pts(tc: FrameTimecode) -> int | None:
    """The PTS behind a PTS-based timecode (None for frame-number timecodes)."""
    return getattr(tc._time, "pts", None) if isinstance(tc._time, Timecode) else None
