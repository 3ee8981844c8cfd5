"""Frozen open_clip text encoder: a tiny random-init CLIP saved to a temp dir and loaded back through
the real paths (`local-dir:` and arch name + local checkpoint file); tokens, mask and pooled vector
match open_clip's own text tower; caption conditioning and CFG dropout through the module."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from lightning_modules.nets.text import OpenCLIPTextEncoder
from lightning_modules.video_diffusion import VideoDiffusion

CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**CFG)
    local = root / "local"
    local.mkdir()
    (local / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG}))
    torch.save(model.state_dict(), local / "open_clip_pytorch_model.bin")
    (root / "videodit-tiny-clip.json").write_text(json.dumps(CFG))  # an architecture name for open_clip
    open_clip.add_model_config(root / "videodit-tiny-clip.json")
    torch.save(model.state_dict(), root / "tiny.pt")
    return {"model": model.eval(), "local": f"local-dir:{local}", "ckpt": str(root / "tiny.pt")}


@pytest.mark.parametrize("how", ["local-dir", "arch+checkpoint"])
def test_loaded_encoder_matches_open_clip(tiny_clip, how):
    kw = (
        {"model": tiny_clip["local"]}
        if how == "local-dir"
        else {"model": "videodit-tiny-clip", "pretrained": tiny_clip["ckpt"]}
    )
    enc = OpenCLIPTextEncoder(**kw)
    assert enc.calibrated and enc.text_dim == 32 and enc.pooled_dim == 16
    assert not any(p.requires_grad for p in enc.parameters()) and not hasattr(enc.clip, "visual")
    out = enc(["a red square moving left", "dog"])
    assert out["tokens"].shape == (2, 16, 32) and out["pooled"].shape == (2, 16)
    assert out["mask"].sum(1).tolist() == [7, 3]  # <start> + words + <end>
    ids = open_clip.get_tokenizer("videodit-tiny-clip")(["a red square moving left", "dog"])
    with torch.no_grad():
        torch.testing.assert_close(out["pooled"], tiny_clip["model"].encode_text(ids))


def test_random_weights_say_uncalibrated(tiny_clip):
    with pytest.warns(UserWarning, match="uncalibrated"):
        enc = OpenCLIPTextEncoder(model="videodit-tiny-clip")
    assert not enc.calibrated


def test_missing_checkpoint_names_the_fix(tiny_clip, tmp_path):
    with pytest.raises(RuntimeError, match="local checkpoint file"):
        OpenCLIPTextEncoder(model="videodit-tiny-clip", pretrained=str(tmp_path / "nope.pt"))


def test_caption_conditioning_and_dropout_through_the_module(tiny_clip):
    spec = {
        "class_path": "lightning_modules.nets.text.OpenCLIPTextEncoder",
        "init_args": {"model": tiny_clip["local"]},
    }
    m = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)}, text_encoder=spec
    )
    assert m.dit.text_dim == 32 and m.dit.pooled_text_dim == 16
    assert not any(n.startswith("text_encoder.") for n, p in m.named_parameters() if p.requires_grad)
    b = {"caption": ["a red square", "a blue square"]}
    kept = m.conditioning(b, 2, drop=torch.tensor([False, True]))
    null = m.conditioning(b, 2, null=True)
    empty = m.text_encoder(["", ""])
    torch.testing.assert_close(kept["pooled_text"][1], empty["pooled"][1])  # dropped -> empty caption
    assert not torch.allclose(kept["pooled_text"][0], empty["pooled"][0])
    torch.testing.assert_close(null["text"], empty["tokens"])
    assert torch.equal(null["text_mask"], empty["mask"])
    video = torch.rand(2, 3, 2, 16, 16) * 2 - 1
    loss = m.model_step({"video": video, **b}, 0, "train")
    loss.backward()
    assert torch.isfinite(loss)
    out = m.generate(2, num_frames=2, height=16, width=16, captions=b["caption"], steps=2, cfg_scale=3.0)
    assert out.shape == (2, 3, 2, 16, 16)
