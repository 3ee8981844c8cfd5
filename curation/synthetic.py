"""Deterministic synthetic raw footage with exact ground truth, for tests and demos.

    python -m curation.synthetic OUT --videos 6 --seed 0 [--bad] [--short-side 144]

Writes into OUT:
    vNNN_<aspect>_<fps>.mp4   H.264 yuv420p, constant frame rate (24, 25, 29.97 or 30 fps)
    vNNN_<aspect>_<fps>.json  sidecar: one caption per scene (as a source's own captions would be)
    manifest.json             the ground truth (frame indices, end exclusive):
        videos[]: file, sidecar, fps, fps_fraction, width, height, num_frames, duration,
                  cuts (first frame after each hard cut), transitions [{kind, start, end}],
                  scenes [{start, end, caption, motion}], static_spans, fast_spans
        bad[]:    file, kind, expect ("error" | "rejected" | "ok" | "skipped" | "any"), why
    bad/                      with --bad: inputs a curation pipeline must survive

Each video is a sequence of scenes separated by hard cuts, and (every other video) one gradual
transition (fade through black, or dissolve) whose frames belong to no scene. A scene's motion is
one of:
    normal  a textured background panning at a steady speed with shapes gliding over it
    static  one frame repeated exactly (a frozen frame)
    fast    handheld-style shake: the whole frame jumps by a large random offset every frame
Scenes differ in hue, texture and shapes so that a hard cut changes every pixel, while the shake
in a fast scene moves a smooth texture, which keeps a content detector's frame score low there.

Everything is drawn from one `numpy.random.Generator` seeded by `--seed`, and encoded with a
single-threaded libx264, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy.ndimage import zoom

GENERATOR_VERSION = 1

ASPECTS = [("16x9", 16 / 9), ("4x3", 4 / 3), ("9x16", 9 / 16), ("1x1", 1.0), ("239x100", 2.39)]
FRAME_RATES = [Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30)]
MOTION_CYCLE = ["normal", "static", "normal", "fast"]  # scene j of video i gets [(i + j) % 4]

# Encoder settings: lossless (qp 0), so a frozen frame decodes to identical pixels and the ground
# truth holds to the pixel; one thread, so the bytes do not depend on scheduling.
X264_OPTIONS = {"qp": "0", "preset": "veryfast", "x264-params": "threads=1"}

SCENE_SECONDS = 2.0  # mean scene length; a video has max(3, round(duration / SCENE_SECONDS)) scenes
TRANSITION_SECONDS = 0.5
NORMAL_SPEED = 0.006  # pan speed of a normal scene, fraction of the frame diagonal per frame
SHAKE = 0.06  # jump size in a fast scene, fraction of the frame diagonal

COLOR_NAMES = [
    (0, "red"),
    (30, "orange"),
    (60, "yellow"),
    (120, "green"),
    (180, "cyan"),
    (230, "blue"),
    (280, "purple"),
    (320, "magenta"),
    (360, "red"),
]
TEXTURES = ["striped", "rippled", "cloudy", "checkered"]
SHAPES = ["circle", "square", "diamond"]


def _color_name(hue_deg: float) -> str:
    return min(COLOR_NAMES, key=lambda c: abs(c[0] - hue_deg % 360))[1]


def _rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360, sat, val), dtype=np.float32) * 255


@dataclass
class Scene:
    """One scene's look and motion; `frame(i)` renders its i-th frame (i may run past its span)."""

    width: int
    height: int
    motion: str
    hue: float
    texture: str
    shape: str
    length: int  # frames this scene must render, transition overlap included
    saturation: float  # neighbouring scenes alternate saturation and brightness, so that a hard
    brightness: float  # cut changes hue, saturation and value at once
    rng: np.random.Generator
    canvas: np.ndarray = field(init=False, repr=False)  # (Hc, Wc, 3) float32 background
    pad: int = field(init=False)

    def __post_init__(self) -> None:
        diag = math.hypot(self.width, self.height)
        speed = NORMAL_SPEED * diag * self.rng.uniform(0.8, 1.2)
        angle = self.rng.uniform(0, 2 * math.pi)
        self.velocity = (speed * math.cos(angle), speed * math.sin(angle))  # (dx, dy) px/frame
        self.shake = SHAKE * diag
        self.pad = int(math.ceil(max(self.shake, speed * self.length))) + 2  # room for the whole pan
        self.canvas = self._background()
        self.shape_color = _rgb(self.hue + 180, 0.9, 0.95)
        self.shape_size = max(6, int(min(self.width, self.height) * self.rng.uniform(0.18, 0.26)))
        self.shape_pos = (self.rng.uniform(0.2, 0.6) * self.width, self.rng.uniform(0.2, 0.6) * self.height)
        direction = self.rng.uniform(0, 2 * math.pi)
        self.shape_velocity = (1.5 * speed * math.cos(direction), 1.5 * speed * math.sin(direction))
        self.caption = self._caption()

    def _background(self) -> np.ndarray:
        h, w = self.height + 2 * self.pad, self.width + 2 * self.pad
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        scale = min(self.width, self.height)
        value = np.zeros((h, w), np.float32)
        # Smooth textures (wavelength >= half the short side): a big shift changes pixels only
        # moderately, so shake does not look like a cut, yet there is gradient for optical flow.
        for _ in range(3):
            theta = self.rng.uniform(0, math.pi)
            wavelength = scale * self.rng.uniform(0.5, 1.2)
            phase = self.rng.uniform(0, 2 * math.pi)
            u = xx * math.cos(theta) + yy * math.sin(theta)
            if self.texture == "checkered":
                v = xx * -math.sin(theta) + yy * math.cos(theta)
                value += np.sin(2 * math.pi * u / wavelength + phase) * np.sin(2 * math.pi * v / wavelength)
            elif self.texture == "rippled":
                r = np.hypot(xx - w * self.rng.uniform(0.3, 0.7), yy - h * self.rng.uniform(0.3, 0.7))
                value += np.sin(2 * math.pi * r / wavelength + phase)
            else:
                value += np.sin(2 * math.pi * u / wavelength + phase)
        value = 0.55 + 0.12 * value / 3
        if self.texture == "cloudy":  # add low-frequency noise blobs
            coarse = self.rng.uniform(-1, 1, (h // 24 + 4, w // 24 + 4)).astype(np.float32)
            value += 0.15 * zoom(coarse, 24, order=3)[:h, :w]  # smooth blobs, no block edges
        base = _rgb(self.hue, self.saturation, self.brightness)  # (3,)
        return np.clip(value[..., None] * base[None, None, :], 0, 255)

    def _caption(self) -> str:
        color, bg = _color_name(self.hue + 180), _color_name(self.hue)
        dx, dy = self.shape_velocity
        direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
        subject = f"a {color} {self.shape}"
        background = f"a {bg} {self.texture} background"
        if self.motion == "static":
            return f"a still image of {subject} on {background}"
        if self.motion == "fast":
            return f"a shaky handheld shot of {subject} on {background}"
        return f"{subject} moving {direction} over {background}, the camera panning slowly"

    def _offset(self, i: int) -> tuple[int, int]:
        if self.motion == "static":
            return self.pad, self.pad
        if self.motion == "fast":
            # deterministic per frame index, independent of render order
            r = np.random.default_rng([int(self.hue * 1000), i + 10**6]).uniform(-1, 1, 2)
            return int(round(self.pad + r[0] * self.shake)), int(round(self.pad + r[1] * self.shake))
        dx, dy = self.velocity
        return int(round(self.pad + dx * i)), int(round(self.pad + dy * i))

    def frame(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 frame number i of this scene."""
        if self.motion == "static":
            i = 0
        ox, oy = self._offset(i)
        img = self.canvas[oy : oy + self.height, ox : ox + self.width].copy()
        if self.motion == "fast":  # the shape shakes with the camera
            cx, cy = self.shape_pos[0] + self.pad - ox, self.shape_pos[1] + self.pad - oy
        else:
            cx = (self.shape_pos[0] + self.shape_velocity[0] * i) % self.width
            cy = (self.shape_pos[1] + self.shape_velocity[1] * i) % self.height
        self._draw_shape(img, cx, cy)
        return img.astype(np.uint8)

    def _draw_shape(self, img: np.ndarray, cx: float, cy: float) -> None:
        r = self.shape_size / 2
        yy, xx = np.ogrid[0 : self.height, 0 : self.width]
        if self.shape == "circle":
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif self.shape == "square":
            inside = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        else:
            inside = np.abs(xx - cx) + np.abs(yy - cy) <= r
        img[inside] = self.shape_color


def _video_size(aspect: float, short_side: int) -> tuple[int, int]:
    even = lambda x: max(2, int(round(x / 2)) * 2)  # noqa: E731 - yuv420p needs even sizes
    if aspect >= 1:
        return even(short_side * aspect), even(short_side)
    return even(short_side), even(short_side / aspect)


def _plan_video(i: int, rng: np.random.Generator, short_side: int, min_s: float, max_s: float) -> dict:
    """Lay out one video's scenes, cuts and transition (frame indices, end exclusive)."""
    aspect_name, aspect = ASPECTS[i % len(ASPECTS)]
    fps = FRAME_RATES[i % len(FRAME_RATES)]
    width, height = _video_size(aspect, short_side)
    duration = rng.uniform(min_s, max_s)
    num_frames = int(round(duration * fps))
    n_scenes = max(3, int(round(duration / SCENE_SECONDS)))
    transition = ["fade", "dissolve"][(i // 2) % 2] if i % 2 == 0 else None
    tr_len = int(round(TRANSITION_SECONDS * fps)) if transition else 0
    tr_after = int(rng.integers(0, n_scenes - 1)) if transition else -1  # transition follows this scene
    weights = rng.uniform(0.75, 1.25, n_scenes)
    lengths = np.floor(weights / weights.sum() * (num_frames - tr_len)).astype(int)
    lengths[-1] = num_frames - tr_len - lengths[:-1].sum()
    motions = [MOTION_CYCLE[(i + j) % len(MOTION_CYCLE)] for j in range(n_scenes)]
    hue0 = rng.uniform(0, 360)
    scenes, cuts, transitions, pos = [], [], [], 0
    for j in range(n_scenes):
        hue = hue0 + j * 137.5  # golden-angle steps: neighbours always far apart in hue
        scene = Scene(
            width=width,
            height=height,
            motion=motions[j],
            hue=hue % 360,
            texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            length=int(lengths[j]) + 2 * tr_len + 2,
            saturation=(0.9, 0.4)[j % 2],
            brightness=(1.0, 0.55)[j % 2],
            rng=rng,
        )
        if j > 0 and j - 1 != tr_after:
            cuts.append(pos)
        scenes.append({"start": pos, "end": pos + int(lengths[j]), "scene": scene})
        pos += int(lengths[j])
        if j == tr_after:
            transitions.append({"kind": transition, "start": pos, "end": pos + tr_len})
            pos += tr_len
    assert pos == num_frames, (pos, num_frames)
    return {
        "aspect": aspect_name,
        "fps": fps,
        "width": width,
        "height": height,
        "num_frames": num_frames,
        "scenes": scenes,
        "cuts": cuts,
        "transitions": transitions,
    }


def _render(plan: dict, k: int) -> np.ndarray:
    """Frame k of a planned video."""
    scenes = plan["scenes"]
    for s in scenes:
        if s["start"] <= k < s["end"]:
            return s["scene"].frame(k - s["start"])
    for tr in plan["transitions"]:
        if tr["start"] <= k < tr["end"]:
            a = next(s for s in scenes if s["end"] == tr["start"])
            b = next(s for s in scenes if s["start"] == tr["end"])
            fa = a["scene"].frame(k - a["start"]).astype(np.float32)
            fb = b["scene"].frame(k - b["start"]).astype(np.float32)  # negative index: before B starts
            alpha = (k - tr["start"] + 1) / (tr["end"] - tr["start"] + 1)  # in (0, 1)
            if tr["kind"] == "dissolve":
                out = (1 - alpha) * fa + alpha * fb
            else:  # fade out to black, then in from black
                out = fa * max(0.0, 1 - 2 * alpha) + fb * max(0.0, 2 * alpha - 1)
            return np.round(out).astype(np.uint8)
    raise IndexError(k)


def encode_video(
    path: Path,
    frames,
    fps: Fraction,
    width: int,
    height: int,
    *,
    pix_fmt: str = "yuv420p",
    faststart: bool = True,
    pts=None,
) -> None:
    """Encode an iterable of (H, W, 3) uint8 RGB frames as H.264 mp4 with PyAV (deterministic).

    `pts`: optional explicit timestamps in units of 1/(fps * 1000) for variable-frame-rate files.
    """
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options=dict(X264_OPTIONS))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.thread_count = 1
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, int(fps * 1000))
        for k, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[k], Fraction(1, int(fps * 1000))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def camera_path_video(
    path, offsets, *, fps: Fraction = Fraction(25), size: tuple[int, int] = (160, 96), seed: int = 0
) -> None:
    """One shot of a camera moving over a still textured scene along `offsets`: (n, 2) float
    (dx, dy) in pixels, frame i shows the scene shifted by offsets[i] (sub-pixel, bilinear). The
    known camera path makes test footage for motion scores: smooth pans, shake, jerks."""
    import cv2

    offsets = np.asarray(offsets, np.float64)
    w, h = size
    pad = int(np.ceil(np.abs(offsets).max())) + 4
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, ((h + 2 * pad) // 8 + 2, (w + 2 * pad) // 8 + 2, 3)).astype(np.float32)
    fine = rng.uniform(-40, 40, (h + 2 * pad, w + 2 * pad, 1)).astype(np.float32)
    scene = cv2.resize(coarse, (w + 2 * pad, h + 2 * pad), interpolation=cv2.INTER_CUBIC) + fine
    scene = cv2.GaussianBlur(np.clip(scene, 0, 255), (0, 0), 1.0)  # texture at every scale

    def frames():
        for dx, dy in offsets:
            m = np.float32([[1, 0, -(pad + dx)], [0, 1, -(pad + dy)]])
            yield np.clip(cv2.warpAffine(scene, m, (w, h), flags=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)

    encode_video(Path(path), frames(), fps, w, h)


def _fps_label(fps: Fraction) -> str:
    return f"{float(fps):.2f}".rstrip("0").rstrip(".").replace(".", "p")


def generate(
    out_dir,
    *,
    videos: int = 6,
    seed: int = 0,
    bad: bool = False,
    short_side: int = 144,
    min_seconds: float = 5.0,
    max_seconds: float = 20.0,
    progress: bool = False,
) -> dict:
    """Write `videos` synthetic videos (and, with `bad`, the bad-input corpus); return the manifest."""
    if videos < 1 or min_seconds <= 0 or max_seconds < min_seconds or short_side < 16:
        raise ValueError(
            f"need videos >= 1, 0 < min_seconds <= max_seconds, short_side >= 16; got "
            f"videos={videos}, seconds=[{min_seconds}, {max_seconds}], short_side={short_side}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = {"seed": seed, "generator_version": GENERATOR_VERSION, "videos": [], "bad": []}
    iterator = range(videos)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="synthetic videos", unit="video")
    for i in iterator:
        plan = _plan_video(i, rng, short_side, min_seconds, max_seconds)
        name = f"v{i:03d}_{plan['aspect']}_{_fps_label(plan['fps'])}fps"
        frames = (_render(plan, k) for k in range(plan["num_frames"]))
        encode_video(out / f"{name}.mp4", frames, plan["fps"], plan["width"], plan["height"])
        scenes = [
            {"start": s["start"], "end": s["end"], "caption": s["scene"].caption, "motion": s["scene"].motion}
            for s in plan["scenes"]
        ]
        sidecar = {
            "captions": [
                {"start_frame": s["start"], "end_frame": s["end"], "caption": s["caption"]} for s in scenes
            ]
        }
        (out / f"{name}.json").write_text(json.dumps(sidecar, indent=1))
        fps = plan["fps"]
        manifest["videos"].append(
            {
                "file": f"{name}.mp4",
                "sidecar": f"{name}.json",
                "fps": float(fps),
                "fps_fraction": f"{fps.numerator}/{fps.denominator}",
                "width": plan["width"],
                "height": plan["height"],
                "num_frames": plan["num_frames"],
                "duration": plan["num_frames"] / float(fps),
                "cuts": plan["cuts"],
                "transitions": plan["transitions"],
                "scenes": scenes,
                "static_spans": [
                    {"start": s["start"], "end": s["end"]} for s in scenes if s["motion"] == "static"
                ],
                "fast_spans": [
                    {"start": s["start"], "end": s["end"]} for s in scenes if s["motion"] == "fast"
                ],
            }
        )
    if bad:
        from curation._bad_inputs import write_bad_inputs

        manifest["bad"] = write_bad_inputs(out / "bad", rng)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m curation.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output directory (created if missing)")
    p.add_argument("--videos", type=int, default=6, help="number of good videos (default 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical bytes")
    p.add_argument("--bad", action="store_true", help="also write the bad-input corpus into OUT/bad/")
    p.add_argument("--short-side", type=int, default=144, help="short side of each video in pixels")
    p.add_argument("--min-seconds", type=float, default=5.0, help="shortest video length")
    p.add_argument("--max-seconds", type=float, default=20.0, help="longest video length")
    a = p.parse_args(argv)
    m = generate(
        a.out,
        videos=a.videos,
        seed=a.seed,
        bad=a.bad,
        short_side=a.short_side,
        min_seconds=a.min_seconds,
        max_seconds=a.max_seconds,
        progress=True,
    )
    frames = sum(v["num_frames"] for v in m["videos"])
    print(
        f"wrote {len(m['videos'])} videos ({frames} frames), {len(m['bad'])} bad inputs and "
        f"{Path(a.out) / 'manifest.json'}"
    )


if __name__ == "__main__":
    main()
