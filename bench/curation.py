"""Curation benchmark: ratios measured side by side in one run, on the same synthetic footage.

    python bench/curation.py [--videos 6] [--short-side 720] [--seconds 8] [--keep DIR]

analysis_vs_decode       source frames per CPU-second of our single analysis pass (scenedetect detectors +
                         Farneback and phase-correlation motion + kept frames) over frames/s of a
                         pure decode of the same files to BGR frames at the same analysis resolution
                         (goal >= 0.8)
end_to_end_vs_multipass  CPU time of a reference-style pipeline (scenedetect.detect() per file,
                         then a separate seek+decode per scene for Farneback motion, then a
                         seek+decode+encode per scene) over ours end to end without CLIP
                         (tables, shards and report included), both in one process (goal >= 2)
clip_frames_per_s        frames/s through captions.Captioner with a tiny random-init open_clip
                         model (uncalibrated: a speed figure only)

Writes bench/results/curation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pure_decode(path: str, size: tuple[int, int]) -> int:
    """Decode every frame to BGR at the analysis size (FFmpeg's scaler): the floor for any analysis."""
    from av.video.reformatter import VideoReformatter

    n, scaler = 0, VideoReformatter()
    with av.open(path) as c:
        for f in c.decode(video=0):
            scaler.reformat(
                f, width=size[0], height=size[1], format="bgr24", interpolation="AREA"
            ).to_ndarray()
            n += 1
    return n


# ----------------------------------------------------------------------------- reference-style baseline


def _frames_between(path: str, start: int, end: int, fps: Fraction):
    """Seek to the keyframe before `start`, decode, yield frames [start, end) (a fresh open per call)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        t0 = s.start_time or 0
        c.seek(int(t0 + start / fps / s.time_base), stream=s, backward=True, any_frame=False)
        for f in c.decode(s):
            i = round(float((f.pts - t0) * s.time_base * fps))
            if i >= end:
                break
            if i >= start:
                yield f


def baseline(paths: list[str], out: Path, flow_fps: float) -> int:
    """The way reference pipelines work: detect, then one decode per scene for motion, then one
    decode per scene for extraction. Returns the number of clips written."""
    from scenedetect import ContentDetector, detect

    n = 0
    for path in paths:
        with av.open(path) as c:
            fps = c.streams.video[0].average_rate
        scenes = detect(path, ContentDetector(), backend="pyav", start_in_scene=True)
        spans = [(a.frame_num, b.frame_num) for a, b in scenes]
        for k, (a, b) in enumerate(spans):
            step = max(1, round(float(fps) / flow_fps))
            prev, mags = None, []
            for j, f in enumerate(_frames_between(path, a, b, fps)):  # motion: its own decode
                g = f.to_ndarray(format="gray")
                g = cv2.resize(
                    g, (max(2, g.shape[1] * 96 // min(g.shape)), max(2, g.shape[0] * 96 // min(g.shape)))
                )
                if prev is not None and j % step == 0:
                    flow = cv2.calcOpticalFlowFarneback(prev, g, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                    mags.append(float(np.sqrt((flow**2).sum(-1)).mean()))
                prev = g
            with av.open(str(out / f"{Path(path).stem}_{k:04d}.mp4"), "w") as oc:  # extraction: another
                st = oc.add_stream("libx264", rate=fps, options={"crf": "22", "preset": "veryfast"})
                st.pix_fmt = "yuv420p"
                first = True
                for f in _frames_between(path, a, b, fps):
                    if first:
                        st.width, st.height, first = f.width, f.height, False
                    f.pts = None
                    oc.mux(st.encode(f))
                oc.mux(st.encode())
            n += 1
    return n


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--short-side", type=int, default=720)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--reps", type=int, default=3, help="repetitions of the analysis comparison (best kept)")
    p.add_argument("--e2e-reps", type=int, default=1, help="repetitions of the end-to-end comparison")
    p.add_argument("--keep", default=None, help="keep footage and outputs in this directory")
    a = p.parse_args(argv)
    cv2.setNumThreads(1)

    from curation.analysis import analyze, detector_size
    from curation.config import AnalysisConfig, load_config
    from curation.pipeline import run
    from curation.synthetic import generate

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_curation_"))
    raw = work / "raw"
    if not (raw / "manifest.json").exists():
        generate(
            raw,
            videos=a.videos,
            seed=0,
            short_side=a.short_side,
            min_seconds=a.seconds,
            max_seconds=a.seconds * 1.25,
            progress=True,
        )
    manifest = json.loads((raw / "manifest.json").read_text())
    paths = [str(raw / v["file"]) for v in manifest["videos"]]
    frames = sum(v["num_frames"] for v in manifest["videos"])
    print(f"footage: {len(paths)} videos, {frames} frames, short side {a.short_side}")

    # 1. analysis pass vs pure decode at the analysis resolution: per video, interleaved, best of
    # `--reps`, in CPU seconds of this process (the machine is shared; wall time is printed too)
    acfg = AnalysisConfig()
    cpu_dec = cpu_ana = wall_dec = wall_ana = 0.0
    for v, path in zip(manifest["videos"], paths):
        size = detector_size(v["width"], v["height"], acfg.min_width)
        d, da, w, wa = [], [], [], []
        for _ in range(a.reps):
            c0, w0 = time.process_time(), time.perf_counter()
            pure_decode(path, size)
            d.append(time.process_time() - c0), w.append(time.perf_counter() - w0)
            c0, w0 = time.process_time(), time.perf_counter()
            analyze(path, acfg, fps=v["fps"])
            da.append(time.process_time() - c0), wa.append(time.perf_counter() - w0)
        cpu_dec, cpu_ana, wall_dec, wall_ana = (
            cpu_dec + min(d),
            cpu_ana + min(da),
            wall_dec + min(w),
            wall_ana + min(wa),
        )
    dec_fps, ana_fps = frames / cpu_dec, frames / cpu_ana
    print(f"pure decode at analysis size: {dec_fps:8.0f} frames/CPU-s ({frames / wall_dec:.0f} wall)")
    print(f"analysis pass               : {ana_fps:8.0f} frames/CPU-s ({frames / wall_ana:.0f} wall)")
    print(f"analysis_vs_decode          : {ana_fps / dec_fps:.3f} (wall {wall_dec / wall_ana:.3f})")

    # 2. end to end without CLIP vs the multipass baseline (same process, one worker each)
    out_ours, out_base = work / "ours", work / "baseline"
    import shutil

    t_ours, t_base, w_ours, w_base = [], [], [], []
    for _ in range(a.e2e_reps):
        shutil.rmtree(out_ours, ignore_errors=True)
        shutil.rmtree(out_base, ignore_errors=True)
        out_base.mkdir(parents=True)
        cfg = load_config(
            None, [f"raw={raw}", f"out={out_ours}", "caption.enabled=false", "workers=1", "progress=false"]
        )
        c0, w0 = time.process_time(), time.perf_counter()
        rep = run(cfg)
        t_ours.append(time.process_time() - c0), w_ours.append(time.perf_counter() - w0)
        c0, w0 = time.process_time(), time.perf_counter()
        n_base = baseline(paths, out_base, acfg.flow_fps)
        t_base.append(time.process_time() - c0), w_base.append(time.perf_counter() - w0)
    t_ours, t_base = min(t_ours), min(t_base)
    print(
        f"ours end to end (no CLIP)   : {t_ours:7.2f} CPU-s, {min(w_ours):.2f} wall ({rep['num_ok']} sources, "
        "tables, shards and report included)"
    )
    print(f"multipass baseline          : {t_base:7.2f} CPU-s, {min(w_base):.2f} wall ({n_base} scene clips)")
    print(f"end_to_end_vs_multipass     : {t_base / t_ours:.2f}x (wall {min(w_base) / min(w_ours):.2f}x)")

    metrics = {
        "analysis_vs_decode": {"value": round(ana_fps / dec_fps, 4), "goal": 0.8, "higher_is_better": True},
        "end_to_end_vs_multipass": {
            "value": round(t_base / t_ours, 4),
            "goal": 2.0,
            "higher_is_better": True,
        },
        "analysis_frames_per_cpu_s": {"value": round(ana_fps, 1), "goal": None, "higher_is_better": True},
    }

    # 3. CLIP stage with the tiny random-init model
    try:
        from curation.captions import CaptionConfig, Captioner, save_tiny_model
    except ImportError:
        print("captions.py not available: CLIP stage skipped")
    else:
        tiny = save_tiny_model(work / "tiny")
        cap = Captioner(CaptionConfig(model=tiny["model"], pretrained=tiny["pretrained"], device="cpu"))
        rng = np.random.default_rng(0)
        items = [
            {
                "key": f"k{i}",
                "frames": rng.integers(0, 255, (4, 224, 224, 3), dtype=np.uint8),
                "source_caption": None,
                "motion": {"motion_mean": 0.1},
            }
            for i in range(32)
        ]
        cap.caption_clips(items[:2])  # warm-up
        t0 = time.perf_counter()
        cap.caption_clips(items)
        clip_fps = 4 * len(items) / (time.perf_counter() - t0)
        print(f"CLIP stage (tiny model, uncalibrated): {clip_fps:.1f} frames/s")
        metrics["clip_frames_per_s"] = {
            "value": round(clip_fps, 1),
            "goal": None,
            "higher_is_better": True,
            "note": "tiny random-init model: uncalibrated, speed only",
        }

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "metrics": metrics,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} "
        f"{len(__import__('os').sched_getaffinity(0))} cpu",
        "commit": commit,
        "footage": {"videos": len(paths), "frames": frames, "short_side": a.short_side},
    }
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "curation.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {res_dir / 'curation.json'}")
    assert math.isfinite(metrics["analysis_vs_decode"]["value"])
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
