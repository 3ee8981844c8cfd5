"""Frozen open_clip text encoder: caption tokens for cross-attention and a pooled vector for adaLN.

    encoder = OpenCLIPTextEncoder(model="ViT-B-32", pretrained="laion2b_s34b_b79k")   # a pretrained tag
    encoder = OpenCLIPTextEncoder(model="ViT-B-32", pretrained="/ckpts/clip_b32.pt")    # a local checkpoint
    encoder = OpenCLIPTextEncoder(model="local-dir:/ckpts/my_clip")  # open_clip_config.json + weights
    out = encoder(["a red car", "a dog"])
    out["tokens"] (B, L, width), out["mask"] (B, L) bool (True = real token), out["pooled"] (B, embed_dim)

Only the text tower is kept (the image tower is dropped after loading). With no weights at all
(`pretrained=None` and no local dir) the encoder is random and says `uncalibrated` once.
"""

from __future__ import annotations

import open_clip
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_modules.nets.codecs import LatentCodec


class OpenCLIPTextEncoder(nn.Module):
    """Frozen open_clip text tower. `model`: an open_clip architecture name or `local-dir:PATH`;
    `pretrained`: an open_clip pretrained tag or a local checkpoint file (ignored for `local-dir:`)."""

    def __init__(
        self, *, model: str = "ViT-B-32", pretrained: str | None = None, context_length: int | None = None
    ):
        super().__init__()
        self._spec_kwargs = dict(model=model, pretrained=pretrained, context_length=context_length)
        try:
            clip = open_clip.create_model(model, pretrained=pretrained, force_context_length=context_length)
        except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
            raise RuntimeError(
                f"could not build the open_clip text encoder model={model!r} pretrained={pretrained!r}: pass an "
                "open_clip architecture name with a local checkpoint file (pretrained=/path/to/ckpt.pt), or "
                "model='local-dir:/path' holding open_clip_config.json and open_clip_pytorch_model.bin"
            ) from e
        self.calibrated = pretrained is not None or model.startswith("local-dir:")
        if not self.calibrated:
            rank_zero_warn(f"text encoder {model!r} has random weights (no `pretrained` given): uncalibrated")
        if hasattr(clip, "visual"):
            del clip.visual  # only the text tower is used
        self.clip = clip.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer(model, context_length=context_length)
        text_tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps its tower in .text
        self._ln_final = text_tower.ln_final
        self.text_dim = int(self._ln_final.normalized_shape[0])
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", 0) or 0)
        with torch.no_grad():
            self.pooled_dim = int(self.clip.encode_text(self.tokenizer([""])).shape[-1])

    spec = LatentCodec.spec  # same {"class_path", "init_args"} convention as the codecs

    def train(self, mode: bool = True) -> OpenCLIPTextEncoder:
        return super().train(False)  # frozen: always in eval mode

    @torch.no_grad()
    def forward(self, captions: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.clip.parameters()).device
        ids = self.tokenizer(list(captions)).to(device)  # (B, L)
        captured = {}
        hook = self._ln_final.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o))
        try:
            pooled = self.clip.encode_text(ids)  # (B, embed_dim)
        finally:
            hook.remove()
        return {"tokens": captured["tokens"].float(), "mask": ids != self.pad_id, "pooled": pooled.float()}
