"""Training CLI: the debug config runs, flags override the YAML, `--print_config` prints the
resolved config, `${...}` interpolation works inside a YAML, the resolved config is saved in the log
dir, and validate / test / predict run from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.__main__ import cli_main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs/train/debug.yaml")


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    """The debug config sets torch_threads: 1 for its run; give the rest of the session its threads back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


QUICK = [
    "--data.init_args.num_val_samples=4",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`fit --config debug.yaml` with CLI overrides, 3 steps."""
    root = tmp_path_factory.mktemp("cli")
    cli = cli_main(
        [
            "fit",
            "--config",
            DEBUG,
            "--model.dit.depth=4",
            "--trainer.max_steps=3",
            f"--trainer.default_root_dir={root}",
            *QUICK,
        ]
    )
    return cli, root


def test_fit_with_overrides(fitted):
    cli, root = fitted
    assert cli.trainer.global_step == 3
    assert (
        cli.model.dit.depth == 4 and len(cli.model.dit.blocks) > 0
    )  # --model.dit.depth=4 won over the YAML's 2
    assert cli.model.hparams.dit["hidden_size"] == 32  # the rest of the YAML stays
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.is_relative_to(root)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())  # resolved config next to the logs
    assert saved["model"]["dit"]["depth"] == 4 and saved["trainer"]["max_steps"] == 3
    assert saved["data"]["init_args"]["patch_size"] == [1, 4, 4]  # ${model.dit.patch_size} resolved
    assert saved["data"]["init_args"]["num_classes"] == 8  # ${model.num_classes} resolved
    ckpts = list(log_dir.glob("checkpoints/*.ckpt"))
    assert ckpts, "ModelCheckpoint from the debug config wrote nothing"
    assert list(log_dir.glob("samples/step_*/*.mp4"))  # SampleVideos ran at the end of training


def test_interpolation_inside_a_yaml(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        """
model:
  dit: {hidden_size: 32, depth: 2, num_heads: 2, patch_size: [1, 4, 4]}
  num_classes: 3
data:
  class_path: datamodules.synthetic.SyntheticVideoDataModule
  init_args:
    num_samples: 4
    num_frames: 2
    height: 16
    width: ${data.init_args.height}
    batch_size: 2
    num_classes: ${model.num_classes}
    patch_size: ${model.dit.patch_size}
"""
    )
    cli = cli_main(["--config", str(cfg)], run=False)
    assert cli.datamodule.hparams.width == 16 and cli.datamodule.hparams.num_classes == 3
    assert tuple(cli.datamodule.hparams.patch_size) == (1, 4, 4)
    assert cli.model.hparams.num_classes == 3


def test_demo_config_takes_the_shard_dir_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("VIDEODIT_DATA", "/data/curated")
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(ROOT / "configs/train/demo.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["data_dir"] == "/data/curated"
    assert printed["data"]["init_args"]["patch_size"] == printed["model"]["dit"]["patch_size"] == [1, 2, 2]
    checkpoints = next(
        c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")
    )
    assert checkpoints["init_args"]["dirpath"] == "demo_out/run/checkpoints"


def test_fsdp_config_builds_the_strategy():
    """The FSDP snippet parses and builds our FSDP2 strategy, keeps EMA and checkpoints each block."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    from lightning_modules.strategies import FSDP2Strategy

    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_subclass_arguments(Strategy, "strategy")
    config = yaml.safe_load((ROOT / "configs/train/fsdp.yaml").read_text())
    strategy = parser.instantiate(parser.parse_object({"strategy": config["trainer"]["strategy"]})).strategy
    assert isinstance(strategy, FSDP2Strategy)
    assert config["model"]["dit"]["grad_checkpointing"] is True


def test_print_config_shows_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", DEBUG, "--model.dit.depth=6", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["dit"]["depth"] == 6 and printed["model"]["objective"] == "diffusion"
    assert printed["data"]["init_args"]["num_classes"] == 8
    assert "lr" in printed["model"] and "cond_drop_prob" in printed["model"]  # the knobs are visible


def test_bad_override_names_the_key():
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", DEBUG, "--model.objective=flowz"])


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_from_a_checkpoint(fitted, subcommand, tmp_path):
    cli, _ = fitted
    ckpt = sorted(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))[-1]
    # the model section comes from the checkpoint's hyper-parameters (LightningCLI reads them)
    args = [
        subcommand,
        "--config",
        DEBUG,
        f"--ckpt_path={ckpt}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        # a bare "1" would parse as the float 1.0 (= 100%): bound the data instead
        "--data.init_args.num_val_samples=2",
        "--data.init_args.num_test_samples=2",
        "--data.init_args.batch_size=2",
    ]
    out = cli_main(args)
    if subcommand == "predict":
        assert out.model.dit.depth == 4  # from the checkpoint, not the YAML's 2
        videos = out.trainer.predict_loop.predictions[0]
        assert videos.shape == (2, 3, 8, 32, 32) and videos.min() >= -1 and videos.max() <= 1
    else:
        metrics = out.trainer.callback_metrics
        assert any(k.endswith("loss") for k in metrics)


def test_help_lists_the_model_knobs(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--model.dit.depth",
        "--model.dit.preset",
        "--model.objective",
        "--model.mask_probs",
        "--model.cond_drop_prob",
        "--model.lr_schedule",
        "--model.codec",
        "--model.text_encoder",
    ):
        assert flag in out, flag


@pytest.mark.gpu
def test_debug_config_trains_in_bf16_on_a_gpu(tmp_path):
    cli = cli_main(
        ["fit", "--config", DEBUG, "--trainer.accelerator=gpu", "--trainer.devices=1",
         "--trainer.precision=bf16-mixed", "--trainer.max_steps=5", f"--trainer.default_root_dir={tmp_path}", *QUICK]
    )  # fmt: skip
    assert cli.trainer.global_step == 5 and cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert cli.model.device.type == "cuda"


def test_command_line_overrides_reach_interpolated_paths(tmp_path):
    """`dirpath: ${trainer.default_root_dir}/checkpoints` (demo.yaml) must follow
    `--trainer.default_root_dir` given on the command line, or two runs share one checkpoint dir."""
    cli = cli_main(
        [
            "--config",
            str(ROOT / "configs/train/demo.yaml"),
            f"--trainer.default_root_dir={tmp_path / 'exp2'}",
            "--trainer.accelerator=cpu",
            f"--data.init_args.data_dir={tmp_path}",
        ],
        run=False,
    )
    assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "exp2" / "checkpoints"
    # and an interpolation into another section still resolves inside the subcommand's config
    cli = cli_main(["--config", DEBUG, "--model.num_classes=3", "--trainer.accelerator=cpu"], run=False)
    assert cli.datamodule.hparams.num_classes == 3
