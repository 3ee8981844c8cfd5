"""Exponential moving average of the trainable weights, kept by a Callback.

    trainer = Trainer(callbacks=[EMA(decay=0.9999)])
    with use_ema(trainer, pl_module):      # EMA weights swapped in, raw weights back on exit
        videos = pl_module.generate(...)

The shadow weights are part of the checkpoint (`checkpoint["callbacks"]["EMA"]["shadow"]`) and come
back on resume, so a resumed run continues the same average (Latte issue #55 was an EMA that was
silently re-initialised from the raw weights on resume). `VideoDiffusion.load_for_sampling` reads
them with `ema_weights_from_checkpoint`.

The update runs once per optimizer step (not per micro-batch with gradient accumulation), after
the step: ema <- ema + (1 - decay) * (w - ema); before `start_step` the EMA copies the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

STATE_KEY = "EMA"


class EMA(Callback):
    def __init__(self, *, decay: float = 0.9999, start_step: int = 0, update_every: int = 1):
        """decay: per-update decay; start_step: optimizer steps before which the EMA just copies the
        weights; update_every: update every N optimizer steps (decay applies per update)."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay={decay} must be in [0, 1]")
        self.decay, self.start_step, self.update_every = decay, start_step, update_every
        self.shadow: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self._last_step = -1

    @property
    def state_key(self) -> str:
        return STATE_KEY

    @staticmethod
    def _trainable(pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            raise RuntimeError(
                "the EMA callback keeps full copies of the weights and does not support FSDP's sharded "
                "parameters yet: remove it from trainer.callbacks for FSDP runs (or train with DDP)"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = self._trainable(pl_module)
        if self.shadow is None:  # fresh run: start from the current weights
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        else:  # restored from a checkpoint: keep the loaded average, on the weights' device
            missing = set(params) - set(self.shadow)
            if missing:
                raise KeyError(f"EMA state from the checkpoint lacks {sorted(missing)[:5]}: different model?")
            self.shadow = {n: self.shadow[n].to(p.device, p.dtype) for n, p in params.items()}

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if step == 0 or step == self._last_step or step % self.update_every:  # no optimizer step since
            return
        self._last_step = step
        params = self._trainable(pl_module)
        names = list(self.shadow)
        ema, weights = [self.shadow[n] for n in names], [params[n].detach() for n in names]
        if step <= self.start_step:
            torch._foreach_copy_(ema, weights)
        else:
            torch._foreach_lerp_(ema, weights, 1.0 - self.decay)
        self.num_updates += 1

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "last_step": self._last_step,
            "shadow": None
            if self.shadow is None
            else {n: t.detach().clone() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.num_updates = state_dict["num_updates"]
        self._last_step = state_dict.get("last_step", -1)
        self.shadow = state_dict["shadow"]

    # ------------------------------------------------------------------ swapping
    @contextlib.contextmanager
    def swapped_in(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Copy the EMA weights into `pl_module` for the duration of the block, then restore."""
        if self.shadow is None:
            yield
            return
        params = self._trainable(pl_module)
        backup = {n: p.detach().clone() for n, p in params.items() if n in self.shadow}
        with torch.no_grad():
            for n in backup:
                params[n].copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, w in backup.items():
                    params[n].copy_(w)


def find_ema(trainer: L.Trainer | None) -> EMA | None:
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)


@contextlib.contextmanager
def use_ema(trainer: L.Trainer | None, pl_module: L.LightningModule) -> Iterator[bool]:
    """Swap the EMA weights into `pl_module` inside the block (yields True); a no-op yielding
    False when the trainer has no EMA callback or it holds no weights yet."""
    ema = find_ema(trainer)
    if ema is None or ema.shadow is None:
        yield False
        return
    with ema.swapped_in(pl_module):
        yield True


def ema_weights_from_checkpoint(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    """The EMA shadow weights stored by the `EMA` callback in a loaded checkpoint dict, or None."""
    state = checkpoint.get("callbacks", {}).get(STATE_KEY)
    return None if state is None else state.get("shadow")
