"""Data loading benchmark, ours vs a baseline measured in the same run.

    python bench/dataloader.py [--clips 64] [--mixed 400] [--workers 2] [--out bench/results/dataloader.json]

1. loader_vs_decode: throughput of `VideoShardsDataModule` with the training defaults
   (``--workers`` persistent loader processes: tar parsing, json, frame planning, decord decode,
   crop, collation, worker IPC; uint8 batches, scaled to [-1, 1] after the transfer as a trainer
   does) over bare decord decoding the same mp4 bytes (same frames, same decoder-side resize) in a
   warm pool of as many processes that hands nothing on; 360p sources -> 16 x 256 x 256 clips.
   1.0 = the loader adds nothing to decoding; goal >= 0.85. The metric counts clips per
   CPU-second (main process + worker processes, from /proc), because wall time on a shared machine
   swings several-fold between runs; the wall-clock ratio, clips/s per worker, the ratio with
   scaling in the main process (evaluation loaders, CPU training) and the first epoch's ratio
   (worker start-up included) are printed and stored in "details".
2. Token utilisation (real tokens / tokens paid for) on one corpus of mixed aspect ratios and
   durations under the same per-batch token budget:
   - padding_utilization: every clip padded to the corpus' largest (T, H, W) (the baseline a
     fixed-shape model pays when it must keep native shapes), batch size = budget // max tokens;
   - bucketing_utilization: the bucketed datamodule (batch size per bucket from the budget):
     tokens in the emitted batches / (batches x budget);
   - packing_utilization: the packing datamodule's own counter (tokens in packs / (packs x budget)).
     Goal >= 0.97.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.buffers import release  # noqa: E402
from datamodules.decode import decode_video  # noqa: E402
from datamodules.packing import TokenGrid  # noqa: E402
from datamodules.synthetic import clip_meta, encode_mp4, make_video, write_shards  # noqa: E402
from datamodules.transforms import cover_size  # noqa: E402
from datamodules.video_shards import VideoShardsDataModule  # noqa: E402


def rendered(seed: int, t: int, h: int, w: int) -> np.ndarray:
    video, _ = make_video(seed, num_frames=t, height=h, width=w, label=seed % 8)  # (3, T, H, W) in [-1, 1]
    return ((video.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def write_corpus(root: Path, shapes: list[tuple[int, int, int]], *, crf: int, prefix: str) -> list[dict]:
    samples = []
    for i, (t, h, w) in enumerate(shapes):
        key = f"{prefix}{i:05d}_s0_c0"
        samples.append({"__key__": key, "mp4": encode_mp4(rendered(i, t, h, w), 24.0, crf=crf),
                        "json": clip_meta(key, num_frames=t, fps=24.0, height=h, width=w), "txt": f"clip {i}"})  # fmt: skip
    write_shards(str(root / f"{prefix}-%06d.tar"), samples, maxcount=max(1, len(samples) // 8))
    return samples


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of live processes (/proc), for workers that are never reaped."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


@contextlib.contextmanager
def _clock(wall: list, cpu: list, pids: list[int]):
    """Append the wall time and the CPU time (this process + `pids`) of the block."""
    c0, t0 = _cpu_seconds([os.getpid(), *pids]), time.perf_counter()
    yield
    wall.append(time.perf_counter() - t0)
    cpu.append(_cpu_seconds([os.getpid(), *pids]) - c0)


def _decode_job(args):
    data, idx, size = args
    return decode_video(data, idx, size=size).shape[0]


def _drain(loader) -> int:
    """Clips in one epoch; each batch is handed on as a trainer does: scaled in the iterator (host
    scaling) or, with the training defaults, released once 'transferred' (buffers.release: what
    `on_after_batch_transfer` does after the copy to the accelerator, minus the scaling done there)."""
    n = 0
    for b in loader:
        release(b)
        n += len(b["meta"])
    return n


def _worker_pids(loader) -> list[int]:
    return [w.pid for w in loader._iterator._workers]  # the persistent workers of the last pass


def loader_vs_decode(root: Path, *, clips: int, workers: int, repeats: int = 5) -> dict:
    """360p sources (the smallest curated resolution in Open-Sora's pipeline) -> 16 x 256 x 256.

    Both sides run warm (a pool / persistent loader workers already started, as in every epoch of
    a run but the first) and are timed back to back. The loader runs with the training defaults: a
    trainer takes uint8 batches and scales them after the transfer (on the accelerator), so the
    loader's own work ends at the batch; the variant that scales in the main process (what
    evaluation loaders and CPU training pay) and the cold first epoch (worker start-up) are printed
    and stored too."""
    t, h, w, frames, stride, side = 40, 360, 640, 16, 2, 256
    samples = write_corpus(root, [(t, h, w)] * clips, crf=23, prefix="speed")
    kw = dict(train_shards=str(root / "speed-*.tar"), num_frames=frames, height=side, width=side, frame_stride=stride,
              batch_size=4, num_workers=workers, batches_per_epoch=clips // 4, shuffle_buffer=16,
              latent_downsample=(1, 8, 8))  # fmt: skip
    # the baseline decodes exactly what the loader decodes: same frames, same decoder-side resize
    dm = VideoShardsDataModule(**{**kw, "persistent_workers": False})
    metas = [m for b in dm.train_dataloader() for m in b["meta"]]
    by_key = {s["__key__"]: s["mp4"] for s in samples}
    cover = cover_size(h, w, side, side)
    jobs = [(by_key[m["key"]], m["frame_indices"], cover) for m in metas]
    runs = ("decode", "loader", "host_scaling", "cold")
    wall: dict[str, list] = {k: [] for k in runs}
    cpu: dict[str, list] = {k: [] for k in runs}
    ctx = mp.get_context("fork")
    pool = ctx.Pool(workers)
    pool.map(_decode_job, jobs[:workers])  # warm the pool
    pool_pids = [p.pid for p in pool._pool]
    loaders = {}
    for name, on_device in (("loader", True), ("host_scaling", False)):
        loaders[name] = VideoShardsDataModule(**kw).train_dataloader()
        loaders[name].normalize_on_device = on_device
    for i in range(repeats):  # back to back, so each pair sees the same load on a shared machine
        with _clock(wall["decode"], cpu["decode"], pool_pids):
            pool.map(_decode_job, jobs, chunksize=1)
        for name, loader in loaders.items():
            if i == 0:  # the first epoch starts the persistent workers
                t0, c0 = time.perf_counter(), _cpu_seconds([os.getpid()])
                n = _drain(loader)
                if name == "loader":
                    wall["cold"].append(time.perf_counter() - t0)
                    cpu["cold"].append(_cpu_seconds([os.getpid(), *_worker_pids(loader)]) - c0)
            with _clock(wall[name], cpu[name], _worker_pids(loader)):
                n = _drain(loader)
            assert n == len(jobs), (n, len(jobs))
    pool.close()
    pool.join()

    def ratio(clock: dict, name: str) -> float:
        return float(np.median([d / lo for d, lo in zip(clock["decode"], clock[name])]))

    cpu_ratio, wall_ratio, host_ratio = (
        ratio(cpu, "loader"),
        ratio(wall, "loader"),
        ratio(cpu, "host_scaling"),
    )
    cold_ratio = float(np.median(cpu["decode"]) / cpu["cold"][0])
    ms = {k: 1000 * float(np.median(v)) / len(jobs) for k, v in cpu.items()}
    per_s = {k: len(jobs) / float(np.median(v)) for k, v in wall.items()}
    print(f"{len(jobs)} clips of {frames}x{side}x{side} from {h}x{w}, {workers} processes each, median of {repeats} pairs:\n"
          f"  CPU:  loader {ms['loader']:.1f} ms/clip, bare decord {ms['decode']:.1f} ms/clip, "
          f"ratio {cpu_ratio:.3f}  (clips per CPU-second, ours / decode; training defaults)\n"
          f"  wall: loader {per_s['loader']:.1f} clips/s ({per_s['loader'] / workers:.1f} per worker), bare decord "
          f"{per_s['decode']:.1f} clips/s, ratio {wall_ratio:.3f}\n"
          f"  CPU, scaling to [-1, 1] in the main process (evaluation loaders, CPU training): ratio {host_ratio:.3f}\n"
          f"  CPU, first epoch with worker start-up: ratio {cold_ratio:.3f}")  # fmt: skip
    return {"loader_clips_per_s": per_s["loader"], "decode_clips_per_s": per_s["decode"],
            "loader_clips_per_s_per_worker": per_s["loader"] / workers, "wall_ratio": wall_ratio,
            "cpu_ratio": cpu_ratio, "cpu_ratio_host_scaling": host_ratio, "cpu_ratio_first_epoch": cold_ratio,
            "loader_cpu_ms_per_clip": ms["loader"], "decode_cpu_ms_per_clip": ms["decode"]}  # fmt: skip


def mixed_shapes(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Durations 4-48 frames, aspect ratios 9:16 ... 2.39:1, short sides 32-96 px (even)."""
    rng = np.random.default_rng(seed)
    aspects = [9 / 16, 3 / 4, 1.0, 4 / 3, 16 / 9, 2.39]
    shapes = []
    for _ in range(n):
        a, short = aspects[rng.integers(len(aspects))], int(rng.integers(16, 49)) * 2
        h, w = (short, int(short * a) // 2 * 2) if a >= 1 else (int(short / a) // 2 * 2, short)
        shapes.append((int(rng.integers(4, 49)), h, w))
    return shapes


def utilisation(root: Path, *, clips: int, budget: int) -> dict:
    shapes = mixed_shapes(clips)
    write_corpus(root, shapes, crf=28, prefix="mixed")
    grid = TokenGrid(patch_size=(1, 2, 2), latent_downsample=(1, 1, 1))
    cap_t, cap = 32, budget // 8  # a clip is at most 1/8 of a batch: ~9 clips per pack on this corpus
    native = [grid.fit(min(t, cap_t), h, w, max_tokens=cap) for t, h, w in shapes]
    real = sum(grid.tokens(*s) for s in native)
    # pad-to-max baseline: every clip costs the largest clip's tokens
    tmax, hmax, wmax = (max(s[i] for s in native) for i in range(3))
    per = grid.tokens(tmax, hmax, wmax)
    bs = max(1, budget // per)
    padding = real / (math.ceil(len(native) / bs) * budget)
    common = dict(train_shards=str(root / "mixed-*.tar"), num_workers=2, latent_downsample=(1, 1, 1),
                  shuffle_buffer=64, tokens_per_batch=budget)  # fmt: skip
    # batch sizes from the budget (0); buckets no larger than the packing cap, so both keep similar content
    buckets = {24: {1: (1.0, 0), 4: (1.0, 0), 8: (1.0, 0), 14: (1.0, 0)}, 32: {1: (1.0, 0), 4: (1.0, 0), 8: (1.0, 0)},
               48: {1: (1.0, 0), 2: (1.0, 0), 3: (1.0, 0)}}  # fmt: skip
    dm = VideoShardsDataModule(buckets=buckets, max_upscale=1.25, **common)
    batches = list(dm.train_dataloader())
    paid = len(batches) * budget
    used = sum(b["video"].shape[0] * grid.tokens(*b["video"].shape[2:]) for b in batches)
    bucketing = used / paid
    dm = VideoShardsDataModule(batching="pack", num_frames=cap_t, max_tokens_per_sample=cap,
                               pack_window=256, **common)  # fmt: skip
    packed = list(dm.train_dataloader())
    stats = dm.data_stats()
    assert all(sum(grid.tokens(*s) for s in b["shapes"].tolist()) <= budget for b in packed)
    print(f"utilisation on {clips} mixed clips, budget {budget} tokens/batch: pad-to-max {padding:.3f}  "
          f"bucketing {bucketing:.3f} ({len(batches)} batches)  packing {stats['utilization']:.3f} ({len(packed)} packs)")  # fmt: skip
    return {"padding": padding, "bucketing": bucketing, "packing": stats["utilization"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64, help="clips for the speed test")
    p.add_argument("--mixed", type=int, default=400, help="clips in the mixed-shape corpus")
    p.add_argument("--budget", type=int, default=16384, help="tokens per batch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "dataloader.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        speed = loader_vs_decode(Path(tmp), clips=a.clips, workers=a.workers)
        util = utilisation(Path(tmp), clips=a.mixed, budget=a.budget)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = None
    result = {
        "metrics": {
            "loader_vs_decode": {"value": speed["cpu_ratio"], "goal": 0.85, "higher_is_better": True},
            "padding_utilization": {"value": util["padding"], "goal": None, "higher_is_better": True},
            "bucketing_utilization": {"value": util["bucketing"], "goal": None, "higher_is_better": True},
            "packing_utilization": {"value": util["packing"], "goal": 0.97, "higher_is_better": True},
        },
        "details": {
            **speed,
            "workers": a.workers,
            "mixed_clips": a.mixed,
            "tokens_per_batch": a.budget,
            "loader_vs_decode": "clips per CPU-second (main + worker processes) of the datamodule (training "
            "defaults: persistent workers, uint8 batches scaled after transfer) over bare decord in a warm process "
            "pool of as many processes, median of back-to-back pairs; wall_ratio is the same in wall-clock time",
        },
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus",
        "commit": commit,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["metrics"], indent=2))
    return result


if __name__ == "__main__":
    main()
