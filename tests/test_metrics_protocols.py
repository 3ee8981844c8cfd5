"""Protocol presets, preprocessing golden values, input checks and real-clip selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.metrics import i3d
from lightning_modules.metrics.detectors import FVDDetector
from lightning_modules.metrics.fvd import real_transform, select_real_clips
from lightning_modules.metrics.protocols import (
    SOURCES,
    check_clip_length,
    get_protocol,
    preprocess_state_dict_input,
    resize_bilinear,
    to_uint8,
)
from lightning_modules.metrics.videos import VideoSource, iter_clip_batches, select_clips


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
    assert latte.min_video_frames == 48 and latte.fake_selection == "random"
    assert (tats.real_selection, tats.real_resize, tats.uint8_conversion) == ("windows", "train", "truncate")
    assert all(p.paper_split == "train" and p.when_fewer == "use_all" for p in (sg, tats, latte))
    assert all(SOURCES[name] for name in ("fvd2048_16f", "fvd2048_16f_latte", "fvd_tats"))
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


# ---------------------------------------------------------------- each preset's real clips, by hand
def corpus(videos: dict[str, tuple[int, int, int]]) -> list[VideoSource]:
    """key -> (frames, H, W); pixel (f, y, x) of video v holds 20 * x + f (frame and column readable)."""

    def loader(n, h, w):
        def load(idx):
            frames = np.zeros((len(idx), h, w, 3), np.uint8)
            for k, f in enumerate(idx):
                assert 0 <= f < n, f"frame {f} of a {n}-frame video"
                frames[k] = (20 * np.arange(w)[None, :, None] + f).astype(np.uint8)
            return frames

        return load

    return [VideoSource(k, n, loader(n, h, w), size=n) for k, (n, h, w) in videos.items()]


def selected(protocol, videos, size=None):
    clips, info = select_real_clips(corpus(videos), protocol)
    batches = list(iter_clip_batches(clips, batch_size=16, transform=real_transform(protocol, size)))
    return clips, info, batches


def test_fvd2048_16f_real_clips():
    """StyleGAN-V: videos with >= 16 frames in sorted order, all of them when fewer than 2048, one clip
    each at a random offset (seed, key), every frame, native size."""
    p = get_protocol("fvd2048_16f")
    videos = {"d": (20, 24, 32), "b": (15, 24, 32), "a": (16, 24, 32), "c": (40, 24, 32)}
    clips, info, batches = selected(p, videos)
    assert [c.key for c in clips] == ["a", "c", "d"]  # b (15 frames) discarded; sorted keys
    assert info["used_all"] is True and info["requested"] == 2048 and info["discarded_short"] == 1
    import zlib

    for c in clips:
        n = videos[c.key][0]
        start = np.random.RandomState([0, zlib.crc32(c.key.encode())]).randint(0, n - 16 + 1)
        assert c.indices == list(range(start, start + 16))
    assert clips[0].indices == list(range(16))  # a has exactly 16 frames: offset 0
    (batch,) = batches
    assert tuple(batch.shape) == (3, 3, 16, 24, 32)  # native size
    assert batch[1, 0, :, 0, 0].tolist() == clips[1].indices  # the frames read are the selected ones


def test_fvd2048_16f_latte_real_clips():
    """Latte: only videos of >= 16*3 = 48 frames (46 and 47 are not enough), a seeded random subset,
    frames start, start+3, ..., start+45, native size."""
    p = get_protocol("fvd2048_16f_latte")
    videos = {"a": (46, 8, 8), "b": (47, 8, 8), "c": (48, 8, 8), "d": (60, 8, 8), "e": (100, 8, 8)}
    clips, info, batches = selected(p, videos)
    order = np.random.RandomState(0).permutation(3)
    assert [c.key for c in clips] == [["c", "d", "e"][i] for i in order]
    assert info["min_frames"] == 48 and info["discarded_short"] == 2 and info["used_all"] is True
    for c in clips:
        assert 0 <= c.start <= videos[c.key][0] - 46 and c.indices == list(range(c.start, c.start + 46, 3))
    assert tuple(batches[0].shape) == (3, 3, 16, 8, 8)
    assert batches[0][0, 0, :, 0, 0].tolist() == clips[0].indices
    # the span rule (StyleGAN-V's own) would have admitted 46 and 47 frames
    looser, _ = select_real_clips(corpus(videos), p.override(min_length="span"))
    assert sorted(c.key for c in looser) == ["a", "b", "c", "d", "e"]


def tats_byte(v: np.ndarray) -> np.ndarray:
    """TATS's real conversion by hand, float32: x = v / 255 - 0.5, then ((x + 0.5) * 255).byte()."""
    x = v.astype(np.float32) / np.float32(255) - np.float32(0.5)
    return ((x + np.float32(0.5)) * np.float32(255)).astype(np.uint8)  # truncation


def test_fvd_tats_real_clips():
    """TATS: every 16-frame window of every video is a clip, a seeded shuffle of all windows (a video
    can give several), resized so the frame covers the training size and centre-cropped, truncated."""
    p = get_protocol("fvd_tats")
    videos = {"a": (17, 8, 12), "b": (18, 8, 12)}  # windows a0 a1 b0 b1 b2
    clips, info, batches = selected(p, videos, size=(8, 8))
    windows = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    expected = [windows[i] for i in np.random.RandomState(0).permutation(5)]
    assert [(c.key, c.start) for c in clips] == expected and info["used_all"] is True
    assert all(c.indices == list(range(c.start, c.start + 16)) for c in clips)
    (batch,) = batches
    assert tuple(batch.shape) == (5, 3, 16, 8, 8)  # training size
    # 8x12 -> height already 8, width ceil(12 * 1) = 12, crop columns (12 - 8) // 2 = 2 .. 9
    source = (20 * np.arange(2, 10)[None, :] + np.array([c.start for c in clips])[:, None]).astype(np.uint8)
    assert batch[:, 0, 0, 0, :].numpy().tolist() == tats_byte(source).tolist()
    # truncation is visible: some values come back one lower, as .byte() gives in TATS
    v = np.arange(256, dtype=np.uint8)
    assert (tats_byte(v) != v).any() and (tats_byte(v) >= v.astype(int) - 1).all()
    assert info["selection"] == "windows"


def test_tats_resize_covers_then_centre_crops():
    """A 12x16 frame to 8x8: scale 8/12, size (8, ceil(16 * 8 / 12) = 11), crop columns 1..8."""
    from lightning_modules.metrics.videos import resize_center_crop

    frame = np.zeros((1, 12, 16, 3), np.uint8)
    frame[..., 0] = (np.arange(16) * 15)[None, None, :]
    out = resize_center_crop(frame, (8, 8), conversion="truncate")
    assert out.shape == (1, 8, 8, 3)
    x = torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255.0
    full = torch.nn.functional.interpolate(x, size=(8, 11), mode="bilinear", align_corners=False)
    expected = ((full[:, :, :, 1:9] - 0.5 + 0.5) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, expected)
    tall = resize_center_crop(np.zeros((1, 20, 10, 3), np.uint8), (8, 8))
    assert tall.shape == (1, 8, 8, 3)


def test_tats_fakes_are_truncated():
    x = torch.linspace(-1, 1, 1001)
    by_hand = ((x.numpy().astype(np.float32) + 1) / 2 * 255).astype(np.uint8)  # (samples * 255).astype(uint8)
    assert to_uint8(x, "truncate").numpy().tolist() == by_hand.tolist()
    assert (to_uint8(x, "truncate") != to_uint8(x)).any()  # and differs from StyleGAN-V's rounding


@pytest.mark.parametrize("hw, cover", [((187, 187), (97, 96)), ((273, 546), (96, 193))])
def test_tats_cover_size_keeps_its_floating_point_ceil(hw, cover):
    """TATS resizes to ceil(side * (res / min(h, w))) in floating point, which can add a pixel."""
    import torch.nn.functional as F

    from lightning_modules.metrics.videos import resize_center_crop

    h, w = hw
    frames = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=cover, mode="bilinear", align_corners=False)
    top, left = (cover[0] - 96) // 2, (cover[1] - 96) // 2
    x = x[:, :, top : top + 96, left : left + 96] - 0.5  # TATS's [-0.5, 0.5], back with (x + 0.5) * 255
    want = ((x + 0.5) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(resize_center_crop(frames, (96, 96), conversion="truncate"), want)
