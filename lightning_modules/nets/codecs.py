"""Latent codecs: map pixel videos to the space the DiT is trained in, and back.

A codec is a frozen `nn.Module` with

    encode(video (B, 3, T, H, W) in [-1, 1]) -> latent (B, C, T', H', W')
    decode(latent (B, C, T', H', W')) -> video (B, 3, T, H, W) in [-1, 1]
    latent_channels: int             C
    downsample: (dt, dh, dw)         T' = ceil(T / dt), H' = H / dh, W' = W / dw

and a `spec` (class path + constructor kwargs) so a checkpoint can rebuild it without storing its
weights. A video VAE implements the same four members.

- `IdentityCodec`: pixel space, for tiny runs and tests.
- `SDVAECodec`: the Stable Diffusion image VAE (diffusers `AutoencoderKL`) applied per frame, as
  DiT, Latte and VDT do; latents scaled by 0.18215. Needs the optional extra `vae`
  (`pip install -e ".[vae]"`).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from einops import rearrange
from torch import nn


class LatentCodec(nn.Module):
    """Interface of a frozen video codec (see the module docstring)."""

    latent_channels: int = 3
    downsample: tuple[int, int, int] = (1, 1, 1)

    def __init__(self, **spec_kwargs: Any):
        super().__init__()
        self._spec_kwargs = dict(spec_kwargs)

    @property
    def spec(self) -> dict:
        """Plain data that rebuilds this codec: `{"class_path": ..., "init_args": {...}}`."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._spec_kwargs)}

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, C, T', H', W')
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # (B, C, T', H', W') -> (B, 3, T, H, W)
        raise NotImplementedError

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of the latent of a (T, H, W) video; raises if H or W do not divide."""
        dt, dh, dw = self.downsample
        if height % dh or width % dw:
            raise ValueError(
                f"video size {height}x{width} is not divisible by the codec's spatial downsampling "
                f"({dh}, {dw}); resize or crop the frames to multiples of it"
            )
        return -(-num_frames // dt), height // dh, width // dw

    def train(self, mode: bool = True) -> LatentCodec:
        return super().train(False)  # frozen: always in eval mode


class IdentityCodec(LatentCodec):
    """Pixel space: the 'latent' is the video itself."""

    latent_channels = 3
    downsample = (1, 1, 1)

    def __init__(self):
        super().__init__()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent


class SDVAECodec(LatentCodec):
    """Stable Diffusion's `AutoencoderKL`, frozen, applied to each frame independently.

    `path_or_id` is a local directory written by `save_pretrained` (or a diffusers pipeline folder,
    then `subfolder="vae"`) or a Hugging Face hub id such as `stabilityai/sd-vae-ft-ema`.
    `sample_posterior=False` encodes to the posterior mean, which keeps encoding deterministic;
    `micro_batch` frames go through the VAE at a time to bound memory.
    """

    downsample = (1, 8, 8)

    def __init__(
        self,
        path_or_id: str,
        *,
        scale: float = 0.18215,
        subfolder: str | None = None,
        sample_posterior: bool = False,
        micro_batch: int = 16,
    ):
        super().__init__(
            path_or_id=path_or_id,
            scale=scale,
            subfolder=subfolder,
            sample_posterior=sample_posterior,
            micro_batch=micro_batch,
        )
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError(
                'SDVAECodec needs diffusers: install the optional extra with `pip install -e ".[vae]"`, '
                "or use lightning_modules.nets.codecs.IdentityCodec for pixel-space training"
            ) from e
        kwargs = {"subfolder": subfolder} if subfolder else {}
        try:
            self.vae = AutoencoderKL.from_pretrained(path_or_id, **kwargs)
        except (OSError, ValueError) as e:
            raise OSError(
                f"could not load an AutoencoderKL from {path_or_id!r}: pass a local directory written by "
                "`AutoencoderKL.save_pretrained` (config.json + weights), a pipeline folder with "
                "subfolder='vae', or a hub id reachable from this machine"
            ) from e
        self.vae.requires_grad_(False).eval()
        self.scale = scale
        self.sample_posterior = sample_posterior
        self.micro_batch = micro_batch
        self.latent_channels = int(self.vae.config.latent_channels)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.downsample = (1, factor, factor)

    def _per_frame(self, fn, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        out = torch.cat([fn(chunk) for chunk in frames.split(self.micro_batch)])
        return rearrange(out, "(b t) c h w -> b c t h w", b=b)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 4, T, H/8, W/8)
        self.latent_shape(video.shape[2], video.shape[3], video.shape[4])  # fail early on odd sizes
        dtype = next(self.vae.parameters()).dtype

        def enc(frames):
            dist = self.vae.encode(frames.to(dtype)).latent_dist
            return (dist.sample() if self.sample_posterior else dist.mean) * self.scale

        return self._per_frame(enc, video).float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # (B, 4, T, h, w) -> (B, 3, T, 8h, 8w)
        dtype = next(self.vae.parameters()).dtype
        out = self._per_frame(lambda z: self.vae.decode(z.to(dtype) / self.scale).sample, latent)
        return out.float().clamp(-1, 1)


def build_from_spec(spec: dict, base: type) -> nn.Module:
    """Instantiate `{"class_path", "init_args"}` (as stored in checkpoints); the class must subclass `base`."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(
            f"expected {{'class_path': ..., 'init_args': {{...}}}} for a {base.__name__}, got {spec!r}"
        )
    module_name, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{spec['class_path']} is not a subclass of {base.__name__}")
    return cls(**spec.get("init_args", {}))
