"""Scenes to candidate clips: find gradual transitions, cut at hard cuts, drop short scenes, split
long ones.

A hard cut (a detector's cut with no transition around it) costs no frame: the scene before ends
at the cut and the scene after starts there. Frames are trimmed only where there is evidence of a
gradual transition (fade, dissolve), found from the analysis pass's per-frame measurements:

  linear   a dissolve or fade mixes two images with a weight that ramps over several frames, so
           frame c is the mean of frames c - k and c + k (`Analysis.lin_ratio` near 0) while the
           two differ a lot (`Analysis.lin_diff`). Across a hard cut or any motion the middle frame
           is one of the two images or neither (ratio ~0.5 or more): motion never looks linear
           unless it is slow, and slow motion changes little.
  run      at least `transition_min_frames` such frames, gaps up to 3k merged, less weak ends
           (linear frames changing < 0.3x the run's most);
  change   the run ends in another picture: the change across it (tiny frames) is at least
           `transition_contrast` times the change over as many frames just before and just after
           it (a smooth pan, locally linear too, changes as much before and after; a side cut
           short by a cut or the file's end does not count), or frames inside it are near-black
           (a fade through black);
  length   no longer than `max_transition_seconds`.
The run's frames, and those its windows reached, are dropped (all but the windows' outer frames,
which may be pure: the transition is trimmed with a frame to spare, not more); detector
cuts inside it are part of the transition. Near-black frames at scene edges go too (fades that
no run found). Every boundary, and the frames trimmed at it, is recorded with the clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curation.analysis import LINEAR_K  # noqa: E402
from curation.config import ClipsConfig


@dataclass
class Candidate:
    key: str
    scene_index: int
    clip_index: int
    start: int  # first frame (inclusive)
    end: int  # last frame (exclusive)
    dropped: str = ""  # reason, when the scene stage drops it
    boundary_start: str = "source"  # what lies before the clip: source | cut | transition | split
    boundary_end: str = "source"
    trim_start: int = 0  # frames trimmed between that boundary and the clip's first frame
    trim_end: int = 0  # frames trimmed between the clip's last frame and its end boundary


def _runs(idx: np.ndarray, gap: int) -> list[list[int]]:
    """Runs [first, last + 1) of sorted indices, merging gaps up to `gap`."""
    out: list[list[int]] = []
    for i in idx.tolist():
        if out and i <= out[-1][1] + gap:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def find_transitions(
    lin_ratio: np.ndarray,
    lin_diff: np.ndarray,
    tiny: np.ndarray,
    luma: np.ndarray,
    cuts: list[int],
    fps: float,
    cfg: ClipsConfig,
) -> list[tuple[int, int]]:
    """Gradual transitions as frame spans [start, end) (see the module docstring).

    lin_ratio[c], lin_diff[c]: linearity of frames (c - k, c, c + k) (NaN where undefined);
    tiny: (N, h, w) uint8 grayscale thumbnails; luma: (N,) mean gray level.
    """
    k, n = LINEAR_K, len(luma)
    with np.errstate(invalid="ignore"):
        flagged = (lin_ratio < cfg.transition_linearity) & (lin_diff > cfg.transition_min_change)
    max_len = max(1, round(cfg.max_transition_seconds * fps))
    out: list[tuple[int, int]] = []
    for s, e in _runs(np.flatnonzero(flagged), 3 * k):
        # weak ends (a slow stretch of the shot next to it) are not the transition
        strong = flagged[s:e] & (lin_diff[s:e] >= 0.3 * lin_diff[s:e].max())
        s, e = s + int(np.argmax(strong)), e - int(np.argmax(strong[::-1]))
        if int(flagged[s:e].sum()) < cfg.transition_min_frames:
            continue
        a, b = max(0, s - k), min(n - 1, e - 1 + k)  # frames the windows spanned: [a, b]
        length = b - a
        if length > max_len:
            continue  # linear for longer than any transition: smooth motion
        # the change over `length` frames just before and just after, not reaching over a cut
        lo = max([0, *[c for c in cuts if c <= a]])
        hi = min([n - 1, *[c - 1 for c in cuts if c > b + 1]])
        t = tiny.astype(np.float32)
        across = float(np.abs(t[b] - t[a]).mean())
        # a side cut short by a cut or the file's end (under half the span) tells nothing
        sides = [
            float(np.abs(t[x] - t[y]).mean())
            for x, y in ((a, max(lo, a - length)), (min(hi, b + length), b))
            if 2 * abs(x - y) >= length
        ]
        dark = bool((luma[a : b + 1] < cfg.dark_level).any())
        if dark or (sides and across >= cfg.transition_contrast * max(*sides, 1e-3)):
            # the windows' outer frames may be pure; every frame between them is dropped
            if out and a + 1 <= out[-1][1]:  # overlapping spans (the two halves of a fade) are one
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a + 1, b))
    return out


def _duration(times: np.ndarray, start: int, end: int) -> float:
    return float(times[end] - times[start])


def candidates(
    source_id: str,
    cuts: list[int],
    transitions: list[tuple[int, int]],
    luma: np.ndarray,
    times: np.ndarray,
    cfg: ClipsConfig,
) -> list[Candidate]:
    """Every candidate clip of a source (dropped ones carry a reason).

    times: (N + 1,) seconds at which each frame starts, and the end of the last frame (true
    timestamps, so variable-frame-rate sources get true durations).
    """
    n = len(times) - 1
    # boundaries: (first excluded frame, end of excluded frames, kind); a hard cut excludes nothing
    bounds = [(a, b, "transition") for a, b in transitions]
    bounds += [(c, c, "cut") for c in cuts if not any(a - 1 <= c <= b + 1 for a, b in transitions)]
    bounds = [(0, 0, "source"), *sorted(bounds), (n, n, "source")]
    out = []
    for s in range(len(bounds) - 1):
        lo, kind_lo = bounds[s][1], bounds[s][2]
        hi, kind_hi = bounds[s + 1][0], bounds[s + 1][2]
        start = lo + (cfg.cut_trim_frames if kind_lo == "cut" else 0)
        end = hi - (cfg.cut_trim_frames if kind_hi == "cut" else 0)
        while start < end and luma[start] < cfg.dark_level:  # black frames at scene edges
            start += 1
        while end > start and luma[end - 1] < cfg.dark_level:
            end -= 1
        key = f"{source_id}_s{s:04d}"
        # frames trimmed at each boundary, counted from the cut frame or the transition's first / last
        trim = {
            "boundary_start": kind_lo,
            "boundary_end": kind_hi,
            "trim_start": start - bounds[s][0],
            "trim_end": bounds[s + 1][1] - end,
        }
        seconds = _duration(times, start, end) if end > start else 0.0
        if seconds < cfg.min_seconds - 1e-9:
            reason = f"scene too short: {seconds:.2f} s after trimming < clips.min_seconds={cfg.min_seconds}"
            a = max(lo, min(start, hi))
            out.append(Candidate(f"{key}_c00", s, 0, a, max(a, min(end, hi)), reason, **trim))
            continue
        chunks = max(1, math.ceil(seconds / cfg.max_seconds - 1e-9))
        # equal chunks in time: edge k is the first frame starting at or after start + k * seconds / chunks
        t0 = times[start]
        edges = [start] + [
            int(np.searchsorted(times[start:end], t0 + j * seconds / chunks - 1e-9)) + start
            for j in range(1, chunks)
        ]
        edges.append(end)
        for c in range(chunks):
            a, b = edges[c], edges[c + 1]
            reason = ""
            if _duration(times, a, b) < cfg.min_seconds - 1e-9:
                reason = (
                    f"chunk too short: {_duration(times, a, b):.2f} s < clips.min_seconds={cfg.min_seconds}"
                )
            out.append(
                Candidate(
                    f"{key}_c{c:02d}",
                    s,
                    c,
                    a,
                    b,
                    reason,
                    boundary_start=kind_lo if c == 0 else "split",
                    boundary_end=kind_hi if c == chunks - 1 else "split",
                    trim_start=trim["trim_start"] if c == 0 else 0,
                    trim_end=trim["trim_end"] if c == chunks - 1 else 0,
                )
            )
    return out
