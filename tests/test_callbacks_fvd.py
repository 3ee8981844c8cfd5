"""FVDCallback: EMA weights during generation, cadence, logging, DDP shares, and a debug-sized run."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.callbacks.ema import EMA
from lightning_modules.callbacks.fvd import FVDCallback
from lightning_modules.metrics import fvd as fvd_mod
from lightning_modules.metrics.detectors import FVDDetector
from lightning_modules.metrics.frechet import GaussianStats
from lightning_modules.metrics.protocols import get_protocol

warnings.filterwarnings("ignore", message=".*torch.jit.*")
warnings.filterwarnings("ignore", ".*does not have many workers.*")

PROTOCOL = get_protocol("fvd2048_16f").override(num_real=6, num_fake=6, num_frames=9)


class TinyDetector(nn.Module):
    """Cheap stand-in with the TorchScript call signature (the real I3D is exercised in the slow test)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 400)
        nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        x = x.float() / 127.5 - 1 if rescale else x
        return self.proj(nn.functional.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1))


def tiny_detector(protocol=PROTOCOL):
    return FVDDetector(
        protocol=protocol, module=TinyDetector(), path=Path("tiny"), sha256="0" * 64, calibrated=False
    )


class Clips(L.LightningDataModule):
    def _loader(self):
        g = torch.Generator().manual_seed(1)
        data = [{"video": torch.rand(2, 3, 10, 16, 16, generator=g) * 2 - 1} for _ in range(4)]
        return data

    def train_dataloader(self):
        return [{"x": torch.ones(1)} for _ in range(8)]

    def val_dataloader(self):
        return self._loader()


class Dummy(L.LightningModule):
    """One parameter; `generate` shifts seeded noise by it and records the weight it saw."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        return (self.w - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)

    @torch.no_grad()
    def generate(self, n, *, num_frames, height, width, seed=0, batch_size=8, first_index=0, **kwargs):
        self.seen.append((first_index, float(self.w)))
        g = torch.Generator().manual_seed(seed * 1000 + first_index)
        return (torch.rand(n, 3, num_frames, height, width, generator=g) * 2 - 1 + self.w).clamp(-1, 1)


def test_callback_logs_fvd_with_ema_weights_every_n_steps(tmp_path):
    model = Dummy()
    ema = EMA(decay=0.5)
    cb = FVDCallback(
        real="val_dataloader",
        height=16,
        width=16,
        every_n_steps=2,
        protocol="fvd2048_16f",
        num_real=6,
        num_fake=6,
        num_frames=9,
        batch_size=4,
        detector=tiny_detector(),
    )
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        callbacks=[ema, cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    shadow_at_generate = []
    original = model.generate

    def spy(*args, **kwargs):
        shadow_at_generate.append(float(ema.shadow["w"]))
        return original(*args, **kwargs)

    model.generate = spy
    trainer.fit(model, datamodule=Clips())
    # evaluated at steps 2 and 4; the end-of-training pass is skipped (step 4 already done)
    assert [h["step"] for h in cb.history] == [2, 4]
    assert cb._real_stats["i3d"].count == 6 == cb._real_count  # first num_real val-loader clips, once
    # generation saw the EMA weights, not the raw ones; raw weights restored afterwards
    assert [w for _, w in model.seen] == pytest.approx(shadow_at_generate)
    assert float(model.w) != pytest.approx(shadow_at_generate[-1])
    # 6 samples in batches of 4: first indices 0 and 4, the same at every evaluation
    assert [s for s, _ in model.seen] == [0, 4, 0, 4]
    name = "val/fvd_uncalibrated"  # random-init / stand-in detector: the name says so
    values = [h[name] for h in cb.history]
    assert all(np.isfinite(values)) and values[0] != values[1]
    assert float(trainer.callback_metrics[name]) == pytest.approx(values[-1])
    rows = list(csv.DictReader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    logged = [float(r[name]) for r in rows if r.get(name)]
    assert logged == pytest.approx(values)


def test_generator_shares_over_ranks_merge_to_the_single_process_statistics(monkeypatch):
    def generate(n, *, num_frames, height, width, seed, batch_size, first_index=0, **kw):
        g = torch.Generator().manual_seed(seed * 1000 + first_index)
        return torch.rand(n, 3, num_frames, height, width, generator=g) * 2 - 1

    det = tiny_detector()
    protocol = PROTOCOL.override(num_fake=7)
    single, _ = fvd_mod.fake_statistics_from_generator(
        generate, protocol, det, height=8, width=8, batch_size=2, progress=False
    )
    merged = GaussianStats(400)
    for rank in range(3):
        monkeypatch.setattr(fvd_mod, "dist_info", lambda r=rank: (r, 3))
        part, _ = fvd_mod.fake_statistics_from_generator(
            generate, protocol, det, height=8, width=8, batch_size=2, progress=False
        )
        merged.merge(part)
    assert single.count == merged.count == 7
    np.testing.assert_allclose(merged.mean, single.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.scatter, single.scatter, rtol=1e-9, atol=1e-9)


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x = np.random.default_rng(0).standard_normal((50, 400))
    stats = GaussianStats(400).update(x[rank::world]).all_gather()
    if rank == 0:
        np.savez(out, mean=stats.mean, scatter=stats.scatter, count=stats.count)
    # broadcast: every rank ends with rank 0's statistics (the val-loader real set)
    mine = GaussianStats(400).update(x[:10]) if rank == 0 else GaussianStats(400)
    got = mine.broadcast(0)
    np.savez(out.replace(".npz", f"_bcast{rank}.npz"), mean=got.mean, count=got.count)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # spawning two interpreters costs ~30 s on a shared CPU
def test_all_gather_merges_ranks_exactly(tmp_path):
    out = str(tmp_path / "merged.npz")
    torch.multiprocessing.spawn(_gather_worker, args=(2, f"file://{tmp_path / 'rdv'}", out), nprocs=2)
    got = np.load(out)
    x = np.random.default_rng(0).standard_normal((50, 400))
    whole = GaussianStats(400).update(x)
    assert int(got["count"]) == 50
    np.testing.assert_allclose(got["mean"], whole.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["scatter"], whole.scatter, rtol=1e-10, atol=1e-10)
    for rank in range(2):
        b = np.load(out.replace(".npz", f"_bcast{rank}.npz"))
        assert int(b["count"]) == 10
        np.testing.assert_array_equal(b["mean"], x[:10].mean(axis=0))


def test_video_diffusion_generates_for_the_callback(tmp_path):
    """The real module's `generate` (debug sizes, EMA, labels) feeds the callback; stand-in detector."""
    from datamodules.synthetic import SyntheticVideoDataModule
    from lightning_modules.video_diffusion import VideoDiffusion

    torch.manual_seed(0)
    model = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
        num_classes=4,
        sample_steps=2,
    )
    dm = SyntheticVideoDataModule(
        num_samples=8, num_frames=10, height=32, width=32, batch_size=2, num_classes=4, patch_size=(1, 4, 4)
    )
    cb = FVDCallback(
        real="val_dataloader",
        height=32,
        width=32,
        every_n_steps=0,
        num_real=4,
        num_fake=3,
        num_frames=9,
        batch_size=2,
        steps=2,
        labels=[0, 1],
        detector=tiny_detector(),
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        callbacks=[EMA(decay=0.9), cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(cb.history) == 1 and np.isfinite(cb.history[0]["val/fvd_uncalibrated"])
    first = cb.history[0]["val/fvd_uncalibrated"]
    assert cb.evaluate(trainer, model)["val/fvd_uncalibrated"] == pytest.approx(
        first, rel=1e-9
    )  # seeded samples


def test_debug_config_logs_fvd_with_random_i3d(tmp_path):
    """`fit --config configs/train/debug.yaml` + an FVD callback with the random-init I3D stand-in."""
    import yaml

    from lightning_modules.__main__ import cli_main

    extra = tmp_path / "fvd.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": 2,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(tmp_path)},
                    },
                    "callbacks": [
                        {"class_path": "lightning_modules.callbacks.EMA", "init_args": {"decay": 0.99}},
                        {
                            "class_path": "lightning_modules.callbacks.fvd.FVDCallback",
                            "init_args": {
                                "height": 32,
                                "width": 32,
                                "every_n_steps": 0,
                                "num_real": 2,
                                "num_fake": 2,
                                "num_frames": 9,
                                "batch_size": 2,
                                "steps": 2,
                                "labels": [0, 1],
                                "allow_random_detector": True,
                            },
                        },
                    ],
                },
                "data": {"init_args": {"num_frames": 10, "num_val_samples": 4}},
            }
        )
    )
    root = Path(__file__).resolve().parents[1]
    cli = cli_main(
        [
            "fit",
            "--config",
            str(root / "configs/train/debug.yaml"),
            "--config",
            str(extra),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
        ]
    )
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, FVDCallback))
    assert len(cb.history) == 1 and cb.history[0]["step"] == 2
    value = float(cli.trainer.callback_metrics["val/fvd_uncalibrated"])
    assert np.isfinite(value) and value > 0
    assert cb.detector.calibrated is False and len(cb.detector.sha256) == 64
    rows = list(csv.DictReader(open(next(Path(tmp_path).rglob("metrics.csv")))))
    assert [float(r["val/fvd_uncalibrated"]) for r in rows if r.get("val/fvd_uncalibrated")] == pytest.approx(
        [value]
    )


class LabelledClips(Clips):
    def val_dataloader(self):
        g = torch.Generator().manual_seed(1)
        labels = [[0, 1], [1, 1], [2, 1], [0, 0]]  # the first 6: {0: 1, 1: 4, 2: 1}
        return [
            {"video": torch.rand(2, 3, 10, 16, 16, generator=g) * 2 - 1, "label": torch.tensor(y)}
            for y in labels
        ]


class ClassDummy(Dummy):
    """`Dummy` that says it is class-conditional and records the labels it is asked for."""

    def __init__(self):
        super().__init__()
        self.hparams["num_classes"] = 3
        self.labels_seen: list[int] = []

    def generate(self, n, *, labels=None, **kwargs):
        self.labels_seen.extend([] if labels is None else [int(y) for y in labels])
        return super().generate(n, **kwargs)


@pytest.mark.parametrize("labels", ["real", None])
def test_callback_samples_a_conditional_model_with_the_real_label_histogram(labels):
    from collections import Counter

    model = ClassDummy()
    cb = FVDCallback(
        real="val_dataloader",
        height=16,
        width=16,
        every_n_steps=0,
        num_real=6,
        num_fake=6,
        num_frames=9,
        batch_size=4,
        labels=labels,
        detector=tiny_detector(),
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=LabelledClips())
    cond = cb.history[-1]["conditioning"]
    assert cb.history[-1]["protocol"] == PROTOCOL.name and cb.history[-1]["real_clips"] == 6
    if labels == "real":
        assert Counter(model.labels_seen) == Counter({0: 1, 1: 4, 2: 1})
        assert cond == {
            "mode": "class",
            "label_source": "the 6 val-loader clips (every rank's)",
            "label_histogram": {"0": 1, "1": 4, "2": 1},
            "unconditional_run_of_conditional_model": False,
        }
    else:
        assert model.labels_seen == [] and cond["mode"] == "unconditional"
        assert cond["unconditional_run_of_conditional_model"] is True
        assert any("UNCONDITIONAL evaluation of a conditional checkpoint" in str(w.message) for w in caught)


def test_fewer_val_clips_than_asked_warn_and_are_named_custom():
    model = Dummy()
    cb = FVDCallback(real="val_dataloader", height=16, width=16, every_n_steps=0, num_real=20, num_fake=4,
                     num_frames=9, batch_size=4, detector=tiny_detector())  # fmt: skip
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, callbacks=[cb], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    with pytest.warns(UserWarning, match="only 8 real clips for the 20"):
        trainer.fit(model, datamodule=Clips())
    assert cb.history[-1]["real_clips"] == 8 and "num_real=8" in cb.history[-1]["protocol"]


SPLIT_LABELS = [0, 1, 2, 0, 1, 2, 3, 3, 3, 0]


def _val_batches(rank: int, world: int, split: bool) -> list[dict]:
    """10 labelled clips; `split`: rank r gets clips r, r + world, ... (DistributedSampler), batches of 2."""
    g = torch.Generator().manual_seed(3)
    videos = torch.rand(len(SPLIT_LABELS), 3, 10, 16, 16, generator=g) * 2 - 1
    mine = [i for i in range(len(videos)) if not split or i % world == rank]
    return [
        {
            "video": videos[mine[k : k + 2]],
            "label": torch.tensor([SPLIT_LABELS[i] for i in mine[k : k + 2]]),
            "caption": [f"clip {i}" for i in mine[k : k + 2]],
        }
        for k in range(0, len(mine), 2)
    ]


def _real_of_loader(rank: int, world: int, split: bool):
    from types import SimpleNamespace

    cb = FVDCallback(real="val_dataloader", height=16, width=16, every_n_steps=0, num_real=7, num_fake=4,
                     num_frames=9, detector=tiny_detector())  # fmt: skip
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(val_dataloader=lambda: _val_batches(rank, world, split))
    )
    stats = cb._real(trainer)["i3d"]
    return stats, cb._real_labels, cb._real_captions, cb._real_count


def _loader_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    for split in (True, False):
        stats, labels, captions, count = _real_of_loader(rank, world, split)
        np.savez(f"{out}_{int(split)}_{rank}.npz", mean=stats.mean, scatter=stats.scatter, count=stats.count,
                 labels=np.array(labels), captions=np.array(captions), n=count)  # fmt: skip
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # spawning two interpreters costs ~30 s on a shared CPU
def test_val_loader_real_set_does_not_depend_on_the_number_of_ranks(tmp_path):
    """A val loader split by rank (or not) gives every rank the statistics, labels and count of the
    first num_real clips of the unsplit loader: the single-process ones."""
    single, labels, captions, count = _real_of_loader(0, 1, False)
    assert count == 7 and labels == SPLIT_LABELS[:7] and captions == [f"clip {i}" for i in range(7)]
    out = str(tmp_path / "real")
    torch.multiprocessing.spawn(_loader_worker, args=(2, f"file://{tmp_path / 'rdv'}", out), nprocs=2)
    for split in (1, 0):
        for rank in range(2):
            got = np.load(f"{out}_{split}_{rank}.npz")
            assert int(got["count"]) == int(got["n"]) == 7, (split, rank)
            assert got["labels"].tolist() == labels and got["captions"].tolist() == captions
            # float32 detector on other batch compositions: equal to float32 precision
            np.testing.assert_allclose(got["mean"], single.mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got["scatter"], single.scatter, rtol=1e-5, atol=1e-5)


def test_random_stand_in_detector_is_the_same_file_after_a_restart(tmp_path, monkeypatch):
    """allow_random_detector + real_cache: a restarted run must find the same stand-in (same sha256,
    the cache key), not write a fresh TorchScript file whose bytes differ."""
    import tempfile
    from types import SimpleNamespace

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the machine's temp folder, for this test
    monkeypatch.delenv("VIDEODIT_I3D_TORCHSCRIPT", raising=False)
    loaded = []
    for _ in range(2):  # two runs (a restart): fresh callbacks, nothing shared but the disk
        cb = FVDCallback(real="val_dataloader", height=16, width=16, allow_random_detector=True)
        cb._load(SimpleNamespace(device=torch.device("cpu")))
        loaded.append((cb.detector.path, cb.detector.sha256, cb.detector.path.stat().st_mtime_ns))
    assert loaded[0] == loaded[1]
    assert Path(loaded[0][0]).is_relative_to(tmp_path)


def test_callback_labels_real_from_shards_use_the_whole_split(tmp_path):
    """real=<shards>: as `evaluate --labels`, the fakes get the whole split's label histogram, not
    only the selected clips' (the first sorted keys may cover few classes)."""
    from collections import Counter
    from types import SimpleNamespace

    from test_evaluate import write_heldout_shards

    write_heldout_shards(tmp_path / "shards", [10, 10, 10, 10], size=16, labels=[0, 0, 1, 2])
    model = ClassDummy()
    cb = FVDCallback(real=str(tmp_path / "shards"), height=16, width=16, every_n_steps=0, num_real=2,
                     num_fake=4, num_frames=9, batch_size=4, labels="real", detector=tiny_detector())  # fmt: skip
    trainer = SimpleNamespace(
        global_step=1, callback_metrics={}, is_global_zero=True, loggers=[], callbacks=[]
    )
    cb.evaluate(trainer, model)
    assert Counter(model.labels_seen) == {0: 2, 1: 1, 2: 1}
    cond = cb.history[-1]["conditioning"]
    assert cond["label_histogram"] == {"0": 2, "1": 1, "2": 1} and "4 videos" in cond["label_source"]
