"""Training CLI: `python -m lightning_modules fit|validate|test|predict --config configs/train/X.yaml`.

LightningCLI with OmegaConf parsing, so a YAML may use `${...}` interpolation (e.g.
`patch_size: ${model.dit.patch_size}` in the data section). Flags override the YAML
(`--model.dit.depth=4 --trainer.max_steps=100`), `--print_config` prints the resolved config, and
the resolved config is saved as `config.yaml` in the run's log dir. The model is always
`VideoDiffusion` (its constructor is the `model:` section); the datamodule is chosen by class path.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LightningCLI

from lightning_modules.video_diffusion import VideoDiffusion


def _trainer_defaults() -> dict:
    """bf16 mixed precision where the GPU supports it; fp32 on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return {"precision": "bf16-mixed"}
    return {}


def cli_main(args: list[str] | dict | None = None, *, run: bool = True) -> LightningCLI:
    """Run the CLI (`args=None` reads sys.argv); tests pass a list of flags. `run=False` only builds
    the model, data and trainer (then `args` has no subcommand)."""
    return LightningCLI(
        VideoDiffusion,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        trainer_defaults=_trainer_defaults(),
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    cli_main()
