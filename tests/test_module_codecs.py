"""Latent codecs: identity, SD VAE per frame (a tiny random-init AutoencoderKL saved to a temp dir
and loaded through the real path), frozen, kept out of checkpoints and rebuilt from their spec."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets.codecs import IdentityCodec, LatentCodec, SDVAECodec, build_from_spec
from lightning_modules.video_diffusion import VideoDiffusion

TINY_DIT = {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 2, 2)}


def test_identity_codec_is_pixel_space():
    c = IdentityCodec()
    v = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    assert torch.equal(c.decode(c.encode(v)), v)
    assert (c.latent_channels, c.downsample) == (3, (1, 1, 1))
    assert isinstance(build_from_spec(c.spec, LatentCodec), IdentityCodec)
    with pytest.raises(TypeError, match="not a subclass"):
        build_from_spec({"class_path": "torch.nn.Linear", "init_args": {}}, LatentCodec)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers", reason="optional extra `vae` not installed")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    )
    out = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(out)
    return out


def test_sd_vae_codec_encodes_each_frame_with_the_saved_weights(tiny_vae_dir):
    from diffusers import AutoencoderKL

    codec = SDVAECodec(str(tiny_vae_dir), scale=0.5)
    assert codec.latent_channels == 4 and codec.downsample == (1, 2, 2)  # 2 blocks -> /2
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.training  # frozen: stays in eval mode
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1  # (B, 3, T, H, W)
    z = codec.encode(video)
    assert z.shape == (2, 4, 3, 8, 8)
    ref = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    with torch.no_grad():  # frame t of clip b is encoded alone: posterior mean * scale
        expected = ref.encode(video[1, :, 2][None]).latent_dist.mean * 0.5
    torch.testing.assert_close(z[1, :, 2], expected[0], rtol=1e-5, atol=1e-5)
    x = codec.decode(z)
    assert x.shape == video.shape and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="not divisible"):
        codec.encode(torch.zeros(1, 3, 1, 15, 16))


def test_sd_vae_codec_errors_name_the_fix(tmp_path):
    pytest.importorskip("diffusers")
    with pytest.raises(OSError, match="save_pretrained"):
        SDVAECodec(str(tmp_path / "missing"))


def test_module_with_a_vae_trains_in_latent_space_and_keeps_vae_weights_out_of_checkpoints(
    tiny_vae_dir, tmp_path
):
    spec = {
        "class_path": "lightning_modules.nets.codecs.SDVAECodec",
        "init_args": {"path_or_id": str(tiny_vae_dir)},
    }
    m = VideoDiffusion(dit=dict(TINY_DIT), codec=spec)  # a spec dict, as LightningCLI / checkpoints give it
    assert m.dit.in_channels == 4
    b = {"video": torch.rand(2, 3, 2, 16, 16) * 2 - 1, "caption": ["", ""], "label": torch.tensor([-1, -1])}
    assert m.encode(b).shape == (2, 4, 2, 8, 8)
    loss = m.model_step(b, 0, "val")
    assert torch.isfinite(loss)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("codec.") for n in trainable)
    # checkpoint: no codec weights, the spec in the hyper-parameters; loading rebuilds the VAE
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(ckpt)
    assert not any(k.startswith("codec.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["codec"]["init_args"]["path_or_id"] == str(tiny_vae_dir)
    torch.save(ckpt, tmp_path / "m.ckpt")
    loaded = VideoDiffusion.load_for_sampling(tmp_path / "m.ckpt", use_ema=False)
    assert isinstance(loaded.codec, SDVAECodec)
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    out = loaded.generate(1, num_frames=2, height=16, width=16, steps=2)
    assert out.shape == (1, 3, 2, 16, 16)
