"""Training CLI: `python -m lightning_modules fit|validate|test|predict --config configs/train/X.yaml`.

LightningCLI with OmegaConf parsing, so a YAML may use `${...}` interpolation (e.g.
`patch_size: ${model.dit.patch_size}` in the data section). Flags override the YAML
(`--model.dit.depth=4 --trainer.max_steps=100`), `--print_config` prints the resolved config, and
the resolved config is saved as `config.yaml` in the run's log dir. The model is always
`VideoDiffusion` (its constructor is the `model:` section); the datamodule is chosen by class path.
"""

from __future__ import annotations

import jsonargparse
import torch
from lightning.pytorch.cli import LightningCLI

from lightning_modules.video_diffusion import VideoDiffusion


def _trainer_defaults() -> dict:
    """bf16 mixed precision where the GPU supports it; fp32 on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return {"precision": "bf16-mixed"}
    return {}


class VideoCLI(LightningCLI):
    """LightningCLI plus `torch_threads`: intra-op CPU threads for this run (tiny models on a shared
    CPU run fastest with 1; None keeps torch's default)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--torch_threads", type=int | None, default=None, help="torch.set_num_threads for CPU runs"
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("torch_threads"):
            torch.set_num_threads(config.torch_threads)


def cli_main(args: list[str] | dict | None = None, *, run: bool = True) -> LightningCLI:
    """Run the CLI (`args=None` reads sys.argv); tests pass a list of flags. `run=False` only builds
    the model, data and trainer (then `args` has no subcommand).

    Parser mode "omegaconf+" resolves `${...}` interpolation once, on the merged config, after every
    `--config` file and command-line flag: `--trainer.default_root_dir=runs/exp2` then reaches
    `dirpath: ${trainer.default_root_dir}/checkpoints` ("omegaconf" resolved each file on load, so the
    checkpoints of every run went to the YAML's directory). Paths like `${model.num_classes}` are
    taken relative to the subcommand's config (`fit.model.num_classes`)."""
    jsonargparse.set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return VideoCLI(
        VideoDiffusion,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        trainer_defaults=_trainer_defaults(),
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    cli_main()
