"""`make gpu-check`: everything a first GPU run meets, in one command, within about 8 minutes on one GPU.

    python bench/gpu_check.py                               (what `make gpu-check` runs; needs CUDA)
    python bench/gpu_check.py --latte-repo /tmp/latte       (adds Latte's step time to the benchmark)
    python bench/gpu_check.py --device cpu --dry-run        (the CPU-runnable parts, tiny: the test's run)

Checks (each in its own process with its own timeout; one failing never stops the others):
  gpu_tests          the `gpu`-marked tests (pytest -m gpu); dry run: that they collect
  fit_debug          configs/train/debug.yaml, 50 steps, bf16-mixed, the shipped gradient clipping
  fit_demo           configs/train/demo.yaml's model and trainer, 50 steps, bf16-mixed, clipping (on
                     in-memory clips of the demo's shape: no curation needed)
  attention          every attention backend (sdpa, sdpa_dense, flex, flash where installed), forward
                     and backward on one packed batch of ~16 k tokens, outputs and gradients compared
                     with sdpa's
  fit_compile        20 steps of the debug config with model.compile=true
  fsdp               the debug config with configs/train/fsdp.yaml on every visible GPU, 10 steps
  train_step_bench   bench/train_step.py --device cuda (and --latte-repo when given)

Writes bench/results/gpu.json (or --out) and prints one table: check, status, seconds, numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# packed attention check: clip token grids (T', H', W') summing to ~16 k tokens (dry run: ~1.3 k)
ATTN_GRIDS = {
    "full": [(8, 32, 32), (16, 16, 16), (4, 16, 32), (1, 32, 32)],
    "dry": [(4, 8, 8), (8, 8, 8), (1, 16, 16), (2, 8, 12)],
}
# tolerances of a backend vs sdpa: bf16 on GPU, fp32 on CPU
ATTN_TOL = {"cuda": 3e-2, "cpu": 1e-4}

ATTENTION_SCRIPT = r"""
import json, sys, torch
from lightning_modules.nets import VideoDiT
from lightning_modules.nets.attention import ATTN_BACKENDS, flash_attn_varlen_func, flex_attention
device, grids, tol = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
dtype = torch.bfloat16 if device == "cuda" else torch.float32
results = {}
ref = None
for backend in ATTN_BACKENDS:
    if backend == "flash" and (flash_attn_varlen_func is None or device != "cuda"):
        results[backend] = {"status": "skip", "why": "flash-attn not installed or not CUDA"}
        continue
    if backend == "flex" and flex_attention is None:
        results[backend] = {"status": "skip", "why": "torch without flex_attention"}
        continue
    if backend == "flex" and device == "cpu":  # eager flex on CPU: fine at the dry run's size
        import lightning_modules.nets.attention as att
        att._compiled_flex = lambda: att.flex_attention
    torch.manual_seed(0)
    net = VideoDiT(in_channels=4, patch_size=(1, 2, 2), hidden_size=128, depth=2, num_heads=2,
                   block_type="factorized", attn_backend=backend).to(device)
    for p in net.parameters():  # non-zero output layer: gradients reach every attention
        torch.nn.init.normal_(p, std=0.02)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, t, 2 * h, 2 * w, generator=g).to(device) for t, h, w in grids]
    t = torch.full((len(xs),), 500.0, device=device)
    backward = not (backend == "flex" and device == "cpu")  # flex has no CPU backward
    with torch.set_grad_enabled(backward), torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
        out = net.forward_packed(xs, t)
    if backward:
        sum(o.float().square().mean() for o in out).backward()
    outs = torch.cat([o.float().flatten() for o in out]).cpu()
    grads = torch.cat([p.grad.float().flatten() for p in net.parameters() if p.grad is not None]).cpu() if backward else ref[1]
    tokens = sum(a * b * c for a, b, c in grids)
    if ref is None:
        ref = (outs, grads)
        results[backend] = {"status": "pass", "tokens": tokens, "reference": True}
        continue
    d_out = float((outs - ref[0]).abs().max() / ref[0].abs().max().clamp_min(1e-12))
    d_grad = float((grads - ref[1]).abs().max() / ref[1].abs().max().clamp_min(1e-12))
    ok = d_out <= tol and d_grad <= tol
    results[backend] = {"status": "pass" if ok else "fail", "tokens": tokens, "rel_out": d_out, "rel_grad": d_grad,
                        "tol": tol, "backward": backward}
print("RESULT " + json.dumps(results))
"""


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    t0 = time.time()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
        return done.returncode, done.stdout + done.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        return 124, out + f"\n[timed out after {timeout:.0f} s]", time.time() - t0


def _tail(text: str, n: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def fit_cmd(config: str, steps: int, args, extra: list[str] = ()) -> list[str]:
    accel = (
        ["--trainer.accelerator=gpu", "--trainer.devices=1"]
        if args.device == "cuda"
        else ["--trainer.accelerator=cpu"]
    )
    return [PY, "-m", "lightning_modules", "fit", "--config", config, f"--trainer.max_steps={steps}",
            "--trainer.precision=bf16-mixed", "--trainer.limit_val_batches=0", "--trainer.logger=false",
            f"--trainer.default_root_dir={Path(args.work) / Path(config).stem}",
            *accel, *extra]  # fmt: skip


DEMO_DATA = [  # the demo model on in-memory clips of the demo's shape (no curation needed)
    "--data=datamodules.synthetic.SyntheticVideoDataModule", "--data.init_args.num_samples=64",
    "--data.init_args.num_frames=10", "--data.init_args.height=16", "--data.init_args.width=16",
    "--data.init_args.batch_size=8", "--data.init_args.patch_size=[1,2,2]",
]  # fmt: skip


def check_fit(name, cmd, timeout, steps):
    rc, out, s = _run(cmd, timeout)
    ok = rc == 0 and f"max_steps={steps}" in out  # Lightning: "`Trainer.fit` stopped: `max_steps=N` reached."
    return {
        "status": "pass" if ok else "fail",
        "seconds": s,
        "numbers": f"{steps} steps" if ok else _tail(out),
    }


def run_checks(args) -> dict:
    dry, cuda = args.dry_run, args.device == "cuda"
    steps = 2 if dry else 50
    checks = {}

    # gpu tests
    cmd = [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"] + (
        ["--collect-only"] if dry else []
    )
    rc, out, s = _run(cmd, 60 if dry else 240)
    summary = _tail(out, 1)
    if dry:
        checks["gpu_tests"] = {"status": "pass" if rc == 0 else "fail",
                               "seconds": s, "numbers": f"collected only (dry run): {summary}"}  # fmt: skip
    else:
        checks["gpu_tests"] = {"status": "pass" if rc == 0 else "fail", "seconds": s, "numbers": summary}

    # fits in bf16-mixed with the shipped clipping
    checks["fit_debug"] = check_fit("fit_debug", fit_cmd("configs/train/debug.yaml", steps, args), 180, steps)
    checks["fit_demo"] = check_fit(
        "fit_demo",
        fit_cmd("configs/train/demo.yaml", steps, args, DEMO_DATA + ["--torch_threads=null"]),
        180,
        steps,
    )

    # attention backends against each other
    grids = ATTN_GRIDS["dry" if dry else "full"]
    rc, out, s = _run(
        [PY, "-c", ATTENTION_SCRIPT, args.device, json.dumps(grids), str(ATTN_TOL[args.device])], 300
    )
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if rc != 0 or line is None:
        checks["attention"] = {"status": "fail", "seconds": s, "numbers": _tail(out)}
    else:
        per = json.loads(line[len("RESULT ") :])
        bad = [b for b, r in per.items() if r["status"] == "fail"]
        ran = [b for b, r in per.items() if r["status"] != "skip"]
        worst = max((max(r["rel_out"], r["rel_grad"]) for r in per.values() if "rel_out" in r), default=0.0)
        checks["attention"] = {
            "status": "fail" if bad else "pass",
            "seconds": s,
            "numbers": f"{per['sdpa']['tokens']} tokens; ran {','.join(ran)}; worst rel diff vs sdpa {worst:.2e}"
            + (f"; FAILED {','.join(bad)}" if bad else ""),
            "backends": per,
        }

    # torch.compile
    if cuda:
        checks["fit_compile"] = check_fit(
            "fit_compile", fit_cmd("configs/train/debug.yaml", 20, args, ["--model.compile=true"]), 300, 20
        )
    else:
        checks["fit_compile"] = {
            "status": "skip",
            "seconds": 0.0,
            "numbers": "needs CUDA (CPU inductor compile takes minutes)",
        }

    # FSDP on every visible GPU
    if cuda:
        import torch

        n = torch.cuda.device_count()
        cmd = fit_cmd(
            "configs/train/debug.yaml",
            10,
            args,
            ["--config", "configs/train/fsdp.yaml", f"--trainer.devices={n}"],
        )
        checks["fsdp"] = check_fit("fsdp", cmd, 300, 10)
        checks["fsdp"]["numbers"] = f"{n} GPU(s); " + checks["fsdp"]["numbers"]
    else:
        checks["fsdp"] = {
            "status": "skip",
            "seconds": 0.0,
            "numbers": "needs CUDA (CPU FSDP: tests/test_ddp.py)",
        }

    # the training-step benchmark
    if cuda:
        cmd = [
            PY,
            "bench/train_step.py",
            "--device",
            "cuda",
            "--reps",
            "5",
            "--out",
            str(Path(args.work) / "train_step.json"),
        ]
        if args.latte_repo:
            cmd += ["--latte-repo", args.latte_repo]
        rc, out, s = _run(cmd, 300)
        checks["train_step_bench"] = {
            "status": "pass" if rc == 0 else "fail",
            "seconds": s,
            "numbers": _tail(out, 4),
        }
    else:
        checks["train_step_bench"] = {
            "status": "skip",
            "seconds": 0.0,
            "numbers": "needs CUDA (make bench runs it on CPU)",
        }
    return checks


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device == "cuda" and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return env


def table(checks: dict) -> str:
    rows = [("check", "status", "seconds", "numbers")]
    rows += [(k, v["status"], f"{v['seconds']:.0f}", str(v["numbers"])[:110]) for k, v in checks.items()]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]}" for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, few steps; skips what needs CUDA")
    p.add_argument("--latte-repo", help="a checkout of Vchitect/Latte for the step-time comparison")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    p.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device here: run on a GPU machine, or --device cpu --dry-run for the CPU parts")
    import tempfile

    args.work = args.work or tempfile.mkdtemp(prefix="videodit_gpu_check_")
    t0 = time.time()
    checks = run_checks(args)
    report = {"checks": checks, "dry_run": args.dry_run, "environment": environment(args.device),
              "seconds": round(time.time() - t0, 1), "command": "python bench/gpu_check.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(checks))
    print(f"\n{sum(c['status'] == 'pass' for c in checks.values())} pass, "
          f"{sum(c['status'] == 'fail' for c in checks.values())} fail, "
          f"{sum(c['status'] == 'skip' for c in checks.values())} skip in {report['seconds']:.0f} s -> {args.out}")  # fmt: skip
    return 1 if any(c["status"] == "fail" for c in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
