"""The datamodules inside a Lightning Trainer: epoch lengths, epoch-dependent draws, counters logged."""

import csv

import lightning as L
import pytest
import torch

from datamodules.synthetic import SyntheticVideoDataModule, clip_sample, write_shards
from datamodules.video_shards import VideoShardsDataModule


class Recorder(L.LightningModule):
    """Consumes either batch layout; remembers what it saw."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = {"train": [], "val": []}

    def _step(self, batch, split):
        videos = batch["videos"] if "videos" in batch else list(batch["video"])
        self.seen[split].append(
            [(m["key"], m["frame_indices"][0], self.current_epoch) for m in batch["meta"]]
        )
        return sum((v.mean() for v in videos), self.w * 0) + self.w**2

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw):
    return L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(tmp_path),
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, log_every_n_steps=1, **kw)  # fmt: skip


def test_shards_fit_two_epochs_with_new_draws_and_logged_counters(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    samples = [clip_sample(f"c{i:02d}_s0_c0", num_frames=30, height=32, width=32, fps=24.0, split=split)
               for i, split in enumerate(["train"] * 6 + ["val"] * 2)]  # fmt: skip
    write_shards(str(root / "train-%06d.tar"), samples[:6], maxcount=2)
    write_shards(str(root / "val-%06d.tar"), samples[6:], maxcount=2)
    dm = VideoShardsDataModule(data_dir=str(tmp_path), num_frames=4, height=32, width=32, batch_size=2,
                               num_workers=0, latent_downsample=(1, 1, 1))  # fmt: skip
    model = Recorder()
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    assert dm.batches_per_rank == 3 and trainer.global_step == 6
    epochs = [{k: off for b in model.seen["train"] for k, off, e in b if e == epoch} for epoch in (0, 1)]
    assert set(epochs[0]) == set(epochs[1]) == {f"c{i:02d}_s0_c0" for i in range(6)}
    assert epochs[0] != epochs[1]  # the loader learned the epoch: new offsets
    val = [[(k, off) for k, off, _ in b] for b in model.seen["val"]]
    assert val and val[: len(val) // 2] == val[len(val) // 2 :]  # validation identical every epoch
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [float(r["data/train/samples"]) for r in rows if r.get("data/train/samples")]
    assert logged and logged[0] == 6


def test_synthetic_packed_fit(tmp_path):
    dm = SyntheticVideoDataModule(num_samples=12, num_val_samples=4, mode="packed", tokens_per_batch=2048,
                                  num_frames=4, height=16, width=16)  # fmt: skip
    model = Recorder()
    _trainer(tmp_path).fit(model, datamodule=dm)
    assert len(model.seen["train"]) == 2 * dm.num_batches("train") and model.seen["val"]


def test_data_configs_instantiate_like_the_cli():
    from pathlib import Path

    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    configs = sorted(Path(__file__).parents[1].joinpath("configs", "data").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = parser.parse_args(["--config", str(path)])
        dm = parser.instantiate_classes(cfg).data
        assert isinstance(dm, SyntheticVideoDataModule | VideoShardsDataModule), path


def test_missing_val_split_is_skipped_not_fatal(tmp_path):
    (tmp_path / "shards").mkdir()
    write_shards(str(tmp_path / "shards" / "train-%06d.tar"),
                 [clip_sample(f"t{i}_s0_c0", num_frames=8, height=32, width=32, fps=24.0) for i in range(2)])  # fmt: skip
    dm = VideoShardsDataModule(data_dir=str(tmp_path), num_frames=4, height=32, width=32, batch_size=2,
                               num_workers=0, latent_downsample=(1, 1, 1))  # fmt: skip
    assert dm.val_dataloader() == [] and len(list(dm.train_dataloader())) == 1
    with pytest.raises(FileNotFoundError, match="val shards"):
        VideoShardsDataModule(val_shards=str(tmp_path / "nothing-*.tar")).val_dataloader()
