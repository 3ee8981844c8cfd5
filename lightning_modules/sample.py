"""Sample videos from a training checkpoint for a chosen conditioning task; writes mp4s.

    python -m lightning_modules.sample --ckpt runs/debug/.../last.ckpt --task uncond --num 4 --out samples/
    python -m lightning_modules.sample --ckpt last.ckpt --task predict --given clip.mp4 --given-frames 4
    python -m lightning_modules.sample --ckpt last.ckpt --task interpolate --given clip.mp4 --stride 4
    python -m lightning_modules.sample --ckpt last.ckpt --task i2v --given image_or_clip.mp4 --frame 0
    python -m lightning_modules.sample --ckpt last.ckpt --task extend --frames 3xT --overlap 2
    (make sample CKPT=last.ckpt ARGS="--task predict --given clip.mp4")

`--task extend` generates past the training length chunk by chunk (each chunk of the training
length, conditioned on the last `--overlap` frames of the previous one; `--frames` may be `3xT`,
three training lengths). Given content conditions by replacement for mask-trained models and by VDM
reconstruction guidance (`--guidance-weight`) otherwise (`--conditioning auto|replace|guidance`).
`--corrector-steps N` adds N Langevin corrector steps per guided step (VDM predictor-corrector);
`--frameskip K` generates keyframes K apart first and fills each gap with one conditioned window.

Masked tasks keep the given frames of `--given` (resized to --height x --width, first --frames
frames) and generate the rest. Shapes default to the clip shape the checkpoint was trained on.
EMA weights are used when the checkpoint has them (`--no-ema` for the raw ones). The output dir
gets `<task>_<i>.mp4` per sample and `samples.json` (arguments, checkpoint, files).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from lightning_modules.diffusion.masks import (
    image_to_video_mask,
    interpolate_mask,
    predict_mask,
    unconditional_mask,
)

TASKS = ("uncond", "predict", "interpolate", "i2v", "extend")


def task_mask(
    task: str, T: int, H: int, W: int, *, k: int = 1, frame: int = 0, stride: int = 4
) -> torch.Tensor:
    """(1, T, H, W) bool, True = given: uncond (none), predict (first k frames), interpolate (every
    `stride`-th frame and the last), i2v (frame `frame`)."""
    builders = {
        "uncond": lambda: unconditional_mask(T, H, W),
        "predict": lambda: predict_mask(T, H, W, k),
        "interpolate": lambda: interpolate_mask(T, H, W, stride),
        "i2v": lambda: image_to_video_mask(T, H, W, frame),
    }
    if task not in builders:
        raise ValueError(f"task={task!r} is unknown; choose one of {TASKS}")
    return builders[task]()


def read_video(path: str | Path, *, num_frames: int, height: int, width: int) -> torch.Tensor:
    """First `num_frames` frames of a video or image file, resized, as (3, T, H, W) in [-1, 1]; a
    shorter input repeats its last frame (an image becomes a still clip)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == num_frames:
                break
    if not frames:
        raise ValueError(f"{path} has no decodable video frames")
    frames += [frames[-1]] * (num_frames - len(frames))
    video = torch.from_numpy(np.stack(frames)).float() / 127.5 - 1  # (T, h, w, 3)
    video = rearrange(video, "t h w c -> t c h w")
    video = F.interpolate(video, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return rearrange(video, "t c h w -> c t h w").clamp(-1, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.sample", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="training checkpoint (.ckpt)")
    p.add_argument("--task", choices=TASKS, default="uncond", help="what is given (default: nothing)")
    p.add_argument("--out", default="samples", help="output directory (default: samples)")
    p.add_argument("--num", type=int, default=4, help="number of videos (default: 4)")
    p.add_argument("--frames", help="frames per video (default: the training clips'); extend: N or KxT")
    p.add_argument("--overlap", type=int, default=2, help="extend: frames each chunk is conditioned on")
    p.add_argument("--conditioning", choices=("auto", "replace", "guidance"), default="auto",
                   help="how given frames condition: replace (mask-trained), guidance (VDM), auto")  # fmt: skip
    p.add_argument("--guidance-weight", type=float, default=2.0, help="reconstruction guidance weight w_r")
    p.add_argument("--frameskip", type=int, default=1, help="extend: keyframes this far apart, then fill in")
    p.add_argument(
        "--corrector-steps", type=int, default=0, help="guidance: Langevin corrector steps per step"
    )
    p.add_argument("--height", type=int, help="height in pixels (default: the training clips')")
    p.add_argument("--width", type=int, help="width in pixels (default: the training clips')")
    p.add_argument("--given", nargs="+", help="video/image file(s) for masked tasks, cycled over samples")
    p.add_argument("--given-frames", type=int, default=1, help="predict: number of given first frames")
    p.add_argument("--stride", type=int, default=4, help="interpolate: every stride-th frame is given")
    p.add_argument("--frame", type=int, default=0, help="i2v: index of the given frame")
    p.add_argument("--prompt", nargs="+", help="caption(s), cycled over samples (text-conditioned models)")
    p.add_argument("--label", type=int, nargs="+", help="class label(s), cycled (class-conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's sample_steps)")
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    from lightning_modules.callbacks.samples import write_mp4
    from lightning_modules.video_diffusion import VideoDiffusion

    args = parse_args(argv)
    model = VideoDiffusion.load_for_sampling(args.ckpt, use_ema=not args.no_ema, map_location=args.device)
    trained = model.sample_shape or (None, None, None)
    frames = args.frames
    if frames is not None and "x" in str(frames).lower():  # "3xT": multiples of the training length
        if trained[0] is None:
            raise SystemExit(f"--frames {frames}: this checkpoint records no training length; pass a number")
        frames = int(str(frames).lower().split("x")[0]) * trained[0]
    frames = int(frames) if frames is not None else None
    total = frames if args.task == "extend" else None
    if args.task == "extend":
        frames = trained[0]  # each chunk has the training length
    t, h, w = (a if a is not None else d for a, d in zip((frames, args.height, args.width), trained))
    if None in (t, h, w):
        raise SystemExit(
            "this checkpoint records no training clip shape: pass --frames, --height and --width"
        )
    given = mask = None
    if args.task == "extend" and args.given:  # the first chunk continues the given clip's first frames
        clips = [read_video(p, num_frames=t, height=h, width=w) for p in args.given]
        given = torch.stack([clips[i % len(clips)] for i in range(args.num)])
        mask = task_mask("predict", t, h, w, k=args.given_frames)
    elif args.task not in ("uncond", "extend"):
        if not args.given:
            raise SystemExit(f"--task {args.task} needs --given <video or image file(s)> to take frames from")
        clips = [read_video(p, num_frames=t, height=h, width=w) for p in args.given]
        given = torch.stack([clips[i % len(clips)] for i in range(args.num)])  # (n, 3, T, H, W)
        mask = task_mask(args.task, t, h, w, k=args.given_frames, frame=args.frame, stride=args.stride)
    cycle = lambda v: None if not v else [v[i % len(v)] for i in range(args.num)]  # noqa: E731
    videos = model.generate(
        args.num,
        num_frames=t,
        height=h,
        width=w,
        seed=args.seed,
        batch_size=args.batch_size,
        labels=cycle(args.label),
        captions=cycle(args.prompt),
        given=given,
        mask=mask,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        conditioning=args.conditioning,
        guidance_weight=args.guidance_weight,
        corrector_steps=args.corrector_steps,
        frameskip=args.frameskip,
        task="extend" if args.task == "extend" else "window",
        total_frames=total,
        overlap=args.overlap,
    )  # (n, 3, T, H, W)
    out = Path(args.out)
    paths = [write_mp4(out / f"{args.task}_{i:03d}.mp4", v, fps=args.fps) for i, v in enumerate(videos)]
    record = {
        "ckpt": str(args.ckpt),
        "args": vars(args),
        "shape": [int(videos.shape[2]), h, w],
        "chunk_frames": t if args.task == "extend" else None,
        "overlap": args.overlap if args.task == "extend" else None,
        "conditioning": model._conditioning_mode(args.conditioning)
        if given is not None or args.task == "extend"
        else None,
        "guidance_weight": args.guidance_weight,
        "corrector_steps": args.corrector_steps,
        "frameskip": args.frameskip if args.task == "extend" else None,
        "files": [p.name for p in paths],
    }
    (out / "samples.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {len(paths)} videos ({args.task}, {videos.shape[2]}x{h}x{w}) to {out}")
    return paths


if __name__ == "__main__":
    main()
