"""Training-step benchmark for the video DiT (issue 5 "Speed"). Every ratio is measured side by side in
one run, ours vs a baseline on the same input, with the timings interleaved.

  packed_vs_padded_tokens_per_s   real tokens/s of `forward_packed` on a batch of mixed shapes vs the
                                  same clips zero-padded to the largest shape and run through the
                                  single-shape `forward` (the padded baseline runs WITHOUT a padding
                                  mask, i.e. faster than a correct one would be)
  packed_overhead_vs_single_shape step time of a packed batch of mixed clip lengths / step time of a
                                  single-shape batch with the same token count, minus 1
  mfu                             FLOP/s of our training step / fp32 matmul peak measured in this run
  vs_latte_step_time              our step time / Latte's (Latte-S/2, 8 frames, 16x16 latents, batch 2,
                                  class-conditional), only with --latte-repo DIR (a checkout of the
                                  public Vchitect/Latte repository; imported at runtime, never copied)

  python bench/train_step.py [--latte-repo /tmp/latte] [--device cpu|cuda] [--reps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.nets import DIT_PRESETS, VideoDiT  # noqa: E402

# latent (T, H, W) of a mixed batch: lengths 1..8 frames, three aspect ratios (about 40% of pad-to-max)
MIXED = [(8, 16, 16), (8, 8, 16), (4, 16, 8), (2, 16, 16), (8, 8, 8), (1, 16, 16)]
# same token count two ways: packed clips of different lengths vs one single-shape batch
OVERHEAD_PACKED = [(8, 16, 16), (4, 16, 16), (4, 16, 16)]
OVERHEAD_SINGLE = (2, 8, 16, 16)  # (B, T, H, W)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device):
    """Wall time on GPU; on a CPU run with one torch thread, this process's CPU time, which leaves out
    the time other processes on a shared machine hold the core (wall time swung 2x between runs)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def timed(fn, device) -> float:
    now = clock(device)
    sync(device)
    start = now()
    fn()
    sync(device)
    return now() - start


def interleaved(fns: dict, device, reps: int, warmup: int = 1) -> dict:
    """Fastest seconds per call of each fn (the least disturbed by other processes on a shared
    machine), alternating between them so load changes hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: min(v) for k, v in times.items()}


def matmul_peak(device, dtype=torch.float32, n=2048, reps=5) -> float:
    """Achieved FLOP/s of a large fp32 matmul on this device now (the MFU denominator)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best


def train_step_fn(model, opt, make_loss, device, amp: bool):
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = make_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def attention_flops(grids, hidden: int, kinds: list[str]) -> int:
    """Training FLOPs of the attention products (QK^T and AV, forward x3 for backward), which the
    FLOP counter does not see on CPU. grids: token grids (t, h, w); kinds: one per self-attention."""
    total = 0
    for kind in kinds:
        for t, h, w in grids:
            lengths = {"full": [(t * h * w)], "spatial": [h * w] * t, "temporal": [t] * (h * w)}[kind]
            total += sum(4 * n * n * hidden for n in lengths)
    return 3 * total


def matmul_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def our_kinds(model: VideoDiT) -> list[str]:
    return [k for block in model.blocks for k in block.kinds]


def bench_packing(args, device, amp):
    torch.manual_seed(0)
    cfg = dict(
        in_channels=4, patch_size=(1, 2, 2), hidden_size=args.hidden, depth=args.depth, num_heads=args.heads
    )
    model = VideoDiT(**cfg, attn_backend=args.backend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clips = [torch.randn(4, *s, device=device) for s in MIXED]
    t = torch.rand(len(clips), device=device) * 1000
    real_tokens = sum(
        model.token_grid(*s)[0] * model.token_grid(*s)[1] * model.token_grid(*s)[2] for s in MIXED
    )
    T, H, W = (max(s[i] for s in MIXED) for i in range(3))
    padded = torch.zeros(len(clips), 4, T, H, W, device=device)
    for i, c in enumerate(clips):
        padded[i, :, : c.shape[1], : c.shape[2], : c.shape[3]] = c
    padded_tokens = len(clips) * T * (H // 2) * (W // 2)

    packed_step = train_step_fn(
        model, opt, lambda: sum(o.square().mean() for o in model.forward_packed(clips, t)), device, amp
    )
    padded_step = train_step_fn(model, opt, lambda: model(padded, t).square().mean(), device, amp)
    times = interleaved({"packed": packed_step, "padded": padded_step}, device, args.reps)
    ratio = (real_tokens / times["packed"]) / (real_tokens / times["padded"])

    # overhead: packed mixed lengths vs a single-shape batch with the same number of tokens
    o_clips = [torch.randn(4, *s, device=device) for s in OVERHEAD_PACKED]
    o_t = torch.rand(len(o_clips), device=device) * 1000
    b, *shape = OVERHEAD_SINGLE
    single = torch.randn(b, 4, *shape, device=device)
    s_t = torch.rand(b, device=device) * 1000
    assert sum(c[0].numel() for c in o_clips) == single[:, 0].numel(), (
        "overhead inputs must hold equal tokens"
    )
    o_step = train_step_fn(
        model, opt, lambda: sum(o.square().mean() for o in model.forward_packed(o_clips, o_t)), device, amp
    )
    s_step = train_step_fn(model, opt, lambda: model(single, s_t).square().mean(), device, amp)
    o_times = interleaved({"packed": o_step, "single": s_step}, device, args.reps)
    overhead = o_times["packed"] / o_times["single"] - 1

    # MFU of the packed mixed step (FLOP counter for matmuls + analytic attention)
    grids = [model.token_grid(*s) for s in MIXED]
    flops = matmul_flops(packed_step) + attention_flops(grids, args.hidden, our_kinds(model))
    return {
        "packed_vs_padded_tokens_per_s": ratio,
        "packed_overhead_vs_single_shape": overhead,
        "details": {
            "model": cfg,
            "mixed_shapes_THW": MIXED,
            "real_tokens": real_tokens,
            "padded_tokens": padded_tokens,
            "packed_step_s": times["packed"],
            "padded_step_s": times["padded"],
            "packed_real_tokens_per_s": real_tokens / times["packed"],
            "padded_real_tokens_per_s": real_tokens / times["padded"],
            "overhead_packed_shapes_THW": OVERHEAD_PACKED,
            "overhead_single_shape_BTHW": OVERHEAD_SINGLE,
            "overhead_packed_step_s": o_times["packed"],
            "overhead_single_step_s": o_times["single"],
            "packed_step_flops": flops,
        },
        "_flops_per_s": flops / times["packed"],
    }


def load_latte(repo: Path):
    path = repo / "models" / "latte.py"
    if not path.exists():
        raise SystemExit(
            f"--latte-repo {repo}: no models/latte.py there; pass a checkout of github.com/Vchitect/Latte"
        )
    spec = importlib.util.spec_from_file_location("latte_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_latte(args, device, amp):
    latte = load_latte(Path(args.latte_repo))
    torch.manual_seed(0)
    frames, size, batch, classes = 8, 16, 2, 101
    preset = DIT_PRESETS["S/2"]
    results = {}

    def latte_model(mode):
        return latte.Latte_S_2(
            input_size=size,
            in_channels=4,
            num_frames=frames,
            num_classes=classes,
            extras=2,
            learn_sigma=True,
            attention_mode=mode,
        ).to(device)

    def our_model(pos):
        return VideoDiT(
            **preset,
            in_channels=4,
            num_classes=classes,
            learn_sigma=True,
            block_type="factorized",
            pos_embed=pos,
            attn_backend=args.backend,
        ).to(device)

    x = torch.randn(batch, 4, frames, size, size, device=device)  # (B, C, T, H, W)
    x_latte = x.permute(0, 2, 1, 3, 4).contiguous()  # Latte takes (B, F, C, H, W)
    t = torch.randint(0, 1000, (batch,), device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step_of(model, inp):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        return train_step_fn(model, opt, lambda: model(inp, t, y=y).square().mean(), device, amp)

    models = {
        "ours_sincos": our_model("sincos"),  # Latte's positions: the like-for-like comparison
        "ours_rope": our_model("rope"),  # our default
        "latte_math": latte_model("math"),  # Latte's default attention_mode
        "latte_flash": latte_model("flash"),  # Latte's SDPA mode
    }
    steps = {k: step_of(m, x_latte if k.startswith("latte") else x) for k, m in models.items()}
    for name in list(steps):
        try:
            steps[name]()
        except Exception as err:  # e.g. a Latte mode this torch no longer supports
            print(f"skipping {name}: {err}")
            del steps[name]
    times = interleaved(steps, device, args.reps)
    latte_best = min(v for k, v in times.items() if k.startswith("latte"))
    grid = [(frames, size // 2, size // 2)] * batch
    ours = models["ours_sincos"]
    flops_ours = matmul_flops(steps["ours_sincos"]) + attention_flops(
        grid, preset["hidden_size"], our_kinds(ours)
    )
    results["vs_latte_step_time"] = times["ours_sincos"] / latte_best
    results["details"] = {
        "config": "Latte-S/2 vs our S/2 factorized, 8 frames, 16x16x4 latents, batch 2, 101 classes, learn_sigma",
        "ratio": "ours_sincos step / the faster of Latte's attention modes",
        **{f"{k}_step_s": v for k, v in times.items()},
        "ours_params": sum(p.numel() for p in ours.parameters()),
        "latte_params": sum(p.numel() for p in models["latte_math"].parameters()),
        "ours_step_flops": flops_ours,
    }
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads; 1 times CPU runs by process CPU time"
    )
    p.add_argument("--hidden", type=int, default=192, help="packing benchmark model width")
    p.add_argument("--depth", type=int, default=4, help="packing benchmark model depth")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--backend", default="sdpa", help="attention backend for packed batches")
    p.add_argument(
        "--latte-repo", default=None, help="checkout of github.com/Vchitect/Latte (never committed)"
    )
    p.add_argument("--latte-attention", default="math", help="Latte's attention_mode (its default is 'math')")
    p.add_argument(
        "--latte-pos", default="sincos", help="our pos_embed in the Latte comparison (Latte: sincos)"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)

    peak = matmul_peak(device)
    packing = bench_packing(args, device, amp)
    metrics = {
        "packed_vs_padded_tokens_per_s": {
            "value": packing["packed_vs_padded_tokens_per_s"],
            "goal": 1.5,
            "higher_is_better": True,
        },
        "packed_overhead_vs_single_shape": {
            "value": packing["packed_overhead_vs_single_shape"],
            "goal": 0.15,
            "higher_is_better": False,
        },
        "mfu": {"value": packing["_flops_per_s"] / peak, "goal": None, "higher_is_better": True},
    }
    details = {
        "packing": packing["details"],
        "fp32_matmul_peak_flops": peak,
        "amp_bf16": amp,
        "clock": "process CPU time" if clock(device) is time.process_time else "wall",
    }
    if args.latte_repo:
        latte = bench_latte(args, device, amp)
        metrics["vs_latte_step_time"] = {
            "value": latte["vs_latte_step_time"],
            "goal": 1.0,
            "higher_is_better": False,
        }
        details["latte"] = latte["details"]
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = None
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    result = {"metrics": metrics, "machine": machine, "commit": commit, "details": details}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name, m in metrics.items():
        goal = "" if m["goal"] is None else f"  (goal {'>=' if m['higher_is_better'] else '<='} {m['goal']})"
        print(f"{name:34s} {m['value']:.3f}{goal}")
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
