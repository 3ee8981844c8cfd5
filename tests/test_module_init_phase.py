"""VideoDiffusion's research switches around training: `--model.init_from=PATH` starts a fit from an
image DiT checkpoint (DiT or Latte format), and VDT's spatial-only phase skips or freezes the temporal
layers for the first N steps."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from test_nets_init_from import random_dit  # tests/ is on sys.path (pytest prepend mode)

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules.__main__ import cli_main
from lightning_modules.video_diffusion import VideoDiffusion

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs/train/debug.yaml")
QUICK = [
    "--data.init_args.num_val_samples=4",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_fit_starts_from_a_latte_checkpoint(tmp_path):
    """The debug model's shape as an image DiT (3 channels, 4x4 patches, 8 classes, learned sigma),
    saved as Latte saves (`{"ema": ...}`); with lr 0 the trained weights are the checkpoint's."""
    sd = random_dit(input_size=32, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                    num_classes=8).state_dict()  # fmt: skip
    torch.save({"ema": sd, "opt": {}}, tmp_path / "latte.pt")
    cli = cli_main(
        ["fit", "--config", DEBUG, f"--model.init_from={tmp_path / 'latte.pt'}", "--model.lr=0",
         "--trainer.max_steps=1", "--trainer.callbacks=[]", f"--trainer.default_root_dir={tmp_path}", *QUICK]
    )  # fmt: skip
    dit = cli.model.dit
    torch.testing.assert_close(dit.blocks[1].attns[0].qkv.weight, sd["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(dit.y_embedder.weight, sd["y_embedder.embedding_table.weight"])
    torch.testing.assert_close(dit.t_embedder.mlp[2].weight, sd["t_embedder.mlp.2.weight"])


def _temporal_rows(dit) -> list[tuple[str, slice]]:
    """(parameter name, rows) of the adaLN shift/scale/gate that feed the temporal attention of
    two-attention blocks (vdt, spatial_temporal): they live in the block's shared modulation layer."""
    D, out = dit.hidden_size, []
    for b, block in enumerate(dit.blocks):
        if len(block.kinds) > 1 and block.adaLN_modulation is not None:
            a = block.kinds.index("temporal")
            out += [
                (f"blocks.{b}.adaLN_modulation.1.{n}", slice(3 * a * D, 3 * (a + 1) * D))
                for n in ("weight", "bias")
            ]
    return out


def _fit(tmp_path, steps, block_type="factorized", depth=4, **kw):
    torch.manual_seed(0)
    model = VideoDiffusion(
        dit=dict(hidden_size=32, depth=depth, num_heads=2, patch_size=(1, 4, 4), block_type=block_type),
        lr=1e-2,
        **kw,
    )
    with torch.no_grad():  # a started model (as after init_from): non-zero gates, every row has gradients
        for block in model.dit.blocks:
            block.adaLN_modulation[1].weight.normal_(std=0.02)
    before = {n: p.detach().clone() for n, p in model.dit.named_parameters()}
    dm = SyntheticVideoDataModule(
        num_samples=4, num_frames=3, height=16, width=16, batch_size=2, patch_size=(1, 4, 4)
    )
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    temporal = {id(p) for p in model.dit.temporal_parameters()}
    moved = {n: not torch.equal(p, before[n]) for n, p in model.dit.named_parameters()}
    is_temporal = {n: id(p) in temporal for n, p in model.dit.named_parameters()}
    params = dict(model.dit.named_parameters())
    moved_rows = {
        (n, r.start): not torch.equal(params[n][r], before[n][r]) for n, r in _temporal_rows(model.dit)
    }
    return model, moved, is_temporal, moved_rows


@pytest.mark.parametrize(
    "phase,block_type,depth",
    [("skip", "factorized", 4), ("freeze", "factorized", 4), ("freeze", "vdt", 2),
     ("freeze", "spatial_temporal", 2), ("skip", "vdt", 2)],
)  # fmt: skip
def test_spatial_phase_leaves_temporal_layers_untouched(tmp_path, phase, block_type, depth):
    """Nothing that serves only the temporal path moves in the phase: temporal blocks / attentions and,
    in two-attention blocks, the temporal attention's rows of the shared adaLN layer (weight decay
    included)."""
    model, moved, is_temporal, moved_rows = _fit(
        tmp_path, 3, block_type, depth, spatial_phase_steps=3, spatial_phase=phase, weight_decay=0.1
    )
    assert any(is_temporal.values()) and not all(is_temporal.values())
    assert not any(moved[n] for n in moved if is_temporal[n])  # temporal layers: frozen or skipped
    assert any(moved[n] for n in moved if not is_temporal[n])  # the spatial ones trained
    assert (len(moved_rows) > 0) is (block_type != "factorized")
    assert not any(moved_rows.values()), moved_rows  # the temporal attention's shift/scale/gate rows
    assert model.dit.temporal_enabled is (phase == "freeze")  # the last step still ran in the phase


@pytest.mark.parametrize("block_type", ["full", "split_heads"])
def test_freeze_is_refused_without_a_separate_temporal_path(block_type):
    with pytest.raises(ValueError, match="spatial_phase='freeze'"):
        VideoDiffusion(dit=dict(hidden_size=32, depth=2, num_heads=2, block_type=block_type),
                       spatial_phase_steps=3, spatial_phase="freeze")  # fmt: skip
    VideoDiffusion(dit=dict(hidden_size=32, depth=2, num_heads=2, block_type=block_type),
                   spatial_phase_steps=3, spatial_phase="skip")  # fmt: skip


def test_joint_training_after_the_phase(tmp_path):
    model, moved, is_temporal, _ = _fit(tmp_path, 3, spatial_phase_steps=1, spatial_phase="skip")
    assert any(moved[n] for n in moved if is_temporal[n]) and model.dit.temporal_enabled

    model, _, _, moved_rows = _fit(tmp_path, 3, "vdt", 2, spatial_phase_steps=1, spatial_phase="freeze")
    assert all(moved_rows.values())  # the temporal attention's adaLN rows train once the phase is over


def test_skipping_temporal_blocks_is_the_image_model_per_frame():
    """temporal_enabled=False: a factorized model == the same model without its temporal blocks."""
    from test_nets_dit import randomize

    from lightning_modules.nets import VideoDiT

    model = randomize(VideoDiT(in_channels=3, hidden_size=32, depth=4, num_heads=2, block_type="factorized"))
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([5.0])
    with torch.no_grad():
        model.temporal_enabled = False
        skipped = model(x, t)
        model.temporal_enabled = True
        model.blocks = torch.nn.ModuleList(b for b in model.blocks if b.kinds == ("spatial",))
        torch.testing.assert_close(skipped, model(x, t))
        per_frame = torch.cat([model(x[:, :, i : i + 1], t) for i in range(4)], dim=2)
        torch.testing.assert_close(skipped, per_frame, atol=1e-5, rtol=0)


def test_fine_tuning_a_checkpoint_does_not_reapply_init_from(tmp_path):
    """A Lightning checkpoint keeps `init_from` in its hparams: `load_from_checkpoint` then `fit`
    (fine-tuning) must keep the trained weights, not overwrite them with the image DiT file again."""
    sd = random_dit(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                    num_classes=0).state_dict()  # fmt: skip
    sd.pop("y_embedder.embedding_table.weight")
    torch.save(sd, tmp_path / "dit.pt")
    kw = dict(logger=False, enable_checkpointing=False, default_root_dir=tmp_path, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0)  # fmt: skip

    def dm():
        return SyntheticVideoDataModule(
            num_samples=4, num_frames=3, height=16, width=16, batch_size=2, patch_size=(1, 4, 4)
        )

    torch.manual_seed(0)
    model = VideoDiffusion(dit=dict(hidden_size=32, depth=2, num_heads=2, patch_size=(1, 4, 4)), lr=1e-2,
                           init_from=str(tmp_path / "dit.pt"))  # fmt: skip
    trainer = L.Trainer(max_steps=3, **kw)
    trainer.fit(model, datamodule=dm())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    trained = {n: p.detach().clone() for n, p in model.dit.named_parameters()}
    assert not torch.equal(trained["blocks.0.attns.0.qkv.weight"], sd["blocks.0.attn.qkv.weight"])

    tuned = VideoDiffusion.load_from_checkpoint(tmp_path / "m.ckpt", lr=0.0)
    L.Trainer(max_steps=1, **kw).fit(tuned, datamodule=dm())
    for name, p in tuned.dit.named_parameters():
        torch.testing.assert_close(p, trained[name], rtol=0, atol=0, msg=name)

    # the same instance fitted a second time keeps its weights too
    L.Trainer(max_steps=1, **kw).fit(tuned, datamodule=dm())
    torch.testing.assert_close(
        tuned.dit.blocks[0].attns[0].qkv.weight, trained["blocks.0.attns.0.qkv.weight"]
    )
