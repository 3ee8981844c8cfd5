"""I3D (Inception-v1 inflated, Kinetics-400) feature detectors for FVD, from local weight files.

Two real loading paths, both giving the 400 pre-softmax logits that FVD compares:

* `i3d_torchscript.pt` (StyleGAN-V): a TorchScript module called as
  `detector(x, rescale=..., resize=..., return_features=True)` on BCTHW input.
* `i3d_pretrained_400.pt` (VideoGPT / TATS): a plain state dict of the TF-Hub
  `i3d-kinetics-400/1` weights, loaded with `strict=True` into `InceptionI3d` below, whose module
  names reproduce that file's keys (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_4b.b1b.bn.running_mean`,
  `logits.conv3d.bias`, ...). The file was converted from TF variables, so it has no
  `num_batches_tracked` entries; BatchNorm fills them in when a state dict carries no version
  metadata, which keeps `strict=True` loading exact.

Without the files, `random_i3d` + `save_torchscript` / `save_state_dict` write random-init
stand-ins that load through the same paths; anything computed with them is `uncalibrated`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
I3D_SIZE = 224  # spatial input size the logits head expects (7x7 after /32)
MIN_FRAMES = 9  # below this the (2, 7, 7) average pool has no temporal extent left


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (front, back) of one dimension."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


class SamePadMaxPool3d(nn.Module):
    """Max pool with TF 'SAME' padding (zeros: inputs are post-ReLU, so zeros never win wrongly)."""

    def __init__(self, *, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        pt = _same_pad(x.shape[2], self.kernel[0], self.stride[0])
        ph = _same_pad(x.shape[3], self.kernel[1], self.stride[1])
        pw = _same_pad(x.shape[4], self.kernel[2], self.stride[2])
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d with TF 'SAME' padding, then BatchNorm (no learned scale in TF) and ReLU."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.relu = relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)
        # eps 1e-5 / momentum 0.001 as in the VideoGPT/TATS port (TF itself used eps 1e-3)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        pt = _same_pad(x.shape[2], self.kernel[0], self.stride[0])
        ph = _same_pad(x.shape[3], self.kernel[1], self.stride[1])
        pw = _same_pad(x.shape[4], self.kernel[2], self.stride[2])
        x = self.conv3d(F.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1])))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
    """Four parallel branches: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | maxpool -> 1x1, concatenated."""

    def __init__(self, *, in_channels: int, widths: tuple[int, int, int, int, int, int], bn_eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        k3 = (3, 3, 3)
        self.b0 = Unit3D(in_channels=in_channels, out_channels=w0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels=in_channels, out_channels=w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(in_channels=w1a, out_channels=w1b, kernel=k3, bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels=in_channels, out_channels=w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(in_channels=w2a, out_channels=w2b, kernel=k3, bn_eps=bn_eps)
        self.b3a = SamePadMaxPool3d(kernel=k3, stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels=in_channels, out_channels=w3, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, out_channels, T, H, W)
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (name, in_channels, branch widths) of the Inception blocks, in order
_BLOCKS = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D RGB stream (Carreira & Zisserman 2017) returning Kinetics logits (B, num_classes).

    Input: (B, 3, T, 224, 224) float in [-1, 1], T >= 9. Module names match the VideoGPT/TATS
    state dict `i3d_pretrained_400.pt` key for key.
    """

    def __init__(self, *, num_classes: int = NUM_CLASSES, in_channels: int = 3, bn_eps: float = 1e-5):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(
            in_channels=in_channels, out_channels=64, kernel=(7, 7, 7), stride=(2, 2, 2), bn_eps=bn_eps
        )
        self.MaxPool3d_2a_3x3 = SamePadMaxPool3d(kernel=(1, 3, 3), stride=(1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(in_channels=64, out_channels=64, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(in_channels=64, out_channels=192, kernel=(3, 3, 3), bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = SamePadMaxPool3d(kernel=(1, 3, 3), stride=(1, 2, 2))
        self.Mixed_3b = InceptionBlock(in_channels=192, widths=_BLOCKS["Mixed_3b"][1], bn_eps=bn_eps)
        self.Mixed_3c = InceptionBlock(in_channels=256, widths=_BLOCKS["Mixed_3c"][1], bn_eps=bn_eps)
        self.MaxPool3d_4a_3x3 = SamePadMaxPool3d(kernel=(3, 3, 3), stride=(2, 2, 2))
        self.Mixed_4b = InceptionBlock(in_channels=480, widths=_BLOCKS["Mixed_4b"][1], bn_eps=bn_eps)
        self.Mixed_4c = InceptionBlock(in_channels=512, widths=_BLOCKS["Mixed_4c"][1], bn_eps=bn_eps)
        self.Mixed_4d = InceptionBlock(in_channels=512, widths=_BLOCKS["Mixed_4d"][1], bn_eps=bn_eps)
        self.Mixed_4e = InceptionBlock(in_channels=512, widths=_BLOCKS["Mixed_4e"][1], bn_eps=bn_eps)
        self.Mixed_4f = InceptionBlock(in_channels=528, widths=_BLOCKS["Mixed_4f"][1], bn_eps=bn_eps)
        self.MaxPool3d_5a_2x2 = SamePadMaxPool3d(kernel=(2, 2, 2), stride=(2, 2, 2))
        self.Mixed_5b = InceptionBlock(in_channels=832, widths=_BLOCKS["Mixed_5b"][1], bn_eps=bn_eps)
        self.Mixed_5c = InceptionBlock(in_channels=832, widths=_BLOCKS["Mixed_5c"][1], bn_eps=bn_eps)
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)  # identity in eval mode; kept for parity with the reference port
        self.logits = Unit3D(
            in_channels=1024, out_channels=num_classes, batch_norm=False, relu=False, bias=True
        )
        self.min_frames = MIN_FRAMES  # attributes, not globals, so the module can be scripted
        self.size = I3D_SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, 224, 224) -> (B, num_classes)
        if x.shape[2] < self.min_frames:
            raise ValueError(f"I3D needs at least {self.min_frames} frames, got a clip of {x.shape[2]}")
        x = self.Conv3d_1a_7x7(x)  # (B, 64, T/2, 112, 112)
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(self.MaxPool3d_2a_3x3(x)))  # (B, 192, T/2, 56, 56)
        x = self.Mixed_3c(self.Mixed_3b(self.MaxPool3d_3a_3x3(x)))  # (B, 480, T/2, 28, 28)
        x = self.MaxPool3d_4a_3x3(x)  # (B, 480, T/4, 14, 14)
        x = self.Mixed_4f(
            self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x))))
        )  # (B, 832, T/4, 14, 14)
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))  # (B, 1024, T/8, 7, 7)
        if x.shape[3] != 7 or x.shape[4] != 7:
            raise ValueError(
                f"I3D input must be {self.size}x{self.size} to give one logit vector per clip; resize first "
                f"(got a {x.shape[3]}x{x.shape[4]} map before the 7x7 average pool)"
            )
        x = self.logits(self.dropout(self.avg_pool(x)))  # (B, num_classes, T/8 - 1, 1, 1)
        return x.flatten(2).mean(dim=2)  # (B, num_classes): time-averaged logits


def rescale_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (0 -> -1, 255 -> 1)."""
    return x.to(torch.float32) * (2.0 / 255.0) - 1.0


class TorchScriptInterface(nn.Module):
    """Gives an `InceptionI3d` the call signature of StyleGAN-V's `i3d_torchscript.pt`.

    Only used to build random stand-ins (scripted and saved to a file) when the real file is
    absent; the real file carries its own preprocessing code.
    """

    def __init__(self, *, net: InceptionI3d):
        super().__init__()
        self.net = net

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 400)
        logits = self.net(self.preprocess(x, rescale, resize))
        return logits if return_features else F.softmax(logits, dim=1)

    @torch.jit.export
    def preprocess(self, x: torch.Tensor, rescale: bool = False, resize: bool = False) -> torch.Tensor:
        """(B, 3, T, H, W): uint8 -> [-1, 1] when `rescale`; trilinear to (T, 224, 224) when `resize`."""
        if rescale:
            x = x.to(torch.float32) * (2.0 / 255.0) - 1.0
        if resize:
            size = [x.shape[2], self.net.size, self.net.size]
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        return x


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_i3d(path: str | Path, *, map_location: str | torch.device = "cpu") -> InceptionI3d:
    """`InceptionI3d` with the VideoGPT/TATS state dict at `path`, strict key matching, eval mode."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = InceptionI3d()
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def load_torchscript(path: str | Path, *, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript detector at `path` (StyleGAN-V's `i3d_torchscript.pt`), eval mode."""
    return torch.jit.load(str(path), map_location=map_location).eval()


def random_i3d(*, seed: int = 0) -> InceptionI3d:
    """A random-init `InceptionI3d` (eval mode) for uncalibrated smoke runs and tests.

    He-normal convolutions with identity BatchNorm keep activations at unit scale through the 57
    layers, so different clips give visibly different logits (PyTorch's default init shrinks them
    to ~1e-7 spread, which would make every smoke-run FVD ~0).
    """
    gen = torch.Generator().manual_seed(seed)
    net = InceptionI3d()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    return net.eval().requires_grad_(False)


def save_state_dict(net: InceptionI3d, path: str | Path) -> Path:
    """Write `net` as a state dict file, loadable by `load_state_dict_i3d`."""
    torch.save(net.state_dict(), path)
    return Path(path)


def save_torchscript(net: InceptionI3d, path: str | Path) -> Path:
    """Script `net` behind StyleGAN-V's call signature and save it, loadable by `load_torchscript`."""
    torch.jit.save(torch.jit.script(TorchScriptInterface(net=net.eval())), str(path))
    return Path(path)
