"""Sampling beyond the training window (issue 15): VDM reconstruction guidance for models trained
without masks, and chunk-by-chunk extension (`generate(task="extend")`, `--task extend`)."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules.diffusion import RectifiedFlow
from lightning_modules.diffusion.guidance import reconstruction_guided_sample
from lightning_modules.nets import VideoDiT
from lightning_modules.video_diffusion import VideoDiffusion

T, S = 4, 8  # frames, side


def two_clips() -> torch.Tensor:
    """(2, 3, T, S, S): a bright pattern drifting right, and a dark one drifting down."""
    t = torch.arange(T * 1.0)[:, None, None]
    h, w = torch.arange(S * 1.0)[None, :, None], torch.arange(S * 1.0)[None, None, :]
    full = lambda x: torch.broadcast_to(x, (T, S, S))  # noqa: E731
    a = torch.stack([full(torch.sin((w - t) / 1.5)), full(torch.cos(h / 2.0)), full(torch.tensor(0.5))])
    b = torch.stack([full(torch.tensor(-0.5)), full(torch.sin((h - t) / 1.5)), full(-torch.cos(w / 2.0))])
    return torch.stack([a, b]).clamp(-1, 1)


@pytest.fixture(scope="module")
def unmasked():
    """A tiny flow model trained WITHOUT masks on two clips (it can only generate whole clips)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net = VideoDiT(
        in_channels=3, patch_size=(1, 2, 2), hidden_size=64, depth=2, num_heads=4, pos_embed="sincos"
    )
    flow = RectifiedFlow(shift_base_tokens=16, prediction="x0")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    x0 = two_clips().repeat(8, 1, 1, 1, 1)  # (16, ...)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        t = flow.sample_t([tuple(x0.shape[1:])] * len(x0), "cpu", g)
        loss = flow.training_losses(net, x0, t)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return net.eval(), flow


def guided(net, flow, weight, seed, keep_given=True):
    clips = two_clips()
    given = clips[:1].expand(4, -1, -1, -1, -1)  # always clip a's first 2 frames
    mask = torch.zeros(4, 1, T, S, S, dtype=torch.bool)
    mask[:, :, :2] = True
    out = reconstruction_guided_sample(net, flow, (4, 3, T, S, S), given=given, mask=mask, weight=weight, steps=20,
                                       generator=[torch.Generator().manual_seed(seed * 10 + i) for i in range(4)],
                                       keep_given=keep_given)  # fmt: skip
    return out, clips[0]


def test_reconstruction_guidance_continues_the_given_clip_better_than_replacement(unmasked):
    net, flow = unmasked
    errors = {}
    for weight in (0.0, 4.0):  # 0 = VDM's replacement baseline (noisy known part replaced only)
        out, a = guided(net, flow, weight, seed=1, keep_given=False)
        errors[weight] = {
            "overlap": float(((out[:, :, :2] - a[:, :2]) ** 2).mean()),  # the model's own known frames
            "continuation": float(((out[:, :, 2:] - a[:, 2:]) ** 2).mean()),
        }
    print(json.dumps(errors))
    assert errors[4.0]["overlap"] < errors[0.0]["overlap"]
    assert errors[4.0]["continuation"] < errors[0.0]["continuation"]
    kept, a = guided(net, flow, 4.0, seed=1)
    torch.testing.assert_close(
        kept[:, :, :2], a[None, :, :2].expand(4, -1, -1, -1, -1)
    )  # given frames kept exactly


def module(mask_trained: bool) -> VideoDiffusion:
    torch.manual_seed(0)
    return VideoDiffusion(dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
                          objective="flow", sample_steps=3,
                          mask_probs={"predict": 1.0} if mask_trained else None)  # fmt: skip


@pytest.mark.parametrize("mask_trained", [True, False])
def test_extend_generates_three_training_lengths_chunk_by_chunk(mask_trained, monkeypatch):
    m = module(mask_trained)
    calls = []
    generate = m.generate

    def spy(n, **kw):
        calls.append(kw)
        return generate(n, **kw)

    monkeypatch.setattr(m, "generate", spy)
    out = generate(2, task="extend", total_frames=12, num_frames=4, height=16, width=16, overlap=2, seed=3)
    assert out.shape == (2, 3, 12, 16, 16) and torch.isfinite(out).all()
    assert len(calls) == 5  # chunks: 4 frames, then 2 new frames per chunk: 4 + 4 * 2 = 12
    assert calls[0]["mask"] is None  # the first chunk: unconditional
    for kw in calls[1:]:  # every later chunk is conditioned on the last 2 frames so far
        assert kw["mask"][:, :, :2].all() and not kw["mask"][:, :, 2:].any()
    assert m._conditioning_mode("auto") == ("replace" if mask_trained else "guidance")
    again = generate(2, task="extend", total_frames=12, num_frames=4, height=16, width=16, overlap=2, seed=3,
                     batch_size=1)  # fmt: skip
    torch.testing.assert_close(again, out)  # deterministic, independent of batch_size


def test_extend_on_the_mask_path_keeps_each_overlap_exactly(monkeypatch):
    m = module(True)
    out = m.generate(1, task="extend", total_frames=8, num_frames=4, height=16, width=16, overlap=2, seed=0)
    second = m.generate(1, num_frames=4, height=16, width=16, seed=7919,
                        given=torch.cat([out[:, :, 2:4], torch.zeros(1, 3, 2, 16, 16)], 2),
                        mask=torch.tensor([True, True, False, False])[None, None, :, None, None].expand(1, 1, 4, 16, 16))  # fmt: skip
    torch.testing.assert_close(second[:, :, :2], out[:, :, 2:4])  # conditioning frames come out as given
    torch.testing.assert_close(second[:, :, 2:], out[:, :, 4:6])  # and the chunk is what extend appended


def test_predictor_corrector_steps_keep_guidance_and_default_unchanged(unmasked):
    """corrector_steps=0 is the plain guided sampler (no extra noise drawn); Langevin corrector steps
    change the sample, stay finite, and still beat replacement on the known frames."""
    net, flow = unmasked
    clips = two_clips()
    given = clips[:1].expand(4, -1, -1, -1, -1)
    mask = torch.zeros(4, 1, T, S, S, dtype=torch.bool)
    mask[:, :, :2] = True

    def run(weight, corrector_steps):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
        return reconstruction_guided_sample(net, flow, (4, 3, T, S, S), given=given, mask=mask, weight=weight,
                                            steps=20, generator=gens, keep_given=False,
                                            corrector_steps=corrector_steps)  # fmt: skip

    base, _ = guided(net, flow, 4.0, seed=1, keep_given=False)
    torch.testing.assert_close(run(4.0, 0), base)
    pc, rep = run(4.0, 1), run(0.0, 0)
    assert torch.isfinite(pc).all() and not torch.allclose(pc, base)
    err = lambda o: float(((o[:, :, :2] - clips[0, :, :2]) ** 2).mean())  # noqa: E731
    print(json.dumps({"pc_overlap": err(pc), "replacement_overlap": err(rep), "guided_overlap": err(base)}))
    assert err(pc) < err(rep)


def test_guided_chunks_are_continuous_at_the_seam(unmasked):
    """Two chunks of the overfitted clip, the second guided by the first's last 2 frames: the frame
    step across the seam is of the size of the steps within a chunk (reported, loosely bounded)."""
    net, flow = unmasked
    gens = lambda s: [torch.Generator().manual_seed(s * 10 + i) for i in range(4)]  # noqa: E731
    none = torch.zeros(4, 1, T, S, S, dtype=torch.bool)
    first = reconstruction_guided_sample(net, flow, (4, 3, T, S, S), given=torch.zeros(4, 3, T, S, S),
                                         mask=none, weight=0.0, steps=20, generator=gens(2))  # fmt: skip
    cond = torch.zeros(4, 3, T, S, S)
    cond[:, :, :2] = first[:, :, -2:]
    known = none.clone()
    known[:, :, :2] = True
    second = reconstruction_guided_sample(net, flow, (4, 3, T, S, S), given=cond, mask=known, weight=4.0,
                                          steps=20, generator=gens(3))  # fmt: skip
    video = torch.cat([first, second[:, :, 2:]], dim=2)  # (4, 3, 6, S, S); seam between frames 3 and 4
    steps = ((video[:, :, 1:] - video[:, :, :-1]) ** 2).mean(dim=(0, 1, 3, 4))  # (5,)
    seam, within = float(steps[3]), float(torch.cat([steps[:3], steps[4:]]).mean())
    print(json.dumps({"seam_step_mse": seam, "within_chunk_step_mse": within}))
    assert torch.isfinite(video).all() and seam < 3 * within


def test_extend_with_frameskip_interpolates_between_kept_keyframes():
    """VDM frameskip: keyframes 3 apart (themselves an extend of 5 frames), each gap filled by one
    window conditioned on its two keyframes; on the mask path the keyframes come out as given."""
    m = module(True)
    kw = dict(num_frames=4, height=16, width=16, overlap=2, seed=5)
    out = m.generate(2, task="extend", total_frames=12, frameskip=3, **kw)
    keys = m.generate(2, task="extend", total_frames=5, **kw)  # ceil(11 / 3) + 1 keyframes
    assert out.shape == (2, 3, 12, 16, 16) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, ::3], keys[:, :, :4])
    again = m.generate(2, task="extend", total_frames=12, frameskip=3, batch_size=1, **kw)
    torch.testing.assert_close(again, out)  # independent of batch_size
    with pytest.raises(ValueError, match="frameskip"):
        m.generate(1, task="extend", total_frames=12, frameskip=4, **kw)  # the gap must fit in a window


def test_guided_conditioning_works_under_inference_mode():
    """Trainer.predict / validate run in inference mode; guidance still takes its gradients there."""
    m = module(mask_trained=False)
    given = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 4, 16, 16, dtype=torch.bool)
    mask[:, :, :2] = True
    with torch.inference_mode():
        out = m.generate(1, num_frames=4, height=16, width=16, given=given, mask=mask)
    torch.testing.assert_close(out[:, :, :2], given[:, :, :2])


def test_guidance_with_text_conditions_made_in_inference_mode():
    """Caption tokens built under inference mode (Trainer.predict) must not break guidance's backward."""
    torch.manual_seed(0)
    net = VideoDiT(
        in_channels=3,
        patch_size=(1, 2, 2),
        hidden_size=32,
        depth=2,
        num_heads=2,
        text_dim=8,
        pooled_text_dim=8,
    )
    with torch.inference_mode():
        kw = {
            "text": torch.randn(1, 5, 8),
            "text_mask": torch.ones(1, 5, dtype=torch.bool),
            "pooled_text": torch.randn(1, 8),
        }
        given = torch.rand(1, 3, T, S, S) * 2 - 1
        mask = torch.zeros(1, 1, T, S, S, dtype=torch.bool)
        mask[:, :, :2] = True
        out = reconstruction_guided_sample(net, RectifiedFlow(), (1, 3, T, S, S), given=given, mask=mask, steps=2,
                                           model_kwargs=kw, generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(out[:, :, :2], given[:, :, :2])


def test_frameskip_refuses_what_it_cannot_honour():
    m = module(True)
    given, mask = torch.zeros(1, 3, 4, 16, 16), torch.ones(1, 1, 4, 16, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="frameskip"):
        m.generate(
            1,
            task="extend",
            total_frames=9,
            num_frames=4,
            height=16,
            width=16,
            frameskip=2,
            given=given,
            mask=mask,
        )
    with pytest.raises(ValueError, match="task='extend' only"):
        m.generate(1, num_frames=4, height=16, width=16, frameskip=2)
