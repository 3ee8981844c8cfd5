"""Protocol presets, preprocessing golden values, input checks and real-clip selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.metrics import i3d
from lightning_modules.metrics.detectors import FVDDetector
from lightning_modules.metrics.protocols import (
    check_clip_length,
    get_protocol,
    preprocess_state_dict_input,
    resize_bilinear,
    to_uint8,
)
from lightning_modules.metrics.videos import VideoSource, select_clips


def test_presets_pin_the_reference_choices():
    sg = get_protocol("fvd2048_16f")
    assert (sg.num_real, sg.num_fake, sg.num_frames, sg.stride) == (2048, 2048, 16, 1)
    assert (sg.detector, sg.rescale, sg.resize, sg.cov_divisor, sg.sqrtm) == (
        "i3d_torchscript",
        True,
        True,
        "N",
        "scipy",
    )
    assert sg.real_selection == "first"
    tats = get_protocol("fvd_tats")
    assert (tats.detector, tats.cov_divisor) == ("i3d_state_dict", "N-1")
    latte = get_protocol("fvd2048_16f_latte")
    assert (latte.stride, latte.real_selection) == (3, "random") and latte.span == 46
    custom = sg.override(num_real=8, num_fake=8, num_frames=None)
    assert custom.name.startswith("custom(fvd2048_16f:") and custom.num_real == 8 and custom.num_frames == 16
    assert sg.override(num_real=2048) is sg
    with pytest.raises(KeyError, match="known"):
        get_protocol("fvd_unknown")
    with pytest.raises(ValueError, match="num_frames >= 9"):
        sg.override(num_frames=8)


def test_uint8_rescale_golden_values():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    torch.testing.assert_close(i3d.rescale_uint8(x), torch.tensor([-1.0, 1.0, 2 * 128 / 255 - 1]))
    # the TorchScript interface's own preprocessing (used by random stand-ins) agrees
    iface = i3d.TorchScriptInterface(net=i3d.InceptionI3d())
    video = torch.stack([torch.zeros(3, 2, 5, 7), torch.full((3, 2, 5, 7), 255.0)]).to(
        torch.uint8
    )  # (2, 3, T, H, W)
    out = iface.preprocess(video, rescale=True, resize=True)
    assert out.shape == (2, 3, 2, 224, 224)  # trilinear keeps T, resizes H, W to 224
    assert torch.all(out[0] == -1) and torch.allclose(out[1], torch.ones_like(out[1]))


def test_tats_bilinear_resize_golden_values():
    # 2x2 -> 4x4, align_corners=False: source coordinates -0.25, 0.25, 0.75, 1.25 (clamped)
    img = torch.tensor([[0, 255], [255, 0]], dtype=torch.uint8).expand(1, 3, 1, 2, 2)  # (B, C, T, H, W)
    out = resize_bilinear(img, size=4)[0, 0, 0]
    assert out[0, 0] == 0 and out[0, 1] == pytest.approx(63.75) and out[1, 1] == pytest.approx(95.625)
    assert out[0, 3] == 255 and out[3, 0] == 255
    # full preprocessing: uint8 0 -> -1, 255 -> 1, any frame size stretched to 224x224 (no crop)
    black = torch.zeros(1, 3, 9, 30, 50, dtype=torch.uint8)
    white = torch.full((1, 3, 9, 30, 50), 255, dtype=torch.uint8)
    assert preprocess_state_dict_input(black).shape == (1, 3, 9, 224, 224)
    assert torch.all(preprocess_state_dict_input(black) == -1)
    torch.testing.assert_close(preprocess_state_dict_input(white), torch.ones(1, 3, 9, 224, 224))


def test_float_input_where_uint8_is_expected_is_an_error():
    det = FVDDetector(
        protocol=get_protocol("fvd2048_16f"),
        module=torch.nn.Identity(),
        path=None,
        sha256="x",
        calibrated=False,
    )
    video = torch.rand(1, 3, 16, 32, 32) * 2 - 1  # generator output in [-1, 1]
    with pytest.raises(TypeError, match="uint8"):
        det(video)
    with pytest.raises(TypeError, match="uint8"):
        preprocess_state_dict_input(video)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        det(torch.zeros(1, 16, 3, 32, 32, dtype=torch.uint8))


def test_to_uint8_uses_stylegan_v_rounding():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5])
    assert to_uint8(x).tolist() == [0, 0, 128, 191, 255, 255]
    with pytest.raises(TypeError, match="already uint8"):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


def sources(lengths: dict[str, int]) -> list[VideoSource]:
    return [
        VideoSource(k, n, lambda idx: np.zeros((len(idx), 4, 4, 3), np.uint8)) for k, n in lengths.items()
    ]


def test_short_clips_are_rejected_with_a_clear_message():
    src = sources({"b": 40, "a": 12, "c": 20})
    with pytest.raises(ValueError, match=r"fake clip 'a' has 12 frames but the protocol needs 16"):
        select_clips(src, count=2, num_frames=16, short="error", what="fake")
    clips, info = select_clips(src, count=2, num_frames=16, short="discard")  # real: StyleGAN-V discards
    assert [c.key for c in clips] == ["b", "c"] and info["discarded_short"] == 1
    with pytest.raises(ValueError, match="only 2 real videos"):
        select_clips(src, count=3, num_frames=16)
    with pytest.raises(ValueError, match="exactly 16 frames"):
        check_clip_length(torch.zeros(1, 3, 12, 8, 8, dtype=torch.uint8), get_protocol("fvd2048_16f"))


def test_real_clip_selection_is_seeded_and_recorded():
    lengths = {f"v{i:02d}": 30 + i for i in range(20)}
    first, info = select_clips(
        sources(lengths), count=5, num_frames=10, stride=3, selection="first", clip_start="first"
    )
    assert [c.key for c in first] == ["v00", "v01", "v02", "v03", "v04"]
    assert first[0].indices == list(range(0, 28, 3)) and info["stride"] == 3 and info["selected"] == 5
    rand1, info1 = select_clips(
        sources(lengths), count=5, num_frames=10, selection="random", clip_start="random", seed=7
    )
    rand2, info2 = select_clips(
        sources(dict(reversed(list(lengths.items())))),
        count=5,
        num_frames=10,
        selection="random",
        clip_start="random",
        seed=7,
    )
    assert [(c.key, c.start) for c in rand1] == [(c.key, c.start) for c in rand2]  # input order is irrelevant
    assert info1["clips_sha256"] == info2["clips_sha256"] != info["clips_sha256"]
    assert [c.key for c in rand1] != [c.key for c in first]
    rand3, _ = select_clips(sources(lengths), count=5, num_frames=10, selection="random", seed=8)
    assert [c.key for c in rand3] != [c.key for c in rand1]
    assert all(0 <= c.start <= lengths[c.key] - 10 for c in rand1)


def test_clip_batches_keep_order_and_split_at_size_changes():
    from lightning_modules.metrics.videos import Clip, iter_clip_batches

    def source(key, value, size):
        return VideoSource(key, 20, lambda idx: np.full((len(idx), size, size, 3), value, np.uint8))

    clips = [Clip(f"k{i}", 0, list(range(9)), source(f"k{i}", i, 8 if i < 5 else 4)) for i in range(7)]
    batches = list(iter_clip_batches(clips, batch_size=2, workers=3))
    assert [tuple(b.shape) for b in batches] == [
        (2, 3, 9, 8, 8),
        (2, 3, 9, 8, 8),
        (1, 3, 9, 8, 8),
        (2, 3, 9, 4, 4),
    ]
    assert [int(v) for b in batches for v in b[:, 0, 0, 0, 0]] == list(range(7))  # clip order kept
