"""Captions (issue #11): a data team can prefer the source's own caption
(`caption.prefer_source_margin`), and frames reach every model through open_clip's own
preprocessing (its resize mode, interpolation and fill), not one fixed resize-and-crop."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from curation.captions import TINY_CLIP, CaptionConfig, Captioner, save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"), seed=0)


def _clip(seed: int, k: int = 4, h: int = 48, w: int = 96) -> np.ndarray:
    """(K, H, W, 3) uint8: noise with a bright left edge and a dark right edge (a crop loses them)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(40, 200, (k, h, w, 3)).astype(np.uint8)
    frames[:, :, :12] = 255
    frames[:, :, -12:] = 0
    return frames


def test_prefer_source_margin_keeps_the_source_caption_unless_clearly_beaten(tiny):
    captioner = Captioner(CaptionConfig(**tiny))
    clip = _clip(1)
    pool = [f"{s} {a}" for s in captioner.vocab["subjects"] for a in captioner.vocab["actions"][:6]]
    source = pool[int(np.argmin(captioner.encode_texts(pool) @ captioner.embed([clip])[0]))]
    item = {"key": "k", "frames": clip, "source_caption": source, "motion": {}}
    (plain,) = captioner.caption_clips([item])  # margin 0: the best score wins
    assert plain["caption_origin"] == "retrieval"
    own = next(c for c in plain["caption_candidates"] if c["origin"] == "source")
    gap = plain["clip_score"] - own["score"]
    assert gap > 0
    for margin, origin in ((gap + 1e-4, "source"), (gap - 1e-4, "retrieval")):
        captioner.cfg.prefer_source_margin = margin
        (got,) = captioner.caption_clips([item])
        assert got["caption_origin"] == origin, (margin, gap)
        assert got["caption_candidates"] == plain["caption_candidates"]  # every score still reported
        if origin == "source":
            assert (got["caption"], got["clip_score"]) == (source, pytest.approx(own["score"]))
    captioner.cfg.prefer_source_margin = 0.0


@pytest.mark.parametrize(
    "pre",
    [
        {"resize_mode": "squash", "interpolation": "bilinear"},
        {"resize_mode": "longest", "interpolation": "bicubic", "fill_color": 0},
        {"resize_mode": "shortest", "interpolation": "bilinear"},
    ],
)
def test_frames_go_through_open_clips_own_transform(tiny, tmp_path, pre):
    """A model whose config asks for another resize mode / interpolation gets exactly the tensor
    open_clip's eval transform makes (the old fixed bicubic shortest-side crop did not)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": pre}))
    shutil.copy(tiny["pretrained"], folder / "open_clip_pytorch_model.bin")
    captioner = Captioner(CaptionConfig(model=f"local-dir:{folder}", pretrained=""))
    frames = _clip(2)
    want = image_transform_v2(PreprocessCfg(size=32, **pre), is_train=False)
    expected = torch.stack([want(Image.fromarray(f)) for f in frames])
    got = captioner._preprocess(frames)
    assert got.shape == (4, 3, 32, 32)
    torch.testing.assert_close(got, expected)
    for key, value in pre.items():
        assert getattr(captioner.preprocess_cfg, key) == value
    if pre["resize_mode"] != "shortest":  # the edges a centre crop would have cut away are seen
        mid = got[:, :, 14:18]  # rows inside the picture (longest pads above and below)
        assert mid[..., 0].mean() > 1.0 and mid[..., -1].mean() < -1.0
