"""Standalone evaluator: FVD (and per-frame FID, frame/video IS) of fake videos against a held-out set.

    python -m lightning_modules.evaluate --real OUT/shards --fake samples/ --metrics fvd,fid,is \
        --protocol fvd2048_16f --out report.json

`--real`: shards (folder with `{split}-*.tar`, a .tar, a glob), a folder of videos (mp4/gif/...)
or a folder of frame folders. `--fake`: the same kinds, or a training checkpoint (`.ckpt`) to
sample from with EMA weights. The JSON report records the full protocol, detector file sha256,
counts, frames, stride, resize and covariance divisor, and whether the detectors were the real
files (`"calibrated": true`) or random stand-ins (`--allow-random-detector`, `uncalibrated`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from lightning_modules.metrics.detectors import (
    ENV_C3D_TORCHSCRIPT,
    ENV_I3D_STATE_DICT,
    ENV_I3D_TORCHSCRIPT,
    ENV_INCEPTION,
    DetectorWeightsError,
    load_fvd_detector,
)
from lightning_modules.metrics.fvd import (
    fake_statistics_from_folder,
    fake_statistics_from_generator,
    fvd_from_stats,
    real_statistics,
)
from lightning_modules.metrics.protocols import PROTOCOLS, get_protocol

METRICS = ("fvd", "fid", "is", "isv")  # is: per-frame Inception Score; isv: video IS (C3D, UCF-101)
UNCALIBRATED = "uncalibrated"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lightning_modules.evaluate",
        description="FVD / FID / IS of fake videos against a held-out set, under a named, recorded protocol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--real",
        required=True,
        help="held-out set: shards folder/.tar/glob, folder of videos or of frame folders",
    )
    p.add_argument("--real-split", default="val", help="shard split to read when --real is a shards folder")
    p.add_argument(
        "--fake", required=True, help="folder of generated videos / frame folders, or a .ckpt to sample from"
    )
    p.add_argument(
        "--metrics",
        default="fvd",
        help=f"comma-separated subset of {','.join(METRICS)} (is: per-frame IS; isv: video IS with C3D)",
    )
    p.add_argument("--protocol", default="fvd2048_16f", help=f"preset: {', '.join(PROTOCOLS)}")
    p.add_argument("--out", default="eval_report.json", help="JSON report path")
    g = p.add_argument_group("custom protocol (override fields of the preset; the name becomes custom(...))")
    g.add_argument("--num-real", type=int)
    g.add_argument("--num-fake", type=int)
    g.add_argument("--num-frames", type=int)
    g.add_argument("--stride", type=int, help="temporal subsampling of real clips")
    g.add_argument("--real-selection", choices=("first", "random"))
    g.add_argument("--clip-start", choices=("first", "random"))
    g.add_argument("--seed", type=int, help="seed of real-clip selection")
    g.add_argument("--cov-divisor", choices=("N", "N-1"))
    g.add_argument("--sqrtm", choices=("scipy", "eig"))
    w = p.add_argument_group("detector files (never downloaded)")
    w.add_argument("--i3d-torchscript", help=f"StyleGAN-V i3d_torchscript.pt (or ${ENV_I3D_TORCHSCRIPT})")
    w.add_argument("--i3d-state-dict", help=f"VideoGPT/TATS i3d_pretrained_400.pt (or ${ENV_I3D_STATE_DICT})")
    w.add_argument(
        "--c3d-torchscript", help=f"StyleGAN-V c3d_ucf101.pt for video IS (or ${ENV_C3D_TORCHSCRIPT})"
    )
    w.add_argument(
        "--inception-weights", help=f"torch-fidelity InceptionV3 .pth for FID/IS (or ${ENV_INCEPTION})"
    )
    w.add_argument(
        "--allow-random-detector",
        action="store_true",
        help="random-init stand-ins for missing files: smoke runs only, report marked uncalibrated",
    )
    w.add_argument(
        "--fid-antialias",
        type=int,
        default=0,
        choices=(0, 1),
        help="torchmetrics FID resize antialias; default 0 = the TF1 bilinear resize of the original "
        "FID, which published FIDs use (torchmetrics >= 1.8 defaults to 1, not TF1-compatible)",
    )
    r = p.add_argument_group("running")
    r.add_argument("--real-cache", help="real-statistics .npz: reused when it matches, written otherwise")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--no-progress", action="store_true")
    s = p.add_argument_group("sampling from a checkpoint (--fake *.ckpt)")
    s.add_argument("--height", type=int, help="sample height (default: the checkpoint's training clips)")
    s.add_argument("--width", type=int, help="sample width (default: the checkpoint's training clips)")
    s.add_argument("--steps", type=int)
    s.add_argument("--cfg-scale", type=float)
    s.add_argument("--sample-seed", type=int, default=0)
    s.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of EMA")
    return p


def resolve_protocol(args):
    base = get_protocol(args.protocol)
    return base.override(
        num_real=args.num_real,
        num_fake=args.num_fake,
        num_frames=args.num_frames,
        stride=args.stride,
        real_selection=args.real_selection,
        clip_start=args.clip_start,
        seed=args.seed,
        cov_divisor=args.cov_divisor,
        sqrtm=args.sqrtm,
    )


def evaluate(args) -> dict:
    t0 = time.time()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    protocol = resolve_protocol(args)
    progress = not args.no_progress
    detector = load_fvd_detector(
        protocol,
        i3d_torchscript=args.i3d_torchscript,
        i3d_state_dict=args.i3d_state_dict,
        allow_random=args.allow_random_detector,
        device=args.device,
    )
    frame_metrics = video_is = None
    if "fid" in metrics or "is" in metrics:
        from lightning_modules.metrics.fid_is import FrameFIDIS

        frame_metrics = FrameFIDIS(
            weights=args.inception_weights,
            allow_random=args.allow_random_detector,
            fid="fid" in metrics,
            inception_score="is" in metrics,
            antialias=bool(args.fid_antialias),
            device=args.device,
        )
    if "isv" in metrics:
        from lightning_modules.metrics.fid_is import VideoIS

        video_is = VideoIS(
            weights=args.c3d_torchscript, allow_random=args.allow_random_detector, device=args.device
        )

    real_extra = (
        frame_metrics.update_real if frame_metrics is not None and frame_metrics.fid is not None else None
    )
    real, real_info = real_statistics(
        args.real,
        protocol,
        detector,
        split=args.real_split,
        batch_size=args.batch_size,
        cache=args.real_cache,
        progress=progress,
        extra=real_extra,
    )

    def fake_extra(batch):
        if frame_metrics is not None:
            frame_metrics.update_fake(batch)
        if video_is is not None:
            video_is.update(batch)

    extra = fake_extra if (frame_metrics or video_is) else None
    if str(args.fake).endswith(".ckpt"):
        from lightning_modules.video_diffusion import VideoDiffusion

        model = VideoDiffusion.load_for_sampling(args.fake, use_ema=not args.no_ema, map_location=args.device)
        _, trained_h, trained_w = model.sample_shape or (None, None, None)  # as `sample.py` does
        height, width = args.height or trained_h, args.width or trained_w
        if height is None or width is None:
            raise ValueError(
                f"{args.fake} records no training clip shape: pass --height and --width (the training resolution)"
            )
        fake, fake_info = fake_statistics_from_generator(
            model.generate,
            protocol,
            detector,
            height=height,
            width=width,
            seed=args.sample_seed,
            batch_size=args.batch_size,
            progress=progress,
            extra=extra,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
        )
        fake_info.update(checkpoint=str(args.fake), ema=not args.no_ema)
    else:
        fake, fake_info = fake_statistics_from_folder(
            args.fake, protocol, detector, batch_size=args.batch_size, progress=progress, extra=extra
        )

    results = {}
    if "fvd" in metrics:
        results["fvd"] = fvd_from_stats(real, fake, protocol)
    detectors = {"fvd": detector.describe()}
    if frame_metrics is not None:
        results.update(frame_metrics.compute())
        detectors["frame"] = frame_metrics.describe()
    if video_is is not None:
        results.update(video_is.compute())
        detectors["video_is"] = video_is.describe()
    calibrated = all(d["calibrated"] for d in detectors.values())
    notes = []
    for name, value in list(results.items()):
        if not math.isfinite(value):  # e.g. sqrtm of a singular product: null with a reason, not bare NaN
            results[name] = None
            reason = f"{name} is not finite ({value}): reported as null (ill-conditioned covariances?)"
            warnings.warn(reason, stacklevel=2)
            notes.append(reason)
    if not calibrated:
        notes.append(f"{UNCALIBRATED}: random-init detector(s) stand in for missing weight files")
    if protocol.name not in PROTOCOLS:
        notes.append("custom protocol: compare only with numbers computed under the same protocol")
    if min(real.count, fake.count) <= real.dim:
        notes.append(
            f"only {min(real.count, fake.count)} clips for {real.dim}-d features: covariances are rank-"
            "deficient and FVD is biased upwards (roughly ~1/N)"
        )
    report = {
        "calibrated": calibrated,
        "status": "calibrated"
        if calibrated
        else f"{UNCALIBRATED}: random-init detector(s), numbers are NOT comparable",
        "metrics": results,
        "notes": notes,
        "protocol": protocol.as_dict(),
        "frames": protocol.num_frames,
        "stride": protocol.stride,
        "resize": protocol.as_dict()["input"],
        "cov_divisor": protocol.cov_divisor,
        "counts": {"real": real.count, "fake": fake.count},
        "detectors": detectors,
        "detector_sha256": detector.sha256,
        "real": real_info,
        "fake": fake_info,
        "elapsed_s": round(time.time() - t0, 2),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(args.device),
        },
        "command": "python -m lightning_modules.evaluate "
        + " ".join(getattr(args, "argv", None) or sys.argv[1:]),
    }
    return report


def format_summary(report: dict) -> str:
    tag = "" if report["calibrated"] else f" [{UNCALIBRATED}]"
    values = ", ".join(f"{k}={v:.4f}" if v is not None else f"{k}=null" for k, v in report["metrics"].items())
    return (
        f"{report['protocol']['name']}{tag}: {values} (real {report['counts']['real']}, "
        f"fake {report['counts']['fake']}, detector sha256 {report['detector_sha256'][:12]})"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        report = evaluate(args)
    except DetectorWeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str, allow_nan=False) + "\n")
    print(format_summary(report))
    if not report["calibrated"]:
        print(
            f"WARNING: {UNCALIBRATED} — random-init detector(s); these are not FVD/FID/IS values.",
            file=sys.stderr,
        )
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
