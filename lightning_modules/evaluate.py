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
import importlib.metadata
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from lightning_modules.metrics.conditioning import (
    LABEL_MODES,
    conditioned_generate,
    model_conditioning,
)
from lightning_modules.metrics.conditioning import resolve as resolve_conditioning
from lightning_modules.metrics.detectors import (
    ENV_C3D_TORCHSCRIPT,
    ENV_I3D_STATE_DICT,
    ENV_I3D_TORCHSCRIPT,
    ENV_INCEPTION,
    DetectorWeightsError,
    load_fvd_detector,
    random_detector_dir,
)
from lightning_modules.metrics.fvd import (
    fake_statistics_from_folder,
    fake_statistics_from_generator,
    fvd_from_stats,
    real_statistics,
    select_real_clips,
    usable_real_sources,
)
from lightning_modules.metrics.protocols import PROTOCOLS, REAL_RESIZES, SELECTIONS, SOURCES, get_protocol
from lightning_modules.metrics.videos import open_sources

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
        help="held-out set: shards folder/.tar/glob, folder of videos or of frame folders "
        "(needed for fvd and fid, and for --labels real|selected / --prompts captions)",
    )
    p.add_argument(
        "--real-split",
        default="val",
        help="shard split to read when --real is a shards folder (the presets' papers used train: the report "
        "notes the difference)",
    )
    p.add_argument(
        "--fake", required=True, help="folder of generated videos / frame folders, or a .ckpt to sample from"
    )
    p.add_argument(
        "--metrics",
        default="fvd",
        help=f"comma-separated subset of {','.join(METRICS)} (is: per-frame IS; isv: video IS with C3D); only "
        "the detectors and real statistics these need are loaded and computed",
    )
    p.add_argument("--protocol", default="fvd2048_16f", help=f"preset: {', '.join(PROTOCOLS)}")
    p.add_argument("--out", default="eval_report.json", help="JSON report path")
    g = p.add_argument_group("custom protocol (override fields of the preset; the name becomes custom(...))")
    g.add_argument("--num-real", type=int)
    g.add_argument("--num-fake", type=int)
    g.add_argument("--num-frames", type=int)
    g.add_argument("--stride", type=int, help="temporal subsampling of real clips")
    g.add_argument("--real-selection", choices=SELECTIONS)
    g.add_argument("--clip-start", choices=("first", "random"))
    g.add_argument("--fake-selection", choices=("first", "random"), help="which videos of a fake folder")
    g.add_argument("--min-length", choices=("span", "n_times_stride"), help="shortest real video kept")
    g.add_argument("--when-fewer", choices=("use_all", "error"), help="fewer usable clips than asked")
    g.add_argument("--seed", type=int, help="seed of real-clip (and random fake) selection")
    g.add_argument("--cov-divisor", choices=("N", "N-1"))
    g.add_argument("--sqrtm", choices=("scipy", "eig"))
    g.add_argument(
        "--real-resize",
        choices=REAL_RESIZES,
        help="native: real clips as decoded; train: resized + centre-cropped to the fakes' (training) size "
        "(default: the preset's)",
    )
    c = p.add_argument_group("conditioning (--fake *.ckpt)")
    c.add_argument(
        "--labels",
        nargs="?",
        const="real",
        choices=LABEL_MODES,
        help="class labels for the fakes: real (bare --labels) = the label histogram of every usable video of "
        "the real set (the whole split, as StyleGAN-V); selected = of the selected real clips only; "
        "uniform = the same count per class",
    )
    c.add_argument("--label-field", default="label", help="the shards' json field holding the class label")
    c.add_argument(
        "--prompts",
        help="text prompts for the fakes: a file (one per line, cycled) or 'captions' (real clips')",
    )
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
    r.add_argument(
        "--real-cache",
        help="real-statistics base path X.npz: one file per feature set (X.i3d.npz, X.inception.npz), reused "
        "when it matches, written otherwise",
    )
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--no-progress", action="store_true")
    s = p.add_argument_group("sampling from a checkpoint (--fake *.ckpt)")
    s.add_argument("--height", type=int, help="sample height (default: the checkpoint's training clips)")
    s.add_argument("--width", type=int, help="sample width (default: the checkpoint's training clips)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's sample_steps)")
    s.add_argument("--cfg-scale", type=float, help="classifier-free guidance (default: the checkpoint's)")
    s.add_argument("--sample-seed", type=int, default=0, help="sample i is seeded by (sample seed, i)")
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
        fake_selection=getattr(args, "fake_selection", None),
        min_length=getattr(args, "min_length", None),
        when_fewer=getattr(args, "when_fewer", None),
        seed=args.seed,
        cov_divisor=args.cov_divisor,
        sqrtm=args.sqrtm,
        real_resize=getattr(args, "real_resize", None),
    )


def package_versions() -> dict:
    """Versions of everything that can move a number."""
    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "scipy", "torchmetrics", "torch-fidelity", "decord", "av", "pillow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _sampling_info(model, args, height, width) -> dict:
    """The sampler settings `generate` will use, defaults resolved from the checkpoint."""
    from lightning_modules.video_diffusion import DEFAULT_SAMPLER

    hp = model.hparams
    return {
        "sampler": hp.get("sampler") or DEFAULT_SAMPLER[hp.get("objective", "diffusion")],
        "steps": args.steps or hp.get("sample_steps"),
        "cfg_scale": hp.get("cfg_scale", 1.0) if args.cfg_scale is None else args.cfg_scale,
        "eta": hp.get("eta"),
        "objective": hp.get("objective"),
        "steps_from": "--steps" if args.steps else "checkpoint",
        "cfg_scale_from": "--cfg-scale" if args.cfg_scale is not None else "checkpoint",
        "height": height,
        "width": width,
    }


def _peek_size(spec: str) -> tuple[int, int]:
    _, sources = open_sources(spec, split=None)  # the fakes: every tar of a shard folder
    if not sources:
        raise FileNotFoundError(f"no fake videos in {spec!r}")
    frame = sources[0].load([0])
    return int(frame.shape[1]), int(frame.shape[2])


def evaluate(args) -> dict:
    t0 = time.time()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    protocol = resolve_protocol(args)
    progress = not args.no_progress
    labels_mode, prompts_mode = getattr(args, "labels", None), getattr(args, "prompts", None)
    from_ckpt = str(args.fake).endswith(".ckpt")
    if (labels_mode or prompts_mode) and not from_ckpt:
        raise ValueError("--labels / --prompts condition sampling: they need --fake *.ckpt")
    needs_real_stats = "fvd" in metrics or "fid" in metrics
    needs_real_clips = needs_real_stats or labels_mode in ("real", "selected") or prompts_mode == "captions"
    if needs_real_clips and not args.real:
        raise ValueError(
            "--real is needed for fvd / fid (and for --labels real|selected, --prompts captions)"
        )

    # ---- only the detectors the metrics need
    feature_sets: dict = {}
    detector = frame = video_is = None
    if "fvd" in metrics:
        detector = load_fvd_detector(
            protocol,
            i3d_torchscript=args.i3d_torchscript,
            i3d_state_dict=args.i3d_state_dict,
            allow_random=args.allow_random_detector,
            device=args.device,
            # one stand-in file per machine: --real-cache then works for smoke runs too
            random_dir=random_detector_dir(),
        )
        feature_sets["i3d"] = detector
    if "fid" in metrics or "is" in metrics:
        from lightning_modules.metrics.fid_is import FrameInception

        frame = FrameInception(
            weights=args.inception_weights,
            allow_random=args.allow_random_detector,
            fid="fid" in metrics,
            inception_score="is" in metrics,
            antialias=bool(args.fid_antialias),
            device=args.device,
        )
        if "fid" in metrics:
            feature_sets["inception"] = frame
    if "isv" in metrics:
        from lightning_modules.metrics.fid_is import VideoIS

        video_is = VideoIS(
            weights=args.c3d_torchscript, allow_random=args.allow_random_detector, device=args.device
        )

    # ---- the fakes' source and size
    model = None
    if from_ckpt:
        from lightning_modules.video_diffusion import VideoDiffusion

        model = VideoDiffusion.load_for_sampling(args.fake, use_ema=not args.no_ema, map_location=args.device)
        _, trained_h, trained_w = model.sample_shape or (None, None, None)  # as `sample.py` does
        height, width = args.height or trained_h, args.width or trained_w
        if height is None or width is None:
            raise ValueError(
                f"{args.fake} records no training clip shape: pass --height and --width (the training resolution)"
            )
        fake_size = (height, width)
    else:
        fake_size = _peek_size(args.fake) if protocol.real_resize == "train" and needs_real_stats else None

    # ---- real clips (selection only: no decoding yet)
    real_sel = real_pool = None
    if needs_real_clips:
        opened = open_sources(args.real, split=args.real_split, label_field=args.label_field)
        real_sel = select_real_clips(
            args.real, protocol, split=args.real_split, label_field=args.label_field, opened=opened
        )
        # --labels real: the fakes' label histogram is the WHOLE split's (StyleGAN-V draws each fake's
        # label from a random video of the dataset), not only the selected clips'
        real_pool = usable_real_sources(opened[1], protocol)
    real_clips = real_sel[0] if real_sel else []

    # ---- conditions
    conditioning = None
    labels = captions = None
    if model is not None:
        labels, captions, conditioning = resolve_conditioning(
            model_conditioning(model),
            labels=labels_mode,
            prompts=prompts_mode,
            n=protocol.num_fake,
            seed=args.sample_seed,
            real_labels=[c.source.label for c in real_clips] if real_sel else None,
            real_captions=[c.source.caption for c in real_clips] if real_sel else None,
            real_keys=[c.key for c in real_clips],
            all_labels=[s.label for s in real_pool] if real_pool is not None else None,
            all_keys=[s.key for s in real_pool] if real_pool is not None else None,
            label_source=(
                f"every usable video of {args.real}"
                + (f" (split {args.real_split})" if opened[0] == "shards" else "")
                + f": {len(real_pool)} videos"
                if real_pool is not None
                else None
            ),
        )

    # ---- real statistics (cached per feature set)
    real, real_info = {}, None
    if needs_real_stats:
        real, real_info = real_statistics(
            real_sel,
            protocol,
            feature_sets,
            split=args.real_split,
            batch_size=args.batch_size,
            cache=args.real_cache,
            progress=progress,
            resize_to=fake_size,
        )
    elif real_sel is not None:
        real_info = dict(real_sel[1])

    # ---- fake statistics
    def fake_extra(batch):
        if frame is not None and "fid" not in metrics:
            frame.update_fake(batch)  # IS only: not a feature set, fed here
        if video_is is not None:
            video_is.update(batch)

    extra = fake_extra if (frame is not None and "fid" not in metrics) or video_is is not None else None
    sampling = None
    if model is not None:
        sampling = _sampling_info(model, args, *fake_size)
        fake, fake_info = fake_statistics_from_generator(
            conditioned_generate(model.generate, labels, captions),
            protocol,
            feature_sets,
            height=fake_size[0],
            width=fake_size[1],
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
            args.fake, protocol, feature_sets, batch_size=args.batch_size, progress=progress, extra=extra
        )

    # ---- metrics
    results = {}
    if "fvd" in metrics:
        results["fvd"] = fvd_from_stats(real["i3d"], fake["i3d"], protocol)
    detectors = {}
    if detector is not None:
        detectors["fvd"] = detector.describe()
    if frame is not None:
        from lightning_modules.metrics.fid_is import fid_from_stats

        if "fid" in metrics:
            results["fid"] = fid_from_stats(real["inception"], fake["inception"])
        if "is" in metrics:
            results.update(frame.compute_is())
        detectors["frame"] = frame.describe()
    if video_is is not None:
        results.update(video_is.compute())
        detectors["video_is"] = video_is.describe()
    calibrated = all(d["calibrated"] for d in detectors.values())

    # ---- notes: everything that makes this number differ from the paper's or from another run
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
    counts = {"real": real_info["count"] if needs_real_stats else None, "fake": fake_info["count"]}
    for name, fs in feature_sets.items():
        n = min(real[name].count, fake[name].count)
        if n <= fs.dim:
            unit = "frames" if name == "inception" else "clips"
            notes.append(
                f"only {n} {unit} for {fs.dim}-d {name} features: covariances are rank-deficient and "
                f"{'FID' if name == 'inception' else 'FVD'} is biased upwards (roughly ~1/N)"
            )
    for side, info, asked in (("real", real_info, protocol.num_real), ("fake", fake_info, protocol.num_fake)):
        if info and info.get("used_all"):
            notes.append(
                f"only {info['selected']} usable {side} clips for the {asked} asked: all of them were used "
                "(StyleGAN-V/Latte take min(len(dataset), max_items)); numbers from fewer clips are biased upwards"
            )
    if needs_real_clips and real_info.get("kind") == "shards" and args.real_split != protocol.paper_split:
        notes.append(
            f"real split '{args.real_split}' differs from the '{protocol.paper_split}' split {protocol.name}'s paper "
            f"measured against: held-out evaluation, not the paper's number (--real-split {protocol.paper_split} "
            "reproduces it)"
        )
    real_sizes = real_info.get("sizes") if real_info else None
    fake_sizes = fake_info.get("sizes")
    resolution = {
        "real_resize": protocol.real_resize,
        "real_sizes": real_sizes,
        "fake_sizes": fake_sizes,
        "match": None if not (real_sizes and fake_sizes) else real_sizes == fake_sizes,
    }
    if resolution["match"] is False:
        msg = (
            f"real clips are {real_sizes} (H, W) but fakes are {fake_sizes}: the detector resizes both, but "
            "at different source resolutions the number also measures the resize; --real-resize train "
            "compares at the fakes' size"
        )
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    if conditioning and conditioning.get("unconditional_run_of_conditional_model"):
        notes.append(conditioning["warning"])
    report = {
        "calibrated": calibrated,
        "status": "calibrated"
        if calibrated
        else f"{UNCALIBRATED}: random-init detector(s), numbers are NOT comparable",
        "metrics": results,
        "notes": notes,
        "protocol": {
            **protocol.as_dict(),
            "sources": SOURCES.get(protocol.name.split(":")[0].removeprefix("custom(")),
        },
        "frames": protocol.num_frames,
        "stride": protocol.stride,
        "resize": protocol.as_dict()["input"],
        "cov_divisor": protocol.cov_divisor,
        "counts": counts,
        "resolution": resolution,
        "conditioning": conditioning,
        "sampling": sampling,
        "detectors": detectors,
        "detector_sha256": detector.sha256 if detector is not None else None,
        "real": real_info,
        "fake": fake_info,
        "elapsed_s": round(time.time() - t0, 2),
        "environment": {**package_versions(), "device": str(args.device)},
        "command": "python -m lightning_modules.evaluate "
        + " ".join(getattr(args, "argv", None) or sys.argv[1:]),
    }
    return report


def format_summary(report: dict) -> str:
    tag = "" if report["calibrated"] else f" [{UNCALIBRATED}]"
    values = ", ".join(f"{k}={v:.4f}" if v is not None else f"{k}=null" for k, v in report["metrics"].items())
    cond = report.get("conditioning") or {}
    mode = f", {cond['mode']}" if cond else ""
    sha = report["detector_sha256"][:12] if report["detector_sha256"] else "-"
    return (
        f"{report['protocol']['name']}{tag}: {values} (real {report['counts']['real']}, "
        f"fake {report['counts']['fake']}{mode}, I3D sha256 {sha})"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        report = evaluate(args)
    except (DetectorWeightsError, ValueError) as err:
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
    cond = report.get("conditioning") or {}
    if cond.get("unconditional_run_of_conditional_model"):
        print(f"WARNING: {cond['warning']}", file=sys.stderr)
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
