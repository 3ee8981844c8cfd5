"""Exponential moving average of the trainable weights, kept by a Callback.

    trainer = Trainer(callbacks=[EMA(decay=0.9999)])
    with use_ema(trainer, pl_module):      # EMA weights swapped in, raw weights back on exit
        videos = pl_module.generate(...)

**Right from the first steps.** The decay warms up, as in diffusers' `EMAModel` and timm:
decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update (n = 0, 1, ...). Without it an EMA of
0.9999 holds 0.9999^200 = 98% of the initial weights after 200 steps; with adaLN-Zero the initial
network predicts zero, so every early sample, short run and fine-tune from a fresh EMA samples a
shrunken prediction (noise). `warmup=False` restores the constant decay.

**Why our own and not Lightning's `WeightAveraging`**: that callback deep-copies the whole
LightningModule into an `AveragedModel` -- the frozen codec (a VAE) and text encoder included, which
never change and can be gigabytes -- and does not shard under FSDP. Ours averages only the trainable
parameters, in place of the live ones when swapped in, and under FSDP2 (configs/train/fsdp.yaml) each
rank averages its own shard of them (the averaged copy is a DTensor sharded like the weights).

The shadow weights are part of the checkpoint (`checkpoint["callbacks"]["EMA"]["shadow"]`, always
the full, unsharded tensors under the module's own parameter names) and come back on resume, so a
resumed run continues the same average (Latte issue #55 was an EMA silently re-initialised from the
raw weights on resume). `VideoDiffusion.load_for_sampling` reads them with
`ema_weights_from_checkpoint`.

The update runs once per optimizer step (not per micro-batch with gradient accumulation), after
the step: ema <- ema + (1 - decay_n) * (w - ema); before `start_step` the EMA copies the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

STATE_KEY = "EMA"


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor"  # FSDP2's sharded parameters (no import needed to tell)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full tensor: a DTensor is gathered from its shards (a collective every rank must call)."""
    return t.full_tensor() if _is_dtensor(t) else t.detach().clone()


def _like(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`full` placed like parameter `p`: on its device and dtype, and sharded like it when p is a DTensor."""
    if _is_dtensor(p):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(p.device, p.dtype), p.device_mesh, p.placements)
    return full.to(p.device, p.dtype)


def warmup_decay(decay: float, num_updates: int) -> float:
    """min(decay, (1 + n) / (10 + n)): about 0.1 at the first update, 0.5 after 8, 0.9 after 80."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class EMA(Callback):
    def __init__(
        self, *, decay: float = 0.9999, warmup: bool = True, start_step: int = 0, update_every: int = 1
    ):
        """decay: the per-update decay (reached after the warm-up); warmup: decay_n =
        min(decay, (1 + n) / (10 + n)) at update n; start_step: optimizer steps before which the EMA
        just copies the weights; update_every: update every N optimizer steps."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay={decay} must be in [0, 1]")
        self.decay, self.warmup, self.start_step, self.update_every = decay, warmup, start_step, update_every
        self.shadow: dict[str, torch.Tensor] | None = None  # name -> tensor (a sharded DTensor under FSDP2)
        self.num_updates = 0
        self._last_step = -1

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return warmup_decay(self.decay, self.num_updates) if self.warmup else self.decay

    @staticmethod
    def _trainable(pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters by name (FSDP2's `fully_shard` keeps the module's own names)."""
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            raise RuntimeError(
                "the EMA callback supports FSDP2 (Lightning's ModelParallelStrategy, as in "
                "configs/train/fsdp.yaml), not the FSDP1 `FSDPStrategy` whose flat parameters it cannot "
                "average by name: stack configs/train/fsdp.yaml instead, or remove EMA from the callbacks"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = self._trainable(pl_module)
        if self.shadow is None:  # fresh run: start from the current weights (DTensor shards under FSDP2)
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
            return
        missing = set(params) - set(self.shadow)  # restored from a checkpoint: keep the loaded average
        if missing:
            raise KeyError(f"EMA state from the checkpoint lacks {sorted(missing)[:5]}: different model?")
        self.shadow = {n: _like(self.shadow[n], p) for n, p in params.items()}

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
            torch._foreach_lerp_(ema, weights, 1.0 - self.current_decay())
        self.num_updates += 1

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The full average (FSDP2 shards are gathered: Lightning calls this on every rank while it
        dumps a checkpoint, so the collective is safe)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "last_step": self._last_step,
            "shadow": None if self.shadow is None else {n: _full(t) for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.num_updates = state_dict["num_updates"]
        self._last_step = state_dict.get("last_step", -1)
        self.shadow = state_dict["shadow"]

    # ------------------------------------------------------------------ swapping
    @contextlib.contextmanager
    def swapped_in(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Copy the EMA weights into `pl_module` for the duration of the block, then restore (under
        FSDP2 each rank swaps its own shards)."""
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
