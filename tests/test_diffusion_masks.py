"""VDT mask generator: task structure, token granularity, mixing probabilities, builders."""

import pytest
import torch

from lightning_modules.diffusion import (
    MaskGenerator,
    backward_mask,
    frames_mask,
    image_to_video_mask,
    interpolate_mask,
    predict_mask,
)


def frames_given(mask):
    """(1, T, H, W) -> list of per-frame 'all given' flags; asserts frames are all-or-nothing."""
    per = mask[0].flatten(1)
    assert (per.all(1) | ~per.any(1)).all(), "a temporal task must give whole frames"
    return per.all(1).tolist()


def test_builders():
    assert frames_given(predict_mask(6, 4, 4, 2)) == [True, True, False, False, False, False]
    assert frames_given(backward_mask(6, 4, 4, 2)) == [False, False, False, False, True, True]
    assert frames_given(interpolate_mask(9, 4, 4, stride=4)) == [
        True,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        True,
    ]
    assert frames_given(image_to_video_mask(5, 4, 4, frame=3)) == [False, False, False, True, False]
    assert frames_given(frames_mask(3, 2, 2, [-1])) == [False, False, True]
    with pytest.raises(ValueError, match="outside"):
        frames_mask(3, 2, 2, [3])


@pytest.mark.parametrize("task", ["predict", "backward", "interpolate", "image_to_video"])
def test_temporal_tasks_give_whole_frames(task):
    gen = MaskGenerator(probs={task: 1.0})
    g = torch.Generator().manual_seed(0)
    masks = gen(16, 8, 8, 8, (1, 2, 2), g)
    assert masks.shape == (16, 1, 8, 8, 8) and masks.dtype == torch.bool
    for m in masks:
        given = frames_given(m)
        assert any(given) and not all(given)
        if task == "predict":
            k = sum(given)
            assert given == [True] * k + [False] * (8 - k)
        elif task == "backward":
            k = sum(given)
            assert given == [False] * (8 - k) + [True] * k
        elif task == "interpolate":
            assert given == [True, False, False, False, True, False, False, True]
        else:
            assert sum(given) == 1


def test_block_task_covers_space_time_boxes_at_token_granularity():
    gen = MaskGenerator(probs={"block": 1.0}, block_ratio=(0.25, 0.5))
    masks = gen(20, 5, 8, 12, (2, 2, 2), torch.Generator().manual_seed(1))
    assert masks.shape == (20, 1, 5, 8, 12)
    for m in masks:
        generated = (~m).float().mean().item()
        assert 0.1 < generated < 0.95
        # token granularity: every 2x2 spatial patch and 2-frame tubelet is uniform
        padded = torch.cat([m[0], m[0][-1:]])  # T = 5 padded to the tubelet size
        tok = padded.unflatten(0, (3, 2)).unflatten(2, (4, 2)).unflatten(4, (6, 2))  # (3, 2, 4, 2, 6, 2)
        assert (tok.all(dim=(1, 3, 5)) | ~tok.any(dim=(1, 3, 5))).all()


def test_mixture_probabilities_and_determinism():
    gen = MaskGenerator(probs={"unconditional": 0.5, "predict": 0.5})
    masks = gen(400, 4, 2, 2, (1, 1, 1), torch.Generator().manual_seed(0))
    frac_uncond = (~masks.flatten(1).any(1)).float().mean().item()
    assert 0.4 < frac_uncond < 0.6
    again = gen(400, 4, 2, 2, (1, 1, 1), torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_single_frame_inputs_never_become_fully_given():
    """Images (T = 1): temporal tasks fall back to unconditional; nothing is ever all-given."""
    gen = MaskGenerator()  # the default mixture
    masks = gen(64, 1, 4, 4, (1, 2, 2), torch.Generator().manual_seed(0))
    assert not masks.flatten(1).all(1).any()


def test_bad_probabilities():
    with pytest.raises(ValueError, match="unknown mask tasks"):
        MaskGenerator(probs={"outpaint": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        MaskGenerator(probs={"predict": 0.0})


def test_align_to_tubelets_keeps_only_whole_tubelets_and_ignores_padding():
    from lightning_modules.diffusion.masks import align_to_tubelets

    m = torch.zeros(2, 1, 5, 4, 4, dtype=torch.bool)
    m[0, :, :3] = True  # frames 0-2 with pt=2: tubelet 0 whole, tubelet 1 half
    m[1, :, 4] = True  # frame 4: the last tubelet is frame 4 + padding
    m[1, :, 0, :2, :2] = True  # one whole 2x2 patch of frame 0 only: half a (2, 2, 2) tubelet
    out = align_to_tubelets(m, (2, 2, 2))
    assert out[0, :, :2].all() and not out[0, :, 2:].any()
    assert out[1, :, 4].all() and not out[1, :, :4].any()
    assert torch.equal(align_to_tubelets(m, (1, 1, 1)), m)
    tokens = MaskGenerator()(4, 5, 4, 4, (2, 2, 2), torch.Generator().manual_seed(0))[:, 0]
    assert torch.equal(align_to_tubelets(tokens, (2, 2, 2)), tokens)  # training draws are whole tubelets
