"""Footage a tiny model can learn from in minutes on a CPU: the raw input of `make demo`.

    python -m curation.demo_footage OUT --videos 48 --seed 0

Each video is one shot: a smooth, slowly panning background of one hue (broad stripes or a gradient)
with one shape (circle or square) of a contrasting colour gliding across it at a constant
velocity, bouncing off the frame edges. Square frames (`--size`, default 128), 24 fps, a few
seconds; H.264 written with PyAV, a caption sidecar per video as `curation.synthetic` writes
(naming colour, shape and motion), and `manifest.json` with the ground truth.

Why not `curation.synthetic`: that footage is built to test curation (hard cuts, dissolves, frozen
and shaky scenes, five aspect ratios); a model of about a million parameters trained for a
few minutes cannot learn that variety. Here every clip shows the same kind of content, so what the
model learned is visible in a 16x16 sample.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from curation.synthetic import encode_video

FPS = Fraction(24)
SHAPES = ("circle", "square")
BACKGROUNDS = ("striped", "gradient")
HUES = {"red": 0, "yellow": 55, "green": 120, "cyan": 185, "blue": 225, "magenta": 300}


def _rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360, sat, val), np.float32) * 255


def _direction(vx: float, vy: float) -> str:
    return ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")


class Shot:
    """One video's look and motion; `frame(i)` renders frame i as (size, size, 3) uint8."""

    def __init__(self, rng: np.random.Generator, size: int, num_frames: int):
        self.size, self.num_frames = size, num_frames
        names = list(HUES)
        self.bg_name = names[int(rng.integers(len(names)))]
        # the shape's colour: at least two hues away from the background's, so it always stands out
        self.fg_name = names[(names.index(self.bg_name) + int(rng.integers(2, len(names) - 1))) % len(names)]
        self.shape = SHAPES[int(rng.integers(len(SHAPES)))]
        self.background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        self.radius = size * rng.uniform(0.17, 0.23)  # 5-7 px across at the demo's 16x16
        speed = size * rng.uniform(0.012, 0.02)  # px/frame: a third to a half of the frame per second
        angle = rng.uniform(0, 2 * math.pi)
        self.velocity = (speed * math.cos(angle), speed * math.sin(angle))
        self.start = rng.uniform(self.radius, size - self.radius, 2)
        self.pan = rng.uniform(-0.004, 0.004, 2) * size  # slow camera pan, px/frame
        self.theta = rng.uniform(0, math.pi)
        self.wavelength = size * rng.uniform(0.8, 1.2)  # broad bands: still smooth at 16x16
        self.phase = rng.uniform(0, 2 * math.pi)
        self.bg_rgb = _rgb(HUES[self.bg_name], 0.75, 0.8)
        self.fg_rgb = _rgb(HUES[self.fg_name], 0.9, 1.0)
        self.caption = (
            f"a {self.fg_name} {self.shape} moving {_direction(*self.velocity)} "
            f"over a {self.bg_name} {self.background} background"
        )

    def _center(self, i: int) -> tuple[float, float]:
        """Position at frame i, bouncing between the walls (a triangle wave per axis)."""
        lo, hi = self.radius, self.size - self.radius
        out = []
        for p0, v in zip(self.start, self.velocity):
            p = (p0 - lo + v * i) % (2 * (hi - lo))
            out.append(lo + (p if p <= hi - lo else 2 * (hi - lo) - p))
        return out[0], out[1]

    def frame(self, i: int) -> np.ndarray:
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32)
        xs, ys = xx + self.pan[0] * i, yy + self.pan[1] * i
        u = xs * math.cos(self.theta) + ys * math.sin(self.theta)
        if self.background == "striped":
            value = 0.7 + 0.25 * np.sin(2 * math.pi * u / self.wavelength + self.phase)
        else:
            value = 0.45 + 0.5 * (0.5 + 0.5 * np.sin(math.pi * u / (2 * self.size) + self.phase))
        img = value[..., None] * self.bg_rgb[None, None]
        cx, cy = self._center(i)
        if self.shape == "circle":
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= self.radius**2
        else:
            inside = (np.abs(xx - cx) <= self.radius) & (np.abs(yy - cy) <= self.radius)
        img[inside] = self.fg_rgb
        return np.clip(img, 0, 255).astype(np.uint8)


def generate(
    out_dir, *, videos: int = 48, seed: int = 0, size: int = 128, seconds: float = 4.0, progress: bool = False
) -> dict:
    """Write `videos` demo videos into out_dir; return the manifest."""
    if videos < 1 or size < 16 or size % 2 or seconds <= 0:
        raise ValueError(
            f"need videos >= 1, an even size >= 16 and seconds > 0; got videos={videos}, "
            f"size={size}, seconds={seconds}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_frames = int(round(seconds * FPS))
    manifest = {"seed": seed, "kind": "demo", "videos": []}
    iterator = range(videos)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="demo footage", unit="video")
    for i in iterator:
        shot = Shot(rng, size, num_frames)
        name = f"demo{i:03d}"
        encode_video(out / f"{name}.mp4", (shot.frame(k) for k in range(num_frames)), FPS, size, size)
        sidecar = {"captions": [{"start_frame": 0, "end_frame": num_frames, "caption": shot.caption}]}
        (out / f"{name}.json").write_text(json.dumps(sidecar, indent=1))
        manifest["videos"].append(
            {
                "file": f"{name}.mp4",
                "caption": shot.caption,
                "fps": float(FPS),
                "width": size,
                "height": size,
                "num_frames": num_frames,
                "cuts": [],
            }
        )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m curation.demo_footage", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output directory (created if missing)")
    p.add_argument("--videos", type=int, default=48, help="number of videos (default 48)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical bytes")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels (square; default 128)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each video (default 4)")
    a = p.parse_args(argv)
    m = generate(a.out, videos=a.videos, seed=a.seed, size=a.size, seconds=a.seconds, progress=True)
    print(f"wrote {len(m['videos'])} demo videos and {Path(a.out) / 'manifest.json'}")


if __name__ == "__main__":
    main()
