"""`VideoDiffusion`: the LightningModule. Wiring only:

    batch -> encode (codec, no grad) -> mask (VDT space-time masks) -> [pack] -> loss -> log

The network (`nets/dit.py`), the diffusion / flow math (`diffusion/`), the codec (`nets/codecs.py`)
and the text encoder (`nets/text.py`) live elsewhere and are injected or built from plain config.
The constructor's type hints are the CLI (`--model.dit.depth=4`, `--model.objective=flow`, ...).

Randomness in training (timesteps, noise, masks, condition dropout) comes from generators seeded by
(seed, global step, rank, batch index), not from a running global RNG, so a resumed run draws
exactly what an uninterrupted run would (the dataloader must be resumable for mid-epoch resumes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_modules.diffusion.common import reduce_loss
from lightning_modules.diffusion.flow import RectifiedFlow
from lightning_modules.diffusion.gaussian import GaussianDiffusion
from lightning_modules.diffusion.guidance import reconstruction_guided_sample
from lightning_modules.diffusion.masks import MaskGenerator, align_to_tubelets
from lightning_modules.diffusion.samplers import sample
from lightning_modules.nets.codecs import IdentityCodec, LatentCodec, build_from_spec
from lightning_modules.nets.dit import DIT_PRESETS, VideoDiT
from lightning_modules.nets.init_from import init_from_image_dit, load_image_dit_checkpoint
from lightning_modules.nets.text import OpenCLIPTextEncoder

OBJECTIVES = {"diffusion": GaussianDiffusion, "flow": RectifiedFlow}
DEFAULT_SAMPLER = {"diffusion": "ddim", "flow": "euler"}
FROZEN_PREFIXES = ("codec.", "text_encoder.")  # not stored in checkpoints; rebuilt from their spec


@dataclass(frozen=True)
class DiTConfig:
    """Shape of the `VideoDiT`: a preset from `DIT_PRESETS` plus overrides. `None` keeps the preset's
    value, or `VideoDiT`'s own default. in_channels, num_classes, text_dim, pooled_text_dim and
    learn_sigma are filled in by the module from the codec, labels, text encoder and objective."""

    preset: str | None = None
    patch_size: tuple[int, int, int] | None = None
    hidden_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    block_type: (
        Literal["factorized", "late_fusion", "vdt", "spatial_temporal", "split_heads", "full"] | None
    ) = None
    pos_embed: Literal["rope", "sincos", "sincos_framewise"] | None = None
    causal: bool | None = None  # frame-causal temporal / full attention
    cond_injection: Literal["adaln", "in_context"] | None = None
    frame_cond: Literal["concat", "cross_attn", "adaln"] | None = None  # VDT's given-frame schemes
    attn_backend: Literal["sdpa", "sdpa_dense", "flex", "flash"] | None = None
    grad_checkpointing: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other VideoDiT keyword

    def resolve(self) -> dict[str, Any]:
        """VideoDiT keyword arguments: preset, then the fields that are set, then `extra`."""
        if self.preset is not None and self.preset not in DIT_PRESETS:
            raise ValueError(f"unknown DiT preset {self.preset!r}; choose one of {sorted(DIT_PRESETS)}")
        kwargs = dict(DIT_PRESETS[self.preset]) if self.preset else {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("preset", "extra") and value is not None:
                kwargs[f.name] = tuple(value) if f.name == "patch_size" else value
        return {**kwargs, **self.extra}


def _as_module(spec: nn.Module | dict | None, base: type) -> nn.Module | None:
    return build_from_spec(spec, base) if isinstance(spec, dict) else spec


def _seeded(*ints: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose seed is a hash of `ints` (stateless randomness: no state to checkpoint)."""
    seed = int(np.random.SeedSequence([int(i) % 2**63 for i in ints]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed % 2**63)


def _is_packed(batch: dict) -> bool:
    return "videos" in batch


class VideoDiffusion(L.LightningModule):
    """Video DiT trained with Gaussian diffusion or rectified flow, with VDT space-time masks.

    Args:
        dit: network shape (preset + overrides), see `DiTConfig`.
        objective: "diffusion" (`GaussianDiffusion(**diffusion)`) or "flow" (`RectifiedFlow(**flow)`).
        diffusion, flow: keyword arguments of the objective's class (their defaults are theirs).
        codec: a `LatentCodec` (or its spec dict); None = pixel space (`IdentityCodec`).
        text_encoder: an `OpenCLIPTextEncoder` (or its spec dict) for captions; None = no text.
        num_classes: class-conditional when > 0 (label -1 = no label = the null class).
        mask_probs: task -> probability for `MaskGenerator` (unconditional, predict, backward,
            interpolate, image_to_video, block); None = unconditional generation only.
        cond_drop_prob: probability of dropping the label / caption in training (for CFG).
        loss_weighting: "token" (every generated latent element weighs the same, in packed and
            bucketed batches alike: what a padded batch does) or "sample" (every clip weighs the same).
        lr, betas, weight_decay: AdamW (no decay on norms, biases, embeddings).
        warmup_steps, lr_schedule, min_lr_ratio: linear warmup, then constant or cosine down to
            `min_lr_ratio * lr` at the last step (`trainer.max_steps`).
        compile: `torch.compile` the network for training.
        fused_optimizer: fused AdamW; None = on CUDA unless fp16 loss scaling meets clipping.
        sampler, sample_steps, eta, cfg_scale: defaults of `generate` (sampler None = DDIM for
            diffusion, Euler for flow).
        rng_seed: base seed of training randomness; None = `torch.initial_seed()` (set by `seed_everything`).
        init_from, init_from_mode: start a fresh `fit` from an image DiT checkpoint (DiT's state dict or
            Latte's `{"ema": ...}`), mapped by `nets.init_from_image_dit` ("latte" or "per_frame");
            the report is logged. Applied once: ignored when resuming (`--ckpt_path`), after
            `load_from_checkpoint` (fine-tuning keeps the trained weights) and on a second `fit`.
        spatial_phase_steps, spatial_phase: VDT's schedule: for the first N training steps the
            temporal layers are skipped ("skip": temporal blocks and attentions do not run; full and
            split-head attention run within frames) or frozen ("freeze": they run, their gradients
            are dropped), then joint training. In both, the temporal attention's rows of a
            two-attention block's shared adaLN layer ("vdt", "spatial_temporal") are held too:
            gradients zeroed, values restored after each step (no weight decay). "freeze" needs a
            separate temporal path: refused for "full" / "split_heads". "skip" leaves parameters
            unused: DDP needs `find_unused_parameters=True` (strategy `ddp_find_unused_parameters_true`).
    """

    def __init__(
        self,
        *,
        dit: DiTConfig = DiTConfig(),
        objective: Literal["diffusion", "flow"] = "diffusion",
        diffusion: dict[str, Any] | None = None,
        flow: dict[str, Any] | None = None,
        codec: LatentCodec | None = None,
        text_encoder: OpenCLIPTextEncoder | None = None,
        num_classes: int = 0,
        mask_probs: dict[str, float] | None = None,
        cond_drop_prob: float = 0.1,
        loss_weighting: Literal["token", "sample"] = "token",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        compile: bool = False,
        fused_optimizer: bool | None = None,
        sampler: Literal["ddpm", "ddim", "euler"] | None = None,
        sample_steps: int = 50,
        eta: float = 0.0,
        cfg_scale: float = 1.0,
        rng_seed: int | None = None,
        init_from: str | None = None,
        init_from_mode: Literal["latte", "per_frame"] = "latte",
        spatial_phase_steps: int = 0,
        spatial_phase: Literal["skip", "freeze"] = "skip",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["codec", "text_encoder"])
        dit = DiTConfig(**dit) if isinstance(dit, dict) else dit  # dicts come from checkpoints
        self.codec = _as_module(codec, LatentCodec) or IdentityCodec()
        self.text_encoder = _as_module(text_encoder, OpenCLIPTextEncoder)
        # checkpoints keep plain data only: the frozen parts are rebuilt from their spec
        self.hparams.update(
            dit=asdict(dit),
            codec=self.codec.spec,
            text_encoder=self.text_encoder.spec if self.text_encoder is not None else None,
        )
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}: choose one of {sorted(OBJECTIVES)}")
        objective_kwargs = dict((diffusion if objective == "diffusion" else flow) or {})
        self.objective = OBJECTIVES[objective](**objective_kwargs)
        dit_kwargs = dit.resolve()
        dit_kwargs.update(
            in_channels=self.codec.latent_channels,
            num_classes=num_classes,
            text_dim=self.text_encoder.text_dim if self.text_encoder is not None else 0,
            pooled_text_dim=self.text_encoder.pooled_dim if self.text_encoder is not None else 0,
            learn_sigma=bool(objective_kwargs.get("learn_sigma", False)),
        )
        self.dit = VideoDiT(**dit_kwargs)
        if (
            spatial_phase == "freeze"
            and spatial_phase_steps > 0
            and self.dit.block_type in ("full", "split_heads")
        ):
            raise ValueError(
                f"spatial_phase='freeze' needs separate temporal layers, but block_type={self.dit.block_type!r} "
                "mixes frames inside shared attention weights: use spatial_phase='skip' (it runs that "
                "attention within frames) or a factorized / late_fusion / vdt / spatial_temporal model"
            )
        self.patch_size = tuple(self.dit.patch_size)
        self.masks = MaskGenerator(probs=dict(mask_probs)) if mask_probs else None
        # what the objective calls: the DiT itself, or its compiled wrapper when compile=True. Kept
        # outside the module tree (object.__setattr__), else every DiT tensor would be registered a
        # second time (`_net.*` beside `dit.*`): twice the checkpoint, refused by safetensors, and
        # confusing for sharded (FSDP) state dicts.
        object.__setattr__(self, "_net", self.dit)
        self.sample_shape: tuple[int, int, int] | None = None  # (T, H, W) pixels of the last training clips
        self._init_from_done = False  # True once init_from was applied or weights were restored
        self._held_rows: list = []  # (parameter, rows, values) restored after this optimizer step

    # ------------------------------------------------------------------ setup and checkpoints
    def setup(self, stage: str) -> None:
        self.check_data_matches()
        # `init_from` starts a fresh model only: never once weights were restored (a resumed fit, or
        # `load_from_checkpoint` then `fit` to fine-tune: the checkpoint's hparams keep `init_from`)
        # nor a second time on the same instance
        if (
            stage == "fit"
            and self.hparams.init_from
            and not self._init_from_done
            and self._trainer is not None
            and self._trainer.ckpt_path is None
        ):
            state = load_image_dit_checkpoint(self.hparams.init_from)
            report = init_from_image_dit(self.dit, state, mode=self.hparams.init_from_mode)
            rank_zero_info(f"{self.hparams.init_from}: {report}")
            self._init_from_done = True
        if self.hparams.compile and stage == "fit" and self._net is self.dit:
            object.__setattr__(self, "_net", torch.compile(self.dit))

    def check_data_matches(self) -> None:
        """Stop before step one when the data module counts tokens with another patch size or codec
        stride than the model uses (its batches, buckets and packs would be sized wrongly)."""
        trainer = self._trainer
        grid = getattr(getattr(trainer, "datamodule", None), "grid", None) if trainer is not None else None
        if grid is None:
            return
        pairs = (
            (
                "model.dit.patch_size",
                tuple(self.dit.patch_size),
                "data.init_args.patch_size",
                tuple(grid.patch_size),
            ),
            (
                "model.codec (downsample)",
                tuple(self.codec.downsample),
                "data.init_args.latent_downsample",
                tuple(grid.latent_downsample),
            ),
        )
        for model_key, model_value, data_key, data_value in pairs:
            if model_value != data_value:
                raise ValueError(
                    f"{model_key}={list(model_value)} but {data_key}={list(data_value)}: set them equal "
                    f"(e.g. {data_key}: ${{model.dit.patch_size}} in the config), else batches are sized "
                    "for the wrong token count"
                )

    def configure_model(self) -> None:
        """FSDP2 under `lightning_modules.strategies.FSDP2Strategy` (configs/train/fsdp.yaml): each DiT
        block, then the rest of the DiT, is sharded with `fully_shard` over the data-parallel ranks
        (parameters become DTensors holding this rank's shard; the frozen codec and text encoder stay
        replicated). A no-op without a device mesh (single device, DDP)."""
        mesh = self._device_mesh if hasattr(self, "_device_mesh") else None
        if mesh is None or getattr(self.dit, "_videodit_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"VideoDiT has no tensor parallelism, but the device mesh has tensor_parallel size "
                f"{mesh['tensor_parallel'].size()}: use strategy lightning_modules.strategies.FSDP2Strategy "
                "(configs/train/fsdp.yaml), which shards over every rank"
            )
        dp_mesh = mesh["data_parallel"] if mesh.ndim > 1 else mesh
        for block in self.dit.blocks:
            fully_shard(block, mesh=dp_mesh)
        fully_shard(self.dit, mesh=dp_mesh)
        self.dit._videodit_sharded = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        for key in [k for k in sd if k.startswith(FROZEN_PREFIXES)]:
            del sd[key]
        checkpoint["videodit"] = {"sample_shape": list(self.sample_shape) if self.sample_shape else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._init_from_done = True  # (load_from_checkpoint and resume both call this)
        shape = checkpoint.get("videodit", {}).get("sample_shape")
        self.sample_shape = tuple(shape) if shape else None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Checkpoints omit the frozen codec / text encoder: take those from this instance."""
        own = {k: v for k, v in super().state_dict().items() if k.startswith(FROZEN_PREFIXES)}
        return super().load_state_dict({**own, **state_dict}, strict=strict, assign=assign)

    # ------------------------------------------------------------------ conditioning
    def _seed(self) -> int:
        return self.hparams.rng_seed if self.hparams.rng_seed is not None else torch.initial_seed()

    def conditioning(
        self, batch: dict, n: int, *, drop: torch.Tensor | None = None, null: bool = False
    ) -> dict[str, torch.Tensor]:
        """Model keyword arguments for `n` samples; `drop` (n,) bool replaces the condition by the
        null one (class `num_classes`, empty caption); `null=True` drops all (the CFG branch)."""
        kwargs: dict[str, torch.Tensor] = {}
        drop = torch.full((n,), null, dtype=torch.bool) if drop is None or null else drop.cpu()
        if self.hparams.num_classes > 0:
            label = batch.get("label")
            y = (
                torch.full((n,), -1, dtype=torch.long)
                if label is None
                else torch.as_tensor(label).cpu().long()
            )
            y = torch.where((y < 0) | drop, torch.full_like(y, self.hparams.num_classes), y)
            kwargs["y"] = y.to(self.device)
        if self.text_encoder is not None:
            captions = list(batch.get("caption") or [""] * n)
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            enc = self.text_encoder(captions)
            kwargs.update(text=enc["tokens"], text_mask=enc["mask"], pooled_text=enc["pooled"])
        return kwargs

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def encode(self, batch: dict) -> torch.Tensor | list[torch.Tensor]:
        """Latents of a batch: (B, C, T', H', W') bucketed, or a list of (C, T_i', H_i', W_i') packed.
        Precomputed `latent` / `latents` in the batch skip the codec."""
        if _is_packed(batch):
            if batch.get("latents") is not None:
                return [z.float() for z in batch["latents"]]
            return [self.codec.encode(v[None])[0] for v in batch["videos"]]
        if batch.get("latent") is not None:
            return batch["latent"].float()
        return self.codec.encode(batch["video"])

    def model_step(self, batch: dict, batch_idx: int, stage: str) -> torch.Tensor:
        x0 = self.encode(batch)
        packed = isinstance(x0, list)
        n = len(x0) if packed else x0.shape[0]
        training = stage == "train"
        if training:
            self.sample_shape = tuple(batch["videos"][0].shape[1:] if packed else batch["video"].shape[2:])
        # stateless generators (validation: the same draws at every evaluation): CPU for t, masks and
        # dropout (the objectives draw t on CPU), the device for noise
        step = self.trainer.global_step if training and self._trainer is not None else 0
        key = (self._seed(), training, step, self.global_rank, batch_idx)
        cpu_gen, dev_gen = _seeded(*key), _seeded(*key, 1, device=self.device)

        shapes = [tuple(z.shape) for z in x0] if packed else [tuple(x0.shape[1:])] * n  # (C, T', H', W')
        mask = None
        if self.masks is not None:
            # token-level draws are whole tubelets already; align_to_tubelets is the one rule that
            # training and sampling share (a no-op here, a guard for any other mask source)
            if packed:
                mask = [
                    align_to_tubelets(self.masks(1, *s[1:], self.patch_size, cpu_gen)[0], self.patch_size).to(
                        self.device
                    )
                    for s in shapes
                ]
            else:
                mask = align_to_tubelets(
                    self.masks(n, *shapes[0][1:], self.patch_size, cpu_gen), self.patch_size
                )
                mask = mask.to(self.device)
        drop = torch.rand(n, generator=cpu_gen) < (self.hparams.cond_drop_prob if training else 0.0)
        model_kwargs = self.conditioning(batch, n, drop=drop)

        t = self.objective.sample_t(shapes, self.device, generator=cpu_gen)  # (B,)
        if packed:
            noise = [torch.randn(z.shape, generator=dev_gen, device=self.device) for z in x0]
        else:
            noise = torch.randn(x0.shape, generator=dev_gen, device=self.device)
        out = self.objective.training_losses(
            self._net, x0, t, mask=mask, noise=noise, model_kwargs=model_kwargs
        )
        weighting = self.hparams.loss_weighting
        loss = reduce_loss(out["loss"], out["weight"], weighting)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=not training)
        for term in ("mse", "vb"):  # the parts of a hybrid (learned-sigma) loss
            if term in out and out[term] is not out["loss"]:
                value = reduce_loss(out[term].detach(), out["weight"], weighting)
                self.log(f"{stage}/{term}", value, batch_size=n, sync_dist=not training)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, batch_idx, "train")

    def in_spatial_phase(self) -> bool:
        return self.global_step < self.hparams.spatial_phase_steps

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.dit.temporal_enabled = not (self.hparams.spatial_phase == "skip" and self.in_spatial_phase())

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self.in_spatial_phase():
            return
        if self.hparams.spatial_phase == "freeze":
            for p in self.dit.temporal_parameters():
                p.grad = None  # AdamW leaves a parameter without a gradient untouched
        # the temporal attention's rows of a shared adaLN layer: no gradient (clean Adam moments for
        # the joint phase) and their values put back after the step (weight decay would shrink them)
        rows = self.dit.temporal_modulation_rows()
        if rows and getattr(self.dit, "_videodit_sharded", False):
            raise NotImplementedError(
                "the spatial-only phase of vdt / spatial_temporal blocks holds rows of sharded (FSDP2) "
                "adaLN weights: train that phase with DDP, or use factorized / late_fusion blocks"
            )
        with torch.no_grad():
            for p, r in rows:
                if p.grad is not None:
                    p.grad[r] = 0
                self._held_rows.append((p, r, p[r].clone()))

    def optimizer_step(self, *args, **kwargs):
        try:
            return super().optimizer_step(*args, **kwargs)
        finally:
            with torch.no_grad():
                for p, r, value in self._held_rows:
                    p[r] = value
            self._held_rows.clear()

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor | list[torch.Tensor]:
        """Generate one video per batch element, with the batch's labels / captions and shape: a
        tensor (B, 3, T, H, W) for a bucketed batch, a list of (3, T_i, H_i, W_i) for a packed one
        (every clip at its own shape)."""
        seed = self._seed() + batch_idx * 100_003 + self.global_rank
        labels, captions = batch.get("label"), batch.get("caption")
        if not _is_packed(batch):
            _, _, frames, height, width = batch["video"].shape
            n = batch["video"].shape[0]
            return self.generate(n, num_frames=frames, height=height, width=width, seed=seed, batch_size=n,
                                 labels=labels, captions=captions)  # fmt: skip
        out = []
        for i, video in enumerate(batch["videos"]):  # (3, T_i, H_i, W_i)
            _, frames, height, width = video.shape
            out.append(
                self.generate(
                    1, num_frames=frames, height=height, width=width, seed=seed + i, batch_size=1,
                    labels=None if labels is None else torch.as_tensor(labels)[i : i + 1],
                    captions=None if captions is None else list(captions)[i : i + 1],
                )[0]
            )  # fmt: skip
        return out

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict]:
        """AdamW groups: weight decay on Linear / Conv weights only; none on norms, biases and
        embeddings (nn.Embedding tables, positional / mask tokens and other free parameters)."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                is_matrix = (
                    isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and name == "weight"
                )
                (decay if is_matrix else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def lr_lambda(self, step: int) -> float:
        """Multiplier of `lr` after `step` optimizer steps: linear warmup, then constant or cosine."""
        hp = self.hparams
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        if hp.lr_schedule == "constant":
            return 1.0
        total = self._total_steps()
        progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
        return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _total_steps(self) -> int:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("lr_schedule='cosine' needs a finite length: set trainer.max_steps")
        return int(total)

    def _use_fused_optimizer(self) -> bool:
        """Fused AdamW (one kernel for all parameters) on CUDA, unless a loss scaler is in play with
        gradient clipping: fp16 `16-mixed` must unscale the gradients before clipping, which a fused
        optimizer does inside its step, so Lightning refuses that pair. bf16 and fp32 have no scaler:
        the gradients are true, `configure_gradient_clipping` clips them itself and fused stays."""
        if self.hparams.fused_optimizer is not None:
            return self.hparams.fused_optimizer
        if self.device.type != "cuda" or getattr(self.dit, "_videodit_sharded", False):
            return False  # (FSDP2's DTensor parameters: the foreach path is the one FSDP2 tests)
        trainer = self._trainer
        scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
        return scaler is None or not trainer.gradient_clip_val

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip as Lightning does, with two cases it refuses handled here:
        - a fused optimizer without a loss scaler (bf16-mixed / fp32): Lightning's mixed-precision
          plugin rejects any optimizer that *could* unscale inside its step, though bf16 never scales;
          the gradients are true, so they are clipped directly;
        - FSDP1 (Lightning's `FSDPStrategy`): the norm must be taken over all shards
          (`FullyShardedDataParallel.clip_grad_norm_`), which Lightning's FSDP plugin does not call."""
        if not gradient_clip_val:
            return
        algorithm = gradient_clip_algorithm or "norm"
        wrapped = getattr(self.trainer.strategy, "model", None)
        if algorithm == "norm" and hasattr(wrapped, "clip_grad_norm_") and wrapped is not self:
            wrapped.clip_grad_norm_(gradient_clip_val)  # FSDP1: total norm over every shard
            return
        # (FSDP2: gradients are DTensors, and torch.nn.utils.clip_grad_norm_ reduces over the shards)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=algorithm)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.parameter_groups(),
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            fused=self._use_fused_optimizer(),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    # ------------------------------------------------------------------ sampling
    def _latent_mask(self, mask: torch.Tensor, n: int, latent_thw: tuple[int, int, int]) -> torch.Tensor:
        """A given-mask as (n, 1, T', H', W') bool: accepts latent- or pixel-resolution masks with
        any leading dims (e.g. (T, H, W), (1, T, H, W)); pixel ones are subsampled by the codec's stride."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        while mask.dim() < 5:
            mask = mask[None]
        if tuple(mask.shape[2:]) != tuple(latent_thw):
            dt, dh, dw = self.codec.downsample
            mask = mask[:, :, ::dt, ::dh, ::dw]
        try:
            return mask.expand(n, 1, *latent_thw).to(self.device)
        except RuntimeError as e:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match latents (n={n}, 1, {latent_thw}); give it at "
                "pixel or latent resolution, e.g. from lightning_modules.diffusion.masks.predict_mask"
            ) from e

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        num_frames: int,
        height: int,
        width: int,
        seed: int = 0,
        batch_size: int = 8,
        labels: list[int] | torch.Tensor | None = None,
        captions: list[str] | None = None,
        given: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        conditioning: Literal["auto", "replace", "guidance"] = "auto",
        guidance_weight: float = 2.0,
        task: Literal["window", "extend"] = "window",
        total_frames: int | None = None,
        overlap: int = 2,
        corrector_steps: int = 0,
        frameskip: int = 1,
        first_index: int = 0,
    ) -> torch.Tensor:
        """`n` videos (n, 3, T, H, W) in [-1, 1], deterministic for a seed (sample i depends on
        (seed, first_index + i) only, not on `batch_size`: a caller generating 1000 samples in pieces
        passes the index of each piece's first sample). `given` (n, 3, T, H, W)
        pixels and `mask` (True = given, pixel or latent resolution) condition on known content,
        which the output keeps exactly at given positions (exactly in pixels with the identity codec).

        conditioning: how given content conditions the rest. "replace": given tokens fed clean (VDT
        masks; needs a mask-trained model); "guidance": VDM reconstruction guidance of weight
        `guidance_weight` for models trained without masks (rectified flow); "auto": replace when
        the model was trained with `mask_probs`, else guidance.
        corrector_steps: Langevin corrector steps after each guided step (guidance only; VDM's
        predictor-corrector sampling).
        task="extend": `total_frames` frames (any length) chunk by chunk, each chunk of `num_frames`
        (the training length) conditioned on the last `overlap` frames of the one before.
        frameskip > 1 (extend): keyframes `frameskip` frames apart chunk by chunk, then the frames
        between each two keyframes by one conditioned window (VDM frameskip interpolation)."""
        if frameskip > 1 and task != "extend":
            raise ValueError(f"frameskip={frameskip} applies to task='extend' only")
        if frameskip > 1 and given is not None:
            raise ValueError(
                "frameskip > 1 generates keyframes frameskip frames apart, so given frames would land at the "
                "wrong times: extend a given clip with frameskip=1"
            )
        if task == "extend" and frameskip > 1:
            from lightning_modules.diffusion.long import fill_between, keyframe_count

            if total_frames is None:
                raise ValueError("task='extend' needs total_frames")
            kw = dict(height=height, width=width, batch_size=batch_size, labels=labels, captions=captions,
                      steps=steps, cfg_scale=cfg_scale, conditioning=conditioning,
                      guidance_weight=guidance_weight, corrector_steps=corrector_steps,
                      first_index=first_index)  # fmt: skip
            t = num_frames
            keys = self.generate(n, task="extend", total_frames=max(keyframe_count(total_frames, frameskip), t),
                                 num_frames=t, overlap=overlap, seed=seed, given=given, mask=mask, **kw)  # fmt: skip
            window = lambda m, **w: self.generate(m, **w, **kw)  # noqa: E731
            return fill_between(window, keys, stride=frameskip, num_frames=t, seed=seed)[:, :, :total_frames]
        if task == "extend":
            return self._extend(n, total_frames=total_frames, num_frames=num_frames, height=height, width=width,
                                overlap=overlap, seed=seed, batch_size=batch_size, labels=labels, captions=captions,
                                given=given, mask=mask, steps=steps, cfg_scale=cfg_scale, conditioning=conditioning,
                                guidance_weight=guidance_weight, corrector_steps=corrector_steps,
                                first_index=first_index)  # fmt: skip
        if task != "window":
            raise ValueError(f"task={task!r}: choose 'window' or 'extend'")
        if (given is None) != (mask is None):
            raise ValueError("pass `given` and `mask` together (mask True = position taken from `given`)")
        hp = self.hparams
        guided = given is not None and self._conditioning_mode(conditioning) == "guidance"
        steps = steps or hp.sample_steps
        cfg_scale = hp.cfg_scale if cfg_scale is None else cfg_scale
        if guided and cfg_scale != 1.0:
            rank_zero_warn(
                "reconstruction guidance samples without classifier-free guidance (cfg_scale ignored)"
            )
        sampler = hp.sampler or DEFAULT_SAMPLER[hp.objective]
        latent_thw = self.codec.latent_shape(num_frames, height, width)
        shape_z = (self.codec.latent_channels, *latent_thw)
        was_training = self.training
        self.eval()
        outs = []
        try:
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                part = {}
                if labels is not None:
                    part["label"] = torch.as_tensor(labels)[start : start + b]
                if captions is not None:
                    part["caption"] = list(captions)[start : start + b]
                model_kwargs = self.conditioning(part, b)
                # one generator per sample, seeded by (seed, index): sample i is the same whatever
                # batch_size splits the n samples
                generators = [_seeded(seed, first_index + i) for i in range(start, start + b)]
                given_z = asked_z = None
                if given is not None:
                    given_z = self.codec.encode(given[start : start + b].to(self.device).float())
                    per_sample = mask.dim() == 5 and mask.shape[0] == n and n > 1
                    asked_z = self._latent_mask(
                        mask[start : start + b] if per_sample else mask, b, latent_thw
                    )
                if guided:  # the model was trained without masks: it is never told what is given
                    z = reconstruction_guided_sample(
                        self.dit, self.objective, (b, *shape_z), given=given_z, mask=asked_z, weight=guidance_weight,
                        steps=steps, model_kwargs=model_kwargs, corrector_steps=corrector_steps, generator=generators,
                    )  # fmt: skip
                else:
                    mask_z = None if asked_z is None else align_to_tubelets(asked_z, self.patch_size)
                    if start == 0 and mask_z is not None and not torch.equal(mask_z, asked_z):
                        rank_zero_warn(
                            f"the given positions do not fill whole tubelets (patch_size={list(self.patch_size)}): "
                            "partly given tubelets are generated, then their given frames are put back "
                            "(there may be a seam); give whole tubelets (e.g. a multiple of "
                            f"{self.patch_size[0]} frames) for a seamless result"
                        )
                    z = sample(
                        self.dit,
                        self.objective,
                        (b, *shape_z),
                        sampler=sampler,
                        steps=steps,
                        eta=hp.eta,
                        given=given_z,
                        mask=mask_z,
                        cfg_scale=cfg_scale,
                        model_kwargs=model_kwargs,
                        uncond_kwargs=self.conditioning(part, b, null=True) if cfg_scale != 1.0 else None,
                        generator=generators,
                    )
                if asked_z is not None:  # given latents kept exactly, partly given tubelets included
                    z = torch.where(asked_z, given_z.to(z.dtype), z)
                video = self.codec.decode(z)[:, :, :num_frames].clamp(-1, 1)  # (b, 3, T, H, W)
                outs.append(video.float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(outs)

    def _conditioning_mode(self, conditioning: str) -> str:
        if conditioning == "auto":
            return "replace" if self.masks is not None or self.hparams.objective != "flow" else "guidance"
        if conditioning not in ("replace", "guidance"):
            raise ValueError(f"conditioning={conditioning!r}: choose auto, replace or guidance")
        if conditioning == "guidance" and self.hparams.objective != "flow":
            raise ValueError("conditioning='guidance' (VDM reconstruction guidance) needs objective='flow'")
        return conditioning

    def _extend(self, n, *, total_frames, num_frames, overlap, seed, given, mask, **kw) -> torch.Tensor:
        """Chunk-by-chunk generation past the training length (VDM / FDM style)."""
        if total_frames is None or total_frames < num_frames:
            raise ValueError(
                f"task='extend' needs total_frames >= num_frames ({num_frames}), got {total_frames}"
            )
        if not 0 < overlap < num_frames:
            raise ValueError(f"overlap={overlap} must lie in [1, num_frames - 1 = {num_frames - 1}]")
        video = self.generate(
            n, num_frames=num_frames, seed=seed, given=given, mask=mask, **kw
        )  # (n, 3, T, H, W)
        chunk = 1
        while video.shape[2] < total_frames:
            _, _, _, h, w = video.shape
            cond = torch.zeros(n, 3, num_frames, h, w)
            cond[:, :, :overlap] = video[:, :, -overlap:]
            known = torch.zeros(n, 1, num_frames, h, w, dtype=torch.bool)
            known[:, :, :overlap] = True
            nxt = self.generate(
                n, num_frames=num_frames, seed=seed + 7919 * chunk, given=cond, mask=known, **kw
            )
            video = torch.cat([video, nxt[:, :, overlap:]], dim=2)
            chunk += 1
        return video[:, :, :total_frames]

    @classmethod
    def load_for_sampling(
        cls, ckpt_path: str, *, use_ema: bool = True, map_location: str | torch.device = "cpu"
    ) -> VideoDiffusion:
        """Rebuild a module from a training checkpoint (hyper-parameters + weights), in eval mode,
        with the EMA weights swapped in when `use_ema` and the checkpoint has them."""
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
        model = cls(**hparams)
        model.load_state_dict(ckpt["state_dict"])
        model.on_load_checkpoint(ckpt)
        if use_ema:
            from lightning_modules.callbacks.ema import ema_weights_from_checkpoint

            shadow = ema_weights_from_checkpoint(ckpt)
            if shadow is None:
                rank_zero_warn(
                    f"{ckpt_path} holds no EMA weights (no EMA callback in training): using raw weights"
                )
            else:
                missing = set(n for n, p in model.named_parameters() if p.requires_grad) - set(shadow)
                if missing:
                    raise KeyError(
                        f"EMA weights in {ckpt_path} miss {sorted(missing)[:5]}...: wrong checkpoint?"
                    )
                model.load_state_dict(shadow, strict=False)
                rank_zero_info(f"loaded EMA weights from {ckpt_path}")
        return model.to(map_location).eval()
