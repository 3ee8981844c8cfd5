"""I3D detectors: key-for-key loading of the VideoGPT/TATS state dict, the TorchScript path,
random stand-ins through the same loaders, and the published golden value with the real file."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from lightning_modules.metrics import i3d
from lightning_modules.metrics.detectors import (
    DetectorWeightsError,
    load_fvd_detector,
    missing_weights_message,
)
from lightning_modules.metrics.frechet import GaussianStats, stats_distance
from lightning_modules.metrics.protocols import get_protocol

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

# The keys TATS' convert_tf_pretrained.py writes (TF variable names mapped to the port's modules);
# the file has no num_batches_tracked entries.
STEM = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
BLOCKS = [
    "Mixed_3b",
    "Mixed_3c",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "Mixed_5b",
    "Mixed_5c",
]
BRANCHES = ["b0", "b1a", "b1b", "b2a", "b2b", "b3b"]


def tats_file_keys() -> list[str]:
    units = STEM + [f"{b}.{u}" for b in BLOCKS for u in BRANCHES]
    keys = []
    for unit in units:
        keys.append(f"{unit}.conv3d.weight")
        keys += [f"{unit}.bn.{p}" for p in ("bias", "weight", "running_mean", "running_var")]
    return keys + ["logits.conv3d.weight", "logits.conv3d.bias"]


def test_module_names_match_the_tats_state_dict_keys():
    net = i3d.InceptionI3d()
    ours = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    assert ours == set(tats_file_keys())
    assert len(ours) == 287
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Mixed_5c.b1b.conv3d.weight"] == (384, 192, 3, 3, 3)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1)
    assert shapes["logits.conv3d.bias"] == (400,)


def test_tf_converted_style_file_loads_strict(tmp_path):
    # a plain dict without num_batches_tracked and without version metadata, as the converter saves it
    net = i3d.random_i3d(seed=3)
    state = {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    g = torch.Generator().manual_seed(0)
    for k in state:  # non-default BatchNorm values, so loading them is visible
        if ".bn." in k:
            state[k] = torch.rand(state[k].shape, generator=g) + 0.5
    assert list(state) != [] and sorted(state) == sorted(tats_file_keys())
    torch.save(state, tmp_path / "i3d_pretrained_400.pt")
    loaded = i3d.load_state_dict_i3d(tmp_path / "i3d_pretrained_400.pt")  # strict=True inside
    for k, v in state.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    state.pop("Mixed_4b.b2a.bn.running_var")
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        i3d.load_state_dict_i3d(tmp_path / "broken.pt")


def test_random_weights_through_both_file_paths_give_identical_400_logits(tmp_path):
    net = i3d.random_i3d(seed=1)
    sd_path = i3d.save_state_dict(net, tmp_path / "i3d_pretrained_400.pt")
    ts_path = i3d.save_torchscript(net, tmp_path / "i3d_torchscript.pt")
    from_sd = i3d.load_state_dict_i3d(sd_path)
    from_ts = i3d.load_torchscript(ts_path)
    for k, v in net.state_dict().items():
        assert torch.equal(from_sd.state_dict()[k], v), k
    x = torch.rand(1, 3, 9, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, C, T, H, W)
    with torch.no_grad():
        a = from_sd(x)
        b = from_ts(x, rescale=False, resize=False, return_features=True)
    assert a.shape == (1, 400)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert a.std() > 0


def test_i3d_rejects_short_clips_and_unresized_input():
    net = i3d.InceptionI3d().eval()
    with pytest.raises(ValueError, match="at least 9 frames"):
        net(torch.zeros(1, 3, 8, 224, 224))
    with torch.no_grad(), pytest.raises(ValueError, match="224x224"):
        net(torch.zeros(1, 3, 9, 64, 64))


def test_missing_weights_message_names_file_what_and_where(monkeypatch):
    monkeypatch.delenv("VIDEODIT_I3D_TORCHSCRIPT", raising=False)
    monkeypatch.delenv("VIDEODIT_I3D_STATE_DICT", raising=False)
    with pytest.raises(DetectorWeightsError) as err:
        load_fvd_detector(get_protocol("fvd2048_16f"))
    msg = str(err.value)
    assert "i3d_torchscript.pt" in msg and "StyleGAN-V" in msg and "dropbox.com" in msg
    assert "VIDEODIT_I3D_TORCHSCRIPT" in msg and "--allow-random-detector" in msg
    assert "i3d_pretrained_400.pt" in missing_weights_message("i3d_state_dict")
    with pytest.raises(DetectorWeightsError, match="not found"):
        load_fvd_detector(get_protocol("fvd_tats"), i3d_state_dict="/nonexistent/i3d_pretrained_400.pt")


def test_env_var_selects_the_file(monkeypatch, tmp_path):
    path = i3d.save_state_dict(i3d.random_i3d(seed=2), tmp_path / "weights.pt")
    monkeypatch.setenv("VIDEODIT_I3D_STATE_DICT", str(path))
    det = load_fvd_detector(get_protocol("fvd_tats"))
    assert det.path == path and det.calibrated  # a real-file path counts as calibrated
    assert det.sha256 == i3d.sha256_file(path) and len(det.sha256) == 64


GOLDEN = 10.138084766713924  # StyleGAN-V / REFERENCES.md: FVD of RandomState(1) vs RandomState(2) clips


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("VIDEODIT_I3D_TORCHSCRIPT"),
    reason="golden FVD needs the real StyleGAN-V i3d_torchscript.pt: set VIDEODIT_I3D_TORCHSCRIPT=/path/to/it",
)
def test_torchscript_golden_value():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    detector = i3d.load_torchscript(os.environ["VIDEODIT_I3D_TORCHSCRIPT"], map_location=device)
    stats = []
    for seed in (1, 2):  # fake, real
        videos = np.random.RandomState(seed).rand(128, 16, 224, 224, 3).astype(np.float32)  # (B, T, H, W, C)
        acc = GaussianStats(400)
        for lo in range(0, 128, 16):
            x = torch.from_numpy(videos[lo : lo + 16]).permute(0, 4, 1, 2, 3).to(device)  # (B, C, T, H, W)
            with torch.no_grad():
                acc.update(detector(x, rescale=False, resize=False, return_features=True))
        stats.append(acc)
    fvd = stats_distance(stats[0], stats[1], divisor="N-1", sqrtm="scipy")
    assert fvd == pytest.approx(GOLDEN, rel=1e-5)
