"""`make demo`: the whole framework end to end on CPU in minutes, and evidence that the model learns.

    python -m lightning_modules.demo --out demo_out          (what `make demo` runs)
    python -m lightning_modules.demo --out /tmp/d --quick    (reduced size: the slow test's run)

Stages (each with a progress bar), every one through the same entry point a user calls:
  1. footage   `python -m curation.demo_footage`: one-shot videos of a shape gliding over a
               panning background, with caption sidecars.
  2. curate    `python -m curation configs/curate/demo.yaml`: scenes, motion, shards, report.html.
  3. train     `python -m lightning_modules fit --config configs/train/demo.yaml` (pixel-space DiT,
               EMA with warm-up; loss logged to CSV).
  4. sample    the final checkpoint (EMA weights): unconditional samples, and prediction of held-out
               clips from their first frames; mp4s, `samples/grid.png` and `samples/grid.gif`.
  5. evaluate  FVD on the held-out val split with one random-init I3D (fixed seed: uncalibrated, the
               numbers compare only with each other) and one protocol for three numbers: the
               untrained model (same sampler), the final model, and real-vs-real (train clips vs
               val clips, the floor). Writes `metrics.json` and `loss.png`.

Real clips come from the training data module itself (same decode, frames, stride and size as
training), so real and generated clips differ only in where they come from.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = ROOT / "configs/train/demo.yaml"
CURATE_CONFIG = ROOT / "configs/curate/demo.yaml"

# --quick: the reduced run of tests/test_demo.py (same stages, fewer videos, steps and clips)
QUICK = {"videos": 24, "steps": 150, "eval_clips": 24}
CHECKPOINT_EVERY = 50  # every_n_train_steps of the ModelCheckpoint in configs/train/demo.yaml


def _run(cmd: list[str], what: str) -> float:
    """Run a stage's command (its own progress bars go to the terminal); seconds taken."""
    print(f"\n== {what}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"demo: stage '{what}' failed (exit {done.returncode}); its output is above")
    return time.time() - t0


def _loss_curve(log_dir: Path) -> tuple[list[int], list[float]]:
    """(steps, train/loss) from the CSV logger's metrics.csv of the run."""
    files = sorted(log_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no metrics.csv under {log_dir}: configs/train/demo.yaml must use CSVLogger")
    steps, losses = [], []
    with open(files[-1]) as f:
        for row in csv.DictReader(f):
            value = row.get("train/loss_step") or row.get("train/loss")
            if value:
                steps.append(int(row["step"]))
                losses.append(float(value))
    return steps, losses


def plot_loss(steps: list[int], losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="train/loss")
    if len(losses) >= 10:
        k = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("make demo: training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> uint8, rounded."""
    return ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def demo_datamodule(data_dir: Path, overrides: list[str] = ()):
    """The data module of configs/train/demo.yaml on `data_dir` (plus the run's `--data.*` flags, so
    real clips have the trained shape), set up, in-process."""
    from unittest import mock

    from lightning_modules.__main__ import cli_main

    flags = [
        "--config",
        str(TRAIN_CONFIG),
        f"--data.init_args.data_dir={data_dir}",
        *[f for f in overrides if f.startswith("--data.")],
        "--data.init_args.num_workers=0",
    ]
    with mock.patch.object(sys, "argv", [sys.argv[0]]):  # the CLI reads only `flags`
        dm = cli_main(flags, run=False).datamodule
    dm.setup("fit")
    return dm


def real_clips(dm, split: str, count: int) -> torch.Tensor:
    """`count` clips (B, 3, T, H, W) in [-1, 1] of `split` through the data module (training decode)."""
    data_dir = dm.hparams.get("data_dir", "the data folder") if hasattr(dm, "hparams") else "the data folder"
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    out, n = [], 0
    for batch in loader:
        if hasattr(dm, "on_after_batch_transfer"):
            batch = dm.on_after_batch_transfer(batch, 0)
        video = batch["video"].float()  # (b, 3, T, H, W)
        out.append(video)
        n += video.shape[0]
        if n >= count:
            break
    if n < count:
        raise SystemExit(
            f"demo: the {split} split of {data_dir} gives {n} clips, fewer than the {count} FVD needs; "
            "generate more footage (--videos) or lower --eval-clips"
        )
    return torch.cat(out)[:count]


def save_grid(rows: list[torch.Tensor], labels: list[str], png: Path, gif: Path, scale: int = 6) -> None:
    """rows: (n_i, 3, T, H, W) in [-1, 1]. PNG: one clip per row, frames left to right, blocks of
    rows separated by a gap. GIF: the first clips of every block side by side, playing."""
    from PIL import Image, ImageDraw

    blocks = []
    for videos in rows:
        v = _to_uint8(videos).permute(0, 3, 2, 4, 1).numpy()  # (n, H, T, W, 3)
        n, h, t, w, _ = v.shape
        blocks.append(v.reshape(n * h, t * w, 3))
    width = max(b.shape[1] for b in blocks) * scale
    label_w, gap = 150, 4 * scale
    height = sum(b.shape[0] * scale + gap for b in blocks)
    canvas = Image.new("RGB", (label_w + width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for block, label in zip(blocks, labels):
        img = Image.fromarray(block).resize((block.shape[1] * scale, block.shape[0] * scale), Image.NEAREST)
        canvas.paste(img, (label_w, y))
        draw.text((4, y + 4), label, fill=(0, 0, 0))
        y += img.height + gap
    canvas.save(png)
    # GIF: up to 8 clips per block in a row, one block per row
    per = min(8, min(r.shape[0] for r in rows))
    frames_u8 = [_to_uint8(r[:per]) for r in rows]  # (per, 3, T, H, W)
    t = min(f.shape[2] for f in frames_u8)
    pictures = []
    for k in range(t):
        strip = [
            np.concatenate([f[i, :, k].permute(1, 2, 0).numpy() for i in range(per)], axis=1)
            for f in frames_u8
        ]
        pic = np.concatenate(strip, axis=0)
        pictures.append(
            Image.fromarray(pic).resize((pic.shape[1] * scale, pic.shape[0] * scale), Image.NEAREST)
        )
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=160, loop=0)


def write_mp4s(videos: torch.Tensor, folder: Path, prefix: str, fps: int = 12, scale: int = 4) -> list[Path]:
    """Each (3, T, H, W) video as an H.264 mp4, upscaled `scale`x (nearest) so players show it."""
    from curation.synthetic import encode_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    u8 = _to_uint8(videos).permute(0, 2, 3, 4, 1).numpy()  # (n, T, H, W, 3)
    for i, clip in enumerate(u8):
        clip = clip.repeat(scale, axis=1).repeat(scale, axis=2)
        path = folder / f"{prefix}_{i:03d}.mp4"
        encode_video(path, list(clip), fps, clip.shape[2], clip.shape[1])
        paths.append(path)
    return paths


def evaluate_demo(args, ckpt: Path, out: Path, train_info: dict) -> dict:
    from tqdm.auto import tqdm

    from lightning_modules.metrics.detectors import load_fvd_detector
    from lightning_modules.metrics.frechet import GaussianStats
    from lightning_modules.metrics.fvd import fvd_from_stats
    from lightning_modules.metrics.protocols import get_protocol
    from lightning_modules.sample import task_mask
    from lightning_modules.video_diffusion import VideoDiffusion

    data_dir = out / "curated"
    final = VideoDiffusion.load_for_sampling(str(ckpt), use_ema=True)
    T, H, W = final.sample_shape
    n = args.eval_clips
    dm = demo_datamodule(data_dir, args.train_flag)
    real_val = real_clips(dm, "val", n)  # (n, 3, T, H, W)
    real_train = real_clips(dm, "train", n)
    if tuple(real_val.shape[2:]) != (T, H, W):
        raise SystemExit(
            f"demo: real clips are {tuple(real_val.shape[2:])} but the model trained on {(T, H, W)}: pass data "
            "overrides with --train-flag=--data.init_args.KEY=VALUE so that both see them"
        )

    # the untrained model: the same architecture and sampler at its initialisation (seeded)
    torch.manual_seed(args.seed)
    hparams = {k: v for k, v in final.hparams.items() if not k.startswith("_")}
    untrained = VideoDiffusion(**hparams).eval()
    untrained.sample_shape = final.sample_shape

    samples = out / "samples"
    fakes = {}
    for name, model in (("untrained", untrained), ("final", final)):
        videos = []
        bar = tqdm(range(0, n, args.batch_size), desc=f"sample {name}", unit="batch")
        for start in bar:  # sample i depends on (seed, i) only
            b = min(args.batch_size, n - start)
            videos.append(
                model.generate(
                    b, num_frames=T, height=H, width=W, seed=args.seed, first_index=start, batch_size=b
                )
            )
        fakes[name] = torch.cat(videos)
    k = 2  # prediction: the first k frames of held-out clips are given
    # grid rows: held-out clips spread over the val set (consecutive ones come from the same video)
    spread = torch.linspace(0, n - 1, args.grid_rows).round().long()
    given = real_val[spread]
    mask = task_mask("predict", T, H, W, k=k)[None].expand(given.shape[0], -1, -1, -1, -1)
    predicted = final.generate(
        given.shape[0], num_frames=T, height=H, width=W, seed=args.seed, given=given, mask=mask
    )
    write_mp4s(fakes["final"][: args.grid_rows], samples, "uncond")
    write_mp4s(predicted, samples, "predict")
    save_grid(
        [
            given,
            fakes["final"][: args.grid_rows],
            predicted,
            fakes["untrained"][: args.grid_rows // 2],
        ],
        [
            "held-out real clips",
            "generated (final, EMA)",
            f"prediction: first {k}\nframes given",
            "untrained model\n(x0 at init:\nconstant grey)",
        ],
        samples / "grid.png",
        samples / "grid.gif",
    )

    protocol = get_protocol("fvd2048_16f").override(num_frames=T, num_real=n, num_fake=n)
    detector = load_fvd_detector(protocol, allow_random=True, random_dir=str(out / "detector"))

    def stats(videos: torch.Tensor, desc: str) -> GaussianStats:
        feats = [
            detector(_to_uint8(videos[start : start + args.batch_size])).numpy()
            for start in tqdm(range(0, len(videos), args.batch_size), desc=f"I3D {desc}", unit="batch")
        ]
        feats = np.concatenate(feats)  # (n, 400)
        return GaussianStats(dim=feats.shape[1]).update(feats)

    val_stats = stats(real_val, "real val")
    fvd = {
        "untrained": fvd_from_stats(val_stats, stats(fakes["untrained"], "untrained"), protocol),
        "final": fvd_from_stats(val_stats, stats(fakes["final"], "final"), protocol),
        "real_vs_real": fvd_from_stats(val_stats, stats(real_train, "real train"), protocol),
    }
    return {
        "fvd": fvd,
        "calibrated": detector.calibrated,
        "status": "uncalibrated: random-init I3D (seed 0), the three numbers compare only with each other",
        "protocol": {
            **protocol.as_dict(),
            "real": f"{n} clips of the val split through the training data module ({T}x{H}x{W})",
            "fake": f"{n} unconditional samples per model, seeds fixed, {final.hparams.sample_steps} sampler steps",
            "real_vs_real": f"{n} train-split clips vs the same {n} val-split clips",
            "detector": detector.describe(),
        },
        "train": train_info,
        "samples": {"grid_png": str(samples / "grid.png"), "grid_gif": str(samples / "grid.gif")},
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--videos", type=int, default=48, help="demo videos to generate (default 48)")
    p.add_argument("--steps", type=int, help="training steps (default: configs/train/demo.yaml's max_steps)")
    p.add_argument("--eval-clips", type=int, default=64, help="real and generated clips per FVD (default 64)")
    p.add_argument("--grid-rows", type=int, default=8, help="clips per block of grid.png (default 8)")
    p.add_argument("--batch-size", type=int, default=16, help="sampling / detector batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help=f"reduced run for tests: {QUICK} (overrides those flags)"
    )
    p.add_argument(
        "--train-flag",
        action="append",
        default=[],
        metavar="--KEY=VALUE",
        help="extra flag for the training CLI, repeatable (e.g. --train-flag=--model.lr=3e-4)",
    )
    p.add_argument("--skip-to", choices=("curate", "train", "evaluate"), help="reuse earlier stages' outputs")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.eval_clips = QUICK["videos"], QUICK["eval_clips"]
        args.steps = args.steps or QUICK["steps"]
    if args.steps is not None and args.steps % CHECKPOINT_EVERY:
        p.error(
            f"--steps {args.steps}: use a multiple of {CHECKPOINT_EVERY} (the checkpoint interval of "
            "configs/train/demo.yaml), so that the last step is the one evaluated"
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    order = ["footage", "curate", "train", "evaluate"]
    first = order.index(args.skip_to) if args.skip_to else 0
    t0 = time.time()
    timings = {}
    if first <= 0:
        timings["footage"] = _run(
            [
                py,
                "-m",
                "curation.demo_footage",
                str(out / "raw"),
                "--videos",
                str(args.videos),
                "--seed",
                str(args.seed),
            ],
            "1/5 footage",
        )
    if first <= 1:
        timings["curate"] = _run(
            [py, "-m", "curation", str(CURATE_CONFIG), f"raw={out / 'raw'}", f"out={out / 'curated'}"],
            "2/5 curate",
        )
    run_dir = out / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    needs = {1: out / "raw", 2: out / "curated" / "shards" / "index.json", 3: ckpt}
    if first in needs and not needs[first].exists():
        raise SystemExit(
            f"demo: --skip-to {args.skip_to} needs {needs[first]} from an earlier run; run without --skip-to"
        )
    if first <= 2:
        if run_dir.exists():  # a fresh run: no stale checkpoint or loss log of an earlier one is read back
            import shutil

            shutil.rmtree(run_dir)
        cmd = [
            py,
            "-m",
            "lightning_modules",
            "fit",
            "--config",
            str(TRAIN_CONFIG),
            f"--data.init_args.data_dir={out / 'curated'}",
            f"--trainer.default_root_dir={run_dir}",
        ]
        if args.steps:
            cmd.append(f"--trainer.max_steps={args.steps}")
        cmd += args.train_flag
        timings["train"] = _run(cmd, "3/5 train")
    steps, losses = _loss_curve(run_dir)
    plot_loss(steps, losses, out / "loss.png")
    ckpt_steps = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    if args.steps and ckpt_steps != args.steps:
        raise SystemExit(
            f"demo: {ckpt} holds step {ckpt_steps}, not the last step {args.steps}: make --steps a multiple of the "
            "checkpoint interval (every_n_train_steps in configs/train/demo.yaml)"
        )
    train_info = {
        "steps": int(ckpt_steps),
        "seconds": round(timings["train"], 1) if "train" in timings else None,  # None: --skip-to evaluate
        "final_loss": float(np.mean(losses[-5:])) if losses else None,
        "first_loss": float(np.mean(losses[:5])) if losses else None,
        "checkpoint": str(ckpt),
    }
    print("\n== 4/5 sample and 5/5 evaluate", flush=True)
    t_eval = time.time()
    metrics = evaluate_demo(args, ckpt, out, train_info)
    timings["sample_evaluate"] = time.time() - t_eval
    metrics["seconds"] = {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False))
    f = metrics["fvd"]
    print(
        f"\ndemo done in {time.time() - t0:.0f} s\n"
        f"  curated shards + report  {out / 'curated'} (report.html)\n"
        f"  checkpoint               {ckpt}\n"
        f"  samples                  {out / 'samples'} (grid.png, grid.gif, *.mp4)\n"
        f"  loss curve               {out / 'loss.png'}  loss {train_info['first_loss']:.3f} -> {train_info['final_loss']:.3f}"
        f" in {train_info['steps']} steps\n"
        f"  metrics                  {out / 'metrics.json'}\n"
        f"  FVD (uncalibrated: random I3D; compare only with each other, lower is better):\n"
        f"    untrained {f['untrained']:.1f}   final {f['final']:.1f}   real-vs-real floor {f['real_vs_real']:.1f}"
    )
    return metrics


if __name__ == "__main__":
    main()
