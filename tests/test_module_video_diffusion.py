"""VideoDiffusion wiring: optimizer groups and LR schedule, masked sampling keeps given frames
exactly, given tokens carry no loss, conditioning / CFG dropout, packed batches, precomputed
latents, deterministic generation and the sampling checkpoint round trip."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from datamodules.synthetic import SyntheticVideoDataModule
from lightning_modules.diffusion.masks import interpolate_mask, predict_mask
from lightning_modules.nets.codecs import IdentityCodec
from lightning_modules.video_diffusion import DiTConfig, VideoDiffusion

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)}


def tiny(**kw) -> VideoDiffusion:
    torch.manual_seed(0)
    return VideoDiffusion(dit=dict(TINY), **kw)


def batch(n=2, t=4, h=16, w=16, num_classes=4, mode="bucketed"):
    dm = SyntheticVideoDataModule(
        num_samples=n,
        num_frames=t,
        height=h,
        width=w,
        batch_size=n,
        num_classes=num_classes,
        mode=mode,
        patch_size=(1, 4, 4),
    )
    return next(iter(dm.train_dataloader()))


def test_dit_config_preset_plus_overrides():
    cfg = DiTConfig(preset="S/4", depth=2, extra={"rope_base": 100.0})
    kw = cfg.resolve()
    assert kw["hidden_size"] == 384 and kw["patch_size"] == (1, 4, 4)  # from the preset
    assert kw["depth"] == 2 and kw["rope_base"] == 100.0  # overrides win
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig(preset="Z/9").resolve()


def test_network_gets_channels_classes_and_sigma_from_the_rest_of_the_config():
    m = tiny(num_classes=5, diffusion={"learn_sigma": True})
    assert m.dit.in_channels == 3 and m.dit.out_channels == 6 and m.dit.num_classes == 5
    assert m.dit.patch_size == (1, 4, 4) and m.patch_size == (1, 4, 4)
    assert tiny(objective="flow").dit.out_channels == 3


def test_weight_decay_groups_exclude_norms_biases_and_embeddings():
    m = tiny(num_classes=4, weight_decay=0.05)
    decay, no_decay = m.parameter_groups()
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert decay_ids.isdisjoint(no_decay_ids) and len(decay_ids | no_decay_ids) == len(trainable)
    for name, mod in m.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(mod, (nn.LayerNorm, nn.Embedding)) or pname == "bias":
                assert id(p) in no_decay_ids, f"{name}.{pname} must not be decayed"
            if isinstance(mod, nn.Linear) and pname == "weight":
                assert id(p) in decay_ids, f"{name}.{pname} should be decayed"
    assert id(m.dit.y_embedder.weight) in no_decay_ids


def test_lr_warmup_then_cosine_and_constant():
    m = tiny(warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    m._total_steps = lambda: 110  # what trainer.max_steps gives in a run
    assert m.lr_lambda(0) == pytest.approx(0.1) and m.lr_lambda(9) == pytest.approx(1.0)
    assert m.lr_lambda(10) == pytest.approx(1.0)
    assert m.lr_lambda(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert m.lr_lambda(110) == pytest.approx(0.1) and m.lr_lambda(500) == pytest.approx(0.1)
    c = tiny(warmup_steps=4)
    assert [c.lr_lambda(s) for s in (0, 3, 4, 1000)] == pytest.approx([0.25, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_masked_sampling_keeps_given_frames_exactly(objective):
    m = tiny(objective=objective, num_classes=4)
    given = torch.rand(3, 3, 8, 16, 16) * 2 - 1  # (n, 3, T, H, W)
    for mask in (predict_mask(8, 16, 16, 3), interpolate_mask(8, 16, 16, 4)):
        out = m.generate(
            3, num_frames=8, height=16, width=16, given=given, mask=mask, steps=4, labels=[0, 1, 2]
        )
        frames = mask[0, :, 0, 0]  # (T,) given frames
        assert torch.equal(out[:, :, frames], given[:, :, frames])  # bit for bit
        assert not torch.allclose(out[:, :, ~frames], given[:, :, ~frames], atol=1e-3)
        assert out.min() >= -1 and out.max() <= 1


def test_given_tokens_carry_no_loss():
    """Whatever the network outputs at given positions, the loss is the same; at generated
    positions it changes (so the check can fail)."""
    m = tiny(num_classes=4, mask_probs={"predict": 1.0})
    b = batch(n=4, t=4)
    perturb = {"where": None}

    def hook(module, args, kwargs, out):
        if perturb["where"] is None:
            return out
        mask = kwargs["mask"]  # (B, 1, T, H, W) True = given
        sel = mask if perturb["where"] == "given" else ~mask
        return out + 100.0 * sel.to(out.dtype)

    m.dit.register_forward_hook(hook, with_kwargs=True)
    base = m.model_step(b, 0, "val")
    perturb["where"] = "given"
    assert torch.equal(m.model_step(b, 0, "val"), base)
    perturb["where"] = "generated"
    assert m.model_step(b, 0, "val") > base + 1.0


def test_training_randomness_is_a_function_of_step_rank_and_batch():
    m = tiny(num_classes=4, mask_probs={"predict": 0.5, "unconditional": 0.5}, rng_seed=3)
    b = batch()
    assert torch.equal(m.model_step(b, 5, "val"), m.model_step(b, 5, "val"))
    assert not torch.equal(m.model_step(b, 5, "val"), m.model_step(b, 6, "val"))


def test_condition_dropout_uses_null_class_and_empty_caption():
    m = tiny(num_classes=4)
    b = {"label": torch.tensor([0, 3, -1]), "caption": ["a", "b", "c"]}
    y = m.conditioning(b, 3, drop=torch.tensor([True, False, False]))["y"]
    assert y.tolist() == [4, 3, 4]  # dropped -> null class 4; -1 (no label) -> null class
    assert m.conditioning(b, 3, null=True)["y"].tolist() == [4, 4, 4]


def test_cfg_changes_class_conditional_samples():
    m = tiny(num_classes=4)
    with torch.no_grad():  # leave adaLN-Zero's zero init so the label reaches the output
        for p in m.dit.parameters():
            p.normal_(std=0.05)
    kw = dict(num_frames=4, height=16, width=16, labels=[1, 2], steps=3)
    plain, guided = m.generate(2, cfg_scale=1.0, **kw), m.generate(2, cfg_scale=4.0, **kw)
    assert not torch.allclose(plain, guided)
    assert torch.equal(m.generate(2, cfg_scale=4.0, **kw), guided)  # deterministic for a seed
    assert not torch.equal(m.generate(2, cfg_scale=4.0, seed=1, **kw), guided)


def test_packed_batch_trains():
    m = tiny(num_classes=4, mask_probs={"predict": 0.5, "block": 0.5}, objective="flow")
    b = batch(n=6, t=4, h=16, w=16, mode="packed")
    assert "videos" in b and len({tuple(v.shape) for v in b["videos"]}) > 1
    loss = m.model_step(b, 0, "train")
    loss.backward()
    assert torch.isfinite(loss) and m.dit.final_layer.linear.weight.grad.abs().sum() > 0  # adaLN-Zero init


class _RefusingCodec(IdentityCodec):
    def encode(self, video):
        raise AssertionError("precomputed latents must skip the codec")


def test_precomputed_latents_skip_the_codec():
    m = tiny(codec=_RefusingCodec())
    b = batch(n=2, num_classes=0)
    b["latent"] = torch.randn(2, 3, 4, 16, 16)
    assert m.encode(b) is not None and torch.isfinite(m.model_step(b, 0, "val"))
    with pytest.raises(AssertionError, match="skip the codec"):
        m.encode({k: v for k, v in b.items() if k != "latent"})


def test_mask_may_be_given_at_pixel_resolution_and_must_match():
    m = tiny()
    mk = m._latent_mask(predict_mask(4, 16, 16, 1), 2, (4, 16, 16))
    assert mk.shape == (2, 1, 4, 16, 16) and mk[:, :, 0].all() and not mk[:, :, 1:].any()
    with pytest.raises(ValueError, match="does not match latents"):
        m._latent_mask(torch.ones(1, 1, 3, 16, 16, dtype=torch.bool), 2, (4, 16, 16))
    with pytest.raises(ValueError, match="together"):
        m.generate(1, num_frames=4, height=16, width=16, mask=predict_mask(4, 16, 16, 1))


def test_state_dict_holds_each_dit_tensor_once():
    """The objective's handle on the network must not register the DiT a second time: no `_net.*`
    keys, no two entries sharing storage (safetensors refuses them; FSDP state dicts trip on them)."""
    m = tiny(num_classes=4)
    sd = m.state_dict()
    assert not [k for k in sd if k.startswith("_net.")]
    ptrs = [t.untyped_storage().data_ptr() for t in sd.values()]
    assert len(ptrs) == len(set(ptrs)), "state dict entries share storage"
    assert m._net is m.dit  # the objective still calls the DiT


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_generation_does_not_depend_on_batch_size(objective):
    m = tiny(num_classes=4, objective=objective, diffusion={"fixed_variance": "large"})
    kw = dict(num_frames=4, height=16, width=16, labels=[0, 1, 2, 3, 1], steps=3, seed=7)
    if objective == "diffusion":
        m.hparams.sampler, m.hparams.eta = "ddpm", 1.0  # stochastic steps draw noise too
    one_batch = m.generate(5, batch_size=5, **kw)
    torch.testing.assert_close(m.generate(5, batch_size=2, **kw), one_batch, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.generate(3, batch_size=1, **kw), one_batch[:3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("weighting,expected", [("token", (1.0 * 1 + 3.0 * 8) / 9), ("sample", 2.0)])
def test_model_step_reduces_the_loss_with_the_stated_weighting(weighting, expected, monkeypatch):
    m = tiny(objective="flow", loss_weighting=weighting)
    b = batch(n=2, num_classes=0)

    def fake(model, x0, t, **kw):  # per-sample means 1 and 3 over 1 and 8 generated elements
        return {"loss": torch.tensor([1.0, 3.0]), "weight": torch.tensor([1.0, 8.0])}

    monkeypatch.setattr(m.objective, "training_losses", fake)
    assert m.model_step(b, 0, "val").item() == pytest.approx(expected)


def test_predict_step_samples_every_packed_clip_at_its_own_shape():
    m = tiny(objective="flow", sample_steps=2)
    videos = [torch.zeros(3, 4, 16, 16), torch.zeros(3, 1, 8, 16), torch.zeros(3, 2, 16, 8)]
    out = m.predict_step({"videos": videos, "meta": [{}] * 3}, 0)
    assert [tuple(o.shape) for o in out] == [tuple(v.shape) for v in videos]
    bucketed = m.predict_step({"video": torch.zeros(2, 3, 4, 16, 16)}, 0)
    assert bucketed.shape == (2, 3, 4, 16, 16)


@pytest.mark.parametrize(
    "data_kw,names",
    [
        ({"patch_size": (1, 2, 2)}, "model.dit.patch_size=[1, 4, 4] but data.init_args.patch_size=[1, 2, 2]"),
        (
            {"latent_downsample": (1, 8, 8), "height": 64, "width": 64, "patch_size": (1, 4, 4)},
            "model.codec (downsample)=[1, 1, 1] but data.init_args.latent_downsample=[1, 8, 8]",
        ),
    ],
)
def test_fit_stops_at_once_when_model_and_data_count_tokens_differently(data_kw, names, tmp_path):
    import lightning as L

    kw = {"num_samples": 2, "num_frames": 2, "height": 16, "width": 16, "batch_size": 2} | data_kw
    dm = SyntheticVideoDataModule(**kw)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(names)):
        trainer.fit(tiny(), datamodule=dm)


def test_partly_given_tubelets_are_generated_consistently_and_the_given_frames_kept():
    """Temporal patch 2, frame 0 of 5 given: tubelet 0 (frames 0-1) is only partly given, so the network
    is fed it noisy and tagged generated (not clean-but-tagged-generated); frame 0 comes out as given,
    with a warning. The last tubelet (frame 4 + padding) given in full counts as given."""
    torch.manual_seed(0)
    m = VideoDiffusion(dit=dict(TINY, patch_size=(2, 4, 4)), objective="flow", sample_steps=2)
    seen = []
    forward = m.dit.forward
    m.dit.forward = lambda x, t, mask=None, **kw: (
        seen.append((x.clone(), mask.clone())),
        forward(x, t, mask=mask, **kw),
    )[1]
    given = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mask = predict_mask(5, 16, 16, 1)  # frame 0 only
    with pytest.warns(UserWarning, match="whole tubelets"):
        out = m.generate(1, num_frames=5, height=16, width=16, given=given, mask=mask, conditioning="replace")
    x_in, fed_mask = seen[0]
    assert not fed_mask.any()  # tubelet 0 is generated: nothing fed as given ...
    assert not torch.allclose(x_in[:, :, 0], given[:, :, 0])  # ... and frame 0 fed noisy, not clean
    torch.testing.assert_close(out[:, :, 0], given[:, :, 0])  # then put back exactly
    seen.clear()
    last = torch.zeros(1, 5, 16, 16, dtype=torch.bool)
    last[:, 4] = True  # the last tubelet: frame 4 and a padding frame
    m.generate(1, num_frames=5, height=16, width=16, given=given, mask=last, conditioning="replace")
    x_in, fed_mask = seen[0]
    assert fed_mask[:, :, 4].all() and not fed_mask[:, :, :4].any()
    torch.testing.assert_close(x_in[:, :, 4], given[:, :, 4])
    tokens = m.dit._given_tokens(fed_mask, x_in).reshape(1, 3, 4, 4)  # (B, gt, gh, gw)
    assert tokens[:, 2].all() and not tokens[:, :2].any()  # padding does not veto a given tubelet


def test_samples_depend_on_their_index_not_on_how_the_run_is_split():
    """generate(first_index=k) gives samples k, k+1, ... of the seed: pieces of a long evaluation
    equal one call (evaluate / FVDCallback generate in batches)."""
    m = tiny(objective="flow", sample_steps=2)
    whole = m.generate(5, num_frames=2, height=16, width=16, seed=3)
    pieces = torch.cat([m.generate(2, num_frames=2, height=16, width=16, seed=3, first_index=0),
                        m.generate(3, num_frames=2, height=16, width=16, seed=3, first_index=2)])  # fmt: skip
    torch.testing.assert_close(pieces, whole)


def test_evaluation_fakes_do_not_depend_on_the_batch_size():
    from lightning_modules.metrics.fvd import fake_statistics_from_generator

    m = tiny(objective="flow", sample_steps=2)
    seen = {}

    class Probe:  # a stand-in detector that keeps the clips it is shown
        protocol = type("P", (), {"num_frames": 9, "num_fake": 5})()

        def __call__(self, videos):
            seen.setdefault(self.key, []).append(videos)
            return torch.zeros(len(videos), 400, dtype=torch.float64)

    probe = Probe()
    for bs in (2, 5):
        probe.key = bs
        fake_statistics_from_generator(
            m.generate, probe.protocol, probe, height=16, width=16, batch_size=bs, progress=False
        )
    torch.testing.assert_close(torch.cat(seen[2]), torch.cat(seen[5]))
