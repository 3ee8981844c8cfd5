"""A 2-process DDP `fit` on CPU (gloo), launched the way a user does it:
`python -m lightning_modules fit --config configs/train/debug.yaml --trainer.strategy=ddp --trainer.devices=2`.
Each rank records what it trained on and its final weights: the ranks see different batches, and
end with identical weights and EMA (gradients are all-reduced), different from the initial ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import torch
from lightning.pytorch.callbacks import Callback
from lightning_modules.callbacks.ema import find_ema


class RankProbe(Callback):
    def __init__(self, out: str):
        self.out, self.keys, self.init = out, [], None

    def on_fit_start(self, trainer, pl_module):
        self.init = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys += [m["key"] for m in batch["meta"]]

    def on_train_end(self, trainer, pl_module):
        ema = find_ema(trainer)
        torch.save({"rank": trainer.global_rank, "world": trainer.world_size, "keys": self.keys,
                    "init": self.init, "step": trainer.global_step,
                    "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
                    "ema": ema.shadow}, f"{self.out}/rank{trainer.global_rank}.pt")
"""


def _launch(tmp_path: Path, *flags: str) -> None:
    """`python -m lightning_modules fit --config configs/train/debug.yaml` on 2 CPU processes, 4 steps,
    with a probe recording what each rank trained on."""
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "lightning_modules",
        "fit",
        "--config",
        "configs/train/debug.yaml",
        *flags,
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_steps=4",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.num_val_samples=4",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.callbacks+=ddp_probe.RankProbe",
        f"--trainer.callbacks.out={tmp_path}",
    ]
    # own process group: a hung run (e.g. a collective called on one rank only) is killed with its ranks
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"2-process run hung; last output:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-4000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _launch(tmp, "--trainer.strategy=ddp")
    return tmp


# ~13 s on an idle 2-core CPU (three python processes start): in the fast suite, an acceptance item
def test_two_process_ddp_fit_on_cpu(ddp_run):
    tmp_path = ddp_run
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"], r0["step"], r1["step"]) == (0, 1, 2, 4, 4)
    assert set(r0["keys"]).isdisjoint(r1["keys"]), "both ranks trained on the same clips"
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), f"ranks diverged at {name}"
        assert torch.equal(r0["init"][name], r1["init"][name]), f"ranks started apart at {name}"
    for name, e in r0["ema"].items():
        assert torch.equal(e, r1["ema"][name]), f"EMA diverged at {name}"
    assert any(not torch.equal(w, r0["init"][n]) for n, w in r0["weights"].items())
    assert list((tmp_path / "run").rglob("*.ckpt")), "rank 0 wrote no checkpoint"


# ~20 s: FSDP2 (configs/train/fsdp.yaml, ModelParallelStrategy) on 2 CPU processes with gloo
def test_two_process_fsdp_fit_on_cpu_matches_ddp(ddp_run, tmp_path):
    """The same run sharded: its checkpoint holds full (gathered) weights and EMA, equal to the DDP
    run's (the same batches per rank, gradients averaged the same way), clipping included; the sample
    callback generated on both ranks (the sharded forward needs both) and rank 0 wrote the mp4s."""
    from lightning_modules.callbacks.ema import ema_weights_from_checkpoint
    from lightning_modules.video_diffusion import VideoDiffusion

    _launch(
        tmp_path,
        "--config",
        "configs/train/fsdp.yaml",
        "--trainer.precision=32-true",
        "--trainer.strategy.init_args.save_distributed_checkpoint=false",
    )
    (fsdp_ckpt,) = [p for p in (tmp_path / "run").rglob("last.ckpt")]
    (ddp_ckpt,) = [p for p in (ddp_run / "run").rglob("last.ckpt")]
    f, d = (torch.load(p, map_location="cpu", weights_only=True) for p in (fsdp_ckpt, ddp_ckpt))
    assert f["global_step"] == d["global_step"] == 4
    for name, w in d["state_dict"].items():
        torch.testing.assert_close(
            f["state_dict"][name], w, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )
    fe, de = ema_weights_from_checkpoint(f), ema_weights_from_checkpoint(d)
    assert fe.keys() == de.keys()
    for name, e in de.items():
        assert fe[name].shape == e.shape  # gathered from the shards, not one rank's piece
        torch.testing.assert_close(
            fe[name], e, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"EMA {name}: {m}"
        )
    assert list((tmp_path / "run").rglob("samples/step_*/*.mp4")), "no samples under FSDP"
    model = VideoDiffusion.load_for_sampling(str(fsdp_ckpt))  # a sharded run's checkpoint samples as any
    assert model.generate(1, num_frames=4, height=16, width=16, steps=2).shape == (1, 3, 4, 16, 16)
