"""The standalone evaluator on a held-out shard set vs a folder of videos (make eval's command)."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from torch import nn

from curation import schema
from datamodules.synthetic import encode_mp4
from lightning_modules import evaluate
from lightning_modules.metrics.cache import StatsCacheMismatch, cache_key, load_stats, save_stats
from lightning_modules.metrics.detectors import FVDDetector
from lightning_modules.metrics.frechet import GaussianStats
from lightning_modules.metrics.fvd import fake_statistics_from_folder, real_statistics
from lightning_modules.metrics.protocols import get_protocol

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")


def moving_square(num_frames: int, size: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a coloured square drifting over a gradient, distinct per seed."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    frames[..., 2] = np.linspace(0, 200, size, dtype=np.uint8)[None, None, :]
    color = rng.integers(50, 255, 3)
    for t in range(num_frames):
        y, x = (3 + t) % (size - 8), (5 + 2 * t * (seed + 1)) % (size - 8)
        frames[t, y : y + 8, x : x + 8] = color
    return frames


def write_heldout_shards(
    folder: Path,
    lengths: list[int],
    size: int = 32,
    labels: list[int] | None = None,
    split: str = "val",
    first: int = 0,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(
        str(folder / schema.SHARD_PATTERN.format(split=split)), maxcount=2, verbose=0
    ) as sink:
        for i, n in enumerate(lengths, start=first):
            key = schema.check_key(f"src{i:03d}_s0000_c00")
            meta = {
                "key": key,
                "source_id": f"src{i:03d}",
                "source_path": f"raw/{i}.mp4",
                "source_sha256": "0" * 64,
                "start_frame": 0,
                "end_frame": n,
                "start_seconds": 0.0,
                "end_seconds": n / 24,
                "fps": 24.0,
                "num_frames": n,
                "width": size,
                "height": size,
                "split": split,
                "pipeline_version": schema.PIPELINE_VERSION,
            }
            if labels is not None:
                meta["label"] = labels[i - first]
            assert not schema.missing_meta(meta)
            sink.write(
                {
                    "__key__": key,
                    schema.MP4: encode_mp4(moving_square(n, size, i)),
                    schema.TXT: f"a square number {i}",
                    schema.JSON: json.dumps(meta).encode(),
                }
            )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    # the 5-frame clip is too short: discarded; labels 0, (1), 2, 2: the kept ones have {0: 1, 2: 2}
    write_heldout_shards(root / "shards", [18, 5, 20, 17], labels=[0, 1, 2, 2])
    (root / "fake").mkdir()
    for i in range(3):
        (root / "fake" / f"sample_{i:02d}.mp4").write_bytes(encode_mp4(moving_square(16, 32, 10 + i)))
    return root


def test_make_eval_writes_a_recorded_uncalibrated_report(data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIDEODIT_I3D_TORCHSCRIPT", raising=False)
    out = tmp_path / "report.json"
    argv = [
        "--real",
        str(data / "shards"),
        "--fake",
        str(data / "fake"),
        "--metrics",
        "fvd",
        "--protocol",
        "fvd2048_16f",
        "--num-real",
        "2",
        "--num-fake",
        "2",
        "--num-frames",
        "9",
        "--allow-random-detector",
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "2",
    ]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["calibrated"] is False and "uncalibrated" in report["status"]
    printed = capsys.readouterr()
    assert "uncalibrated" in printed.out and "uncalibrated" in printed.err
    p = report["protocol"]
    assert p["name"].startswith("custom(fvd2048_16f:") and p["num_frames"] == 9 and p["cov_divisor"] == "N"
    assert (p["rescale"], p["resize"], p["detector"]) == (True, True, "i3d_torchscript")
    assert report["counts"] == {"real": 2, "fake": 2}
    assert report["frames"] == 9 and report["stride"] == 1 and report["cov_divisor"] == "N"
    assert "resize=True" in report["resize"]
    assert len(report["detector_sha256"]) == 64 and report["detectors"]["fvd"]["calibrated"] is False
    assert report["real"]["kind"] == "shards" and report["real"]["discarded_short"] == 1
    assert report["command"].startswith("python -m lightning_modules.evaluate --real ")
    assert report["real"]["available"] == 4 and report["real"]["first_keys"] == [
        "src000_s0000_c00",
        "src002_s0000_c00",
    ]
    assert report["fake"]["kind"] == "videos" and report["fake"]["first_keys"] == [
        "sample_00.mp4",
        "sample_01.mp4",
    ]
    assert (
        np.isfinite(report["metrics"]["fvd"]) and report["metrics"]["fvd"] > 1e-3
    )  # random I3D still separates clips
    assert any("uncalibrated" in n for n in report["notes"]) and any("custom" in n for n in report["notes"])
    env = report["environment"]  # every package that can move a number, by version
    assert all(
        env[k] for k in ("torch", "numpy", "scipy", "torchmetrics", "torch-fidelity", "decord", "python")
    )
    assert report["conditioning"] is None and report["sampling"] is None  # a folder of fakes: nothing sampled


def test_missing_weights_stop_with_the_file_name(data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIDEODIT_I3D_STATE_DICT", raising=False)
    argv = [
        "--real",
        str(data / "shards"),
        "--fake",
        str(data / "fake"),
        "--protocol",
        "fvd_tats",
        "--out",
        str(tmp_path / "r.json"),
    ]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert "i3d_pretrained_400.pt" in err and "VIDEODIT_I3D_STATE_DICT" in err and "--i3d-state-dict" in err
    assert not (tmp_path / "r.json").exists()


class TinyDetector(nn.Module):
    """Cheap stand-in with the TorchScript call signature, for testing the plumbing around I3D.

    Frames are weighted by their position before pooling over time, so it sees frame order: any
    two different frames swapped change the features.
    """

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 400)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        x = x.float() / 127.5 - 1 if rescale else x
        t = x.shape[2]
        x = x * torch.linspace(0.5, 1.5, t).view(1, 1, t, 1, 1)  # position-dependent weight per frame
        pooled = nn.functional.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1)  # (B, 48)
        return self.proj(pooled)


def tiny_detector(protocol, sha="a" * 64):
    return FVDDetector(
        protocol=protocol, module=TinyDetector(), path=Path("tiny"), sha256=sha, calibrated=False
    )


def test_real_statistics_cache_is_reused_and_mismatch_is_an_error(data, tmp_path):
    protocol = get_protocol("fvd2048_16f").override(num_real=3, num_fake=2, num_frames=9)
    cache = tmp_path / "real.npz"
    first, info = real_statistics(
        str(data / "shards"), protocol, tiny_detector(protocol), cache=str(cache), progress=False
    )
    assert (tmp_path / "real.i3d.npz").exists() and info["cache_hit"] == {"i3d": False} and first.count == 3
    again, info2 = real_statistics(
        str(data / "shards"), protocol, tiny_detector(protocol), cache=str(cache), progress=False
    )
    assert info2["cache_hit"] == {"i3d": True}
    np.testing.assert_array_equal(again.scatter, first.scatter)
    # the fake side and final formula may change without invalidating the real statistics
    real_statistics(
        str(data / "shards"),
        protocol.override(num_fake=3, cov_divisor="N-1"),
        tiny_detector(protocol),
        cache=str(cache),
        progress=False,
    )
    with pytest.raises(StatsCacheMismatch, match="detector_sha256"):
        real_statistics(
            str(data / "shards"),
            protocol,
            tiny_detector(protocol, sha="b" * 64),
            cache=str(cache),
            progress=False,
        )
    with pytest.raises(StatsCacheMismatch, match="real_clips_sha256"):
        real_statistics(
            str(data / "shards"),
            protocol.override(num_real=2),
            tiny_detector(protocol),
            cache=str(cache),
            progress=False,
        )
    # and directly: a different protocol field is named in the error
    key = cache_key(real_clips_sha256="x", protocol={"stride": 1}, detector_sha256="d")
    save_stats(tmp_path / "k.npz", GaussianStats(400), key)
    with pytest.raises(StatsCacheMismatch, match=r"protocol.stride \(cached 1, now 3\)"):
        load_stats(
            tmp_path / "k.npz", cache_key(real_clips_sha256="x", protocol={"stride": 3}, detector_sha256="d")
        )


def test_fake_folder_shorter_than_protocol_is_rejected(data):
    protocol = get_protocol("fvd2048_16f").override(num_real=2, num_fake=2, num_frames=17)
    with pytest.raises(
        ValueError, match=r"fake clip 'sample_00.mp4' has 16 frames but the protocol needs 17"
    ):
        fake_statistics_from_folder(str(data / "fake"), protocol, tiny_detector(protocol), progress=False)


def test_same_clips_from_shards_frames_and_videos_give_the_same_statistics(data, tmp_path):
    """Readers agree: the shard clips, their mp4 bytes as a video folder, and their decoded frames
    as PNG folders (unpadded names 0.png .. 17.png: frame order must survive) give identical stats."""
    import tarfile

    from PIL import Image

    from lightning_modules.metrics.videos import open_sources

    protocol = get_protocol("fvd2048_16f").override(num_real=2, num_fake=2, num_frames=9, clip_start="first")
    _, sources = open_sources(str(data / "shards"))
    frames_dir, videos_dir = tmp_path / "frames", tmp_path / "videos"
    videos_dir.mkdir()
    for tar_path in sorted((data / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".mp4"):  # the very same encoded bytes
                    (videos_dir / m.name).write_bytes(tar.extractfile(m).read())
    for s in sources:
        if s.num_frames >= 9:
            (frames_dir / s.key).mkdir(parents=True)
            for t, f in enumerate(s.load(list(range(s.num_frames)))):
                Image.fromarray(f).save(frames_dir / s.key / f"{t}.png")  # 10.png sorts before 2.png as text
    a, info_a = real_statistics(str(data / "shards"), protocol, tiny_detector(protocol), progress=False)
    b, info_b = real_statistics(str(frames_dir), protocol, tiny_detector(protocol), progress=False)
    c, info_c = real_statistics(str(videos_dir), protocol, tiny_detector(protocol), progress=False)
    assert (info_a["kind"], info_b["kind"], info_c["kind"]) == ("shards", "frames", "videos")
    assert info_b["first_keys"] == info_a["first_keys"] and a.count == b.count == c.count == 2
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-12)
    np.testing.assert_allclose(c.mean, a.mean, rtol=1e-12)
    np.testing.assert_allclose(c.scatter, a.scatter, rtol=1e-9, atol=1e-9)


def test_the_tiny_detector_sees_frame_order(data):
    """The stand-in detector of these tests must fail a reader that scrambles frames."""
    from lightning_modules.metrics.videos import open_sources

    protocol = get_protocol("fvd2048_16f").override(num_frames=9)
    _, sources = open_sources(str(data / "shards"))
    clip = torch.from_numpy(sources[0].load(list(range(9)))).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    det = tiny_detector(protocol)
    ref = det(clip)
    assert (ref - det(clip.flip(2))).abs().max() > 1e-2  # reversed
    assert (ref - det(clip[:, :, [1, 0, *range(2, 9)]])).abs().max() > 1e-3  # two frames swapped


@pytest.mark.slow
def test_fake_from_a_checkpoint_is_sampled_with_ema(data, tmp_path, monkeypatch):
    """--fake run.ckpt: VideoDiffusion.load_for_sampling + generate, then the same report."""
    import lightning as L

    from datamodules.synthetic import SyntheticVideoDataModule
    from lightning_modules.callbacks.ema import EMA
    from lightning_modules.video_diffusion import VideoDiffusion

    torch.manual_seed(0)
    model = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)}, sample_steps=2
    )
    dm = SyntheticVideoDataModule(
        num_samples=4, num_frames=10, height=32, width=32, batch_size=2, patch_size=(1, 4, 4)
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        callbacks=[EMA(decay=0.9)],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "report.json"
    argv = [
        "--real",
        str(data / "shards"),
        "--fake",
        str(ckpt),
        "--protocol",
        "fvd_tats",
        "--num-real",
        "2",
        "--num-fake",
        "2",
        "--num-frames",
        "9",  # no --height/--width: the checkpoint's training clips (32x32) are the default
        "--steps",
        "2",
        "--allow-random-detector",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["fake"]["kind"] == "generator" and report["fake"]["ema"] is True
    assert report["counts"]["fake"] == 2 and report["protocol"]["cov_divisor"] == "N-1"
    assert any("rank-deficient" in n for n in report["notes"])


@pytest.mark.slow
def test_fid_is_and_video_is_in_the_report(data, tmp_path):
    out = tmp_path / "report.json"
    argv = [
        "--real",
        str(data / "shards"),
        "--fake",
        str(data / "fake"),
        "--metrics",
        "fvd,fid,is,isv",
        "--num-real",
        "2",
        "--num-fake",
        "2",
        "--num-frames",
        "16",
        "--fid-antialias",
        "0",
        "--allow-random-detector",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    assert {"fvd", "fid", "is_frame_mean", "is_frame_std", "is_video_mean", "is_video_std"} <= set(
        report["metrics"]
    )
    assert report["detectors"]["frame"]["antialias"] is False
    assert report["detectors"]["frame"]["frames"] == {"real": 32, "fake": 32}
    assert report["detectors"]["video_is"]["videos"] == 2 and report["calibrated"] is False


def test_non_finite_metric_is_written_as_null_with_a_reason(data, tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEODIT_I3D_TORCHSCRIPT", raising=False)
    monkeypatch.setattr(evaluate, "fvd_from_stats", lambda *a, **k: float("nan"))  # sqrtm gone wrong
    out = tmp_path / "report.json"
    argv = ["--real", str(data / "shards"), "--fake", str(data / "fake"), "--metrics", "fvd"]
    argv += ["--num-real", "2", "--num-fake", "2", "--num-frames", "9", "--allow-random-detector"]
    with pytest.warns(UserWarning, match="fvd is not finite"):
        assert evaluate.main([*argv, "--out", str(out), "--no-progress", "--batch-size", "2"]) == 0
    text = out.read_text()
    assert "NaN" not in text  # strict JSON: a bare NaN would not parse in most readers
    report = json.loads(text)
    assert report["metrics"]["fvd"] is None and any("fvd is not finite" in n for n in report["notes"])


def test_fid_antialias_defaults_to_the_tf1_resize():
    args = evaluate.build_parser().parse_args(["--real", "r", "--fake", "f"])
    assert args.fid_antialias == 0


@pytest.mark.slow  # two Inception passes over 36 frames at 299x299 on CPU
def test_fid_alone_needs_only_the_inception_file_and_caches_its_real_statistics(data, tmp_path, monkeypatch):
    """--metrics fid: no I3D file anywhere, no --allow-random-detector; the Inception file given is a
    random-init stand-in. Real Inception statistics go to their own cache file and are reused."""
    from lightning_modules.metrics.fid_is import random_inception_weights

    for env in ("VIDEODIT_I3D_TORCHSCRIPT", "VIDEODIT_I3D_STATE_DICT", "VIDEODIT_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(env, raising=False)
    weights = random_inception_weights(tmp_path / "stand_in_inception.pth")
    argv = ["--real", str(data / "shards"), "--fake", str(data / "fake"), "--metrics", "fid"]
    argv += ["--num-real", "2", "--num-fake", "2", "--num-frames", "9", "--inception-weights", str(weights)]
    argv += ["--real-cache", str(tmp_path / "real.npz"), "--no-progress"]
    reports = []
    for run in range(2):
        out = tmp_path / f"report{run}.json"
        assert evaluate.main([*argv, "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    first, second = reports
    assert (
        set(first["metrics"]) == {"fid"}
        and np.isfinite(first["metrics"]["fid"])
        and first["metrics"]["fid"] > 0
    )
    assert set(first["detectors"]) == {"frame"} and first["detector_sha256"] is None  # no I3D loaded
    assert first["detectors"]["frame"]["outputs"] == ["2048"]  # no IS logits either
    assert (tmp_path / "real.inception.npz").exists() and not (tmp_path / "real.i3d.npz").exists()
    assert first["real"]["cache_hit"] == {"inception": False} and second["real"]["cache_hit"] == {
        "inception": True
    }
    assert second["metrics"]["fid"] == pytest.approx(first["metrics"]["fid"], rel=1e-12)
    assert second["detectors"]["frame"]["frames"] == {"real": 0, "fake": 18}  # real frames not decoded again
    assert second["real"]["sizes"] == first["real"]["sizes"] == [[32, 32]]  # known from one frame on a hit
    assert first["counts"] == {"real": 2, "fake": 2} and first["real"]["feature_counts"] == {"inception": 18}
    assert any("only 18 frames for 2048-d inception features" in n for n in first["notes"])


def class_conditional_checkpoint(tmp_path, num_classes: int = 3) -> Path:
    """A debug-sized class-conditional checkpoint (one training step) whose output depends on the label.

    adaLN-Zero starts every block and the final layer at zero, so a freshly trained model ignores
    its condition; those layers get small random weights before saving.
    """
    import lightning as L

    from datamodules.synthetic import SyntheticVideoDataModule
    from lightning_modules.video_diffusion import VideoDiffusion

    torch.manual_seed(0)
    model = VideoDiffusion(
        dit={"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": (1, 4, 4)},
        num_classes=num_classes,
        sample_steps=2,
    )
    dm = SyntheticVideoDataModule(
        num_samples=4,
        num_frames=10,
        height=32,
        width=32,
        batch_size=2,
        num_classes=num_classes,
        patch_size=(1, 4, 4),
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ckpt = tmp_path / "class_cond.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt


@pytest.mark.slow  # trains one debug step, samples 2 x 6 clips, runs the random I3D
def test_class_conditional_checkpoint_is_sampled_with_the_real_label_histogram(data, tmp_path, capsys):
    ckpt = class_conditional_checkpoint(tmp_path)
    argv = ["--real", str(data / "shards"), "--fake", str(ckpt), "--metrics", "fvd", "--no-ema"]
    argv += ["--num-real", "3", "--num-fake", "6", "--num-frames", "9", "--steps", "2", "--sample-seed", "5"]
    argv += [
        "--allow-random-detector",
        "--no-progress",
        "--batch-size",
        "4",
        "--real-cache",
        str(tmp_path / "r.npz"),
    ]
    reports = {}
    for name, extra in (("labels", ["--labels"]), ("uncond", []), ("uniform", ["--labels", "uniform"])):
        out = tmp_path / f"{name}.json"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert evaluate.main([*argv, *extra, "--out", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
        reports[name]["_warnings"] = [str(w.message) for w in caught]
    cond = reports["labels"]["conditioning"]
    # the 3 real clips carry labels 0, 2, 2: 6 fakes get twice that histogram
    assert cond["mode"] == "class" and cond["labels"] == "real"
    assert cond["real_label_histogram"] == {"0": 1, "2": 2} and cond["label_histogram"] == {"0": 2, "2": 4}
    assert cond["unconditional_run_of_conditional_model"] is False
    assert reports["uniform"]["conditioning"]["label_histogram"] == {"0": 2, "1": 2, "2": 2}
    uncond = reports["uncond"]["conditioning"]
    assert uncond["mode"] == "unconditional" and uncond["unconditional_run_of_conditional_model"] is True
    assert "class-conditional (num_classes=3)" in uncond["warning"]
    assert any("UNCONDITIONAL" in n for n in reports["uncond"]["notes"])
    assert any("UNCONDITIONAL" in w for w in reports["uncond"]["_warnings"])
    assert "WARNING: UNCONDITIONAL" in capsys.readouterr().err
    # same seed, same real statistics (cache hit), different conditions: different FVD
    assert reports["uncond"]["real"]["cache_hit"] == {"i3d": True}
    fvd = {name: r["metrics"]["fvd"] for name, r in reports.items()}
    assert fvd["labels"] != pytest.approx(fvd["uncond"], rel=1e-6), fvd
    assert fvd["uniform"] != pytest.approx(fvd["labels"], rel=1e-6), fvd
    # what moved the number is recorded
    s = reports["labels"]["sampling"]
    assert (s["sampler"], s["steps"], s["cfg_scale"], s["steps_from"]) == ("ddim", 2, 1.0, "--steps")
    assert reports["labels"]["fake"]["seed"] == 5 and "(5, i)" in reports["labels"]["fake"]["seeds"]
    env = reports["labels"]["environment"]
    assert all(env[k] for k in ("torch", "scipy", "torchmetrics", "decord", "numpy"))


@pytest.mark.slow  # two runs of the random I3D (~40 s on a shared CPU)
def test_resolution_split_and_count_differences_are_reported(data, tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEODIT_I3D_TORCHSCRIPT", raising=False)
    small = tmp_path / "fake48"
    small.mkdir()
    for i in range(2):
        (small / f"s{i}.mp4").write_bytes(encode_mp4(moving_square(16, 48, 20 + i)))
    argv = ["--real", str(data / "shards"), "--fake", str(small), "--num-fake", "2", "--num-frames", "9"]
    argv += ["--allow-random-detector", "--no-progress", "--batch-size", "2"]
    native_out, train_out = tmp_path / "native.json", tmp_path / "train.json"
    with pytest.warns(
        UserWarning, match=r"real clips are \[\[32, 32\]\] \(H, W\) but fakes are \[\[48, 48\]\]"
    ):
        assert evaluate.main([*argv, "--num-real", "2", "--out", str(native_out)]) == 0
    native = json.loads(native_out.read_text())
    assert native["resolution"] == {
        "real_resize": "native",
        "real_sizes": [[32, 32]],
        "fake_sizes": [[48, 48]],
        "match": False,
    }
    assert any("--real-resize train" in n for n in native["notes"])
    assert any("real split 'val' differs from the 'train' split" in n for n in native["notes"])
    # resized to the fakes' size; 5 asked but only 3 real videos are long enough: all 3 used, said so
    assert evaluate.main([*argv, "--num-real", "5", "--real-resize", "train", "--out", str(train_out)]) == 0
    train = json.loads(train_out.read_text())
    assert train["resolution"]["real_sizes"] == [[48, 48]] and train["resolution"]["match"] is True
    assert train["real"]["resize"] == {"real_resize": "train", "size": [48, 48], "conversion": "round"}
    assert train["counts"]["real"] == 3 and train["real"]["used_all"] is True
    assert any("only 3 usable real clips for the 5 asked" in n for n in train["notes"])
    assert "real_resize=train" in train["protocol"]["name"]
    assert train["protocol"]["sources"]["real_selection"].startswith("universome/stylegan-v")


def test_videos_decord_cannot_copy_out_are_read_with_pyav():
    """decord 0.6 fails (or returns 4 channels) on 24- or 48-pixel-wide H.264; the reader falls back."""
    from lightning_modules.metrics.videos import _decode_pyav, decode_frames

    for size in (24, 48):
        data = encode_mp4(moving_square(16, size, 3))
        frames = decode_frames(data, [0, 7, 15])
        assert frames.shape == (3, size, size, 3)
        np.testing.assert_array_equal(frames, _decode_pyav(data, [0, 7, 15]))


def test_random_fake_selection_draws_a_seeded_subset_of_the_folder(data):
    """Latte and TATS draw their fakes at random from what was generated; fvd2048_16f takes the first."""
    protocol = get_protocol("fvd2048_16f_latte").override(num_real=2, num_fake=2, num_frames=9)
    _, info = fake_statistics_from_folder(
        str(data / "fake"), protocol, tiny_detector(protocol), progress=False
    )
    names = ["sample_00.mp4", "sample_01.mp4", "sample_02.mp4"]
    assert info["first_keys"] == [names[i] for i in np.random.RandomState(0).permutation(3)[:2]]
    first = get_protocol("fvd2048_16f").override(num_real=2, num_fake=2, num_frames=9)
    _, info = fake_statistics_from_folder(str(data / "fake"), first, tiny_detector(first), progress=False)
    assert info["first_keys"] == names[:2]


def test_fvd_tats_from_a_fake_folder_resizes_real_windows_to_the_fakes_size(data, tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEODIT_I3D_STATE_DICT", raising=False)
    fakes = tmp_path / "fake48"
    fakes.mkdir()
    for i in range(3):
        (fakes / f"s{i}.mp4").write_bytes(encode_mp4(moving_square(16, 48, 30 + i)))
    out = tmp_path / "tats.json"
    argv = ["--real", str(data / "shards"), "--fake", str(fakes), "--protocol", "fvd_tats", "--num-real", "4"]
    argv += [
        "--num-fake",
        "2",
        "--num-frames",
        "9",
        "--allow-random-detector",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["real"]["selection"] == "windows" and report["counts"] == {"real": 4, "fake": 2}
    assert report["real"]["resize"] == {"real_resize": "train", "size": [48, 48], "conversion": "truncate"}
    assert report["resolution"]["match"] is True and report["fake"]["first_keys"] != ["s0.mp4", "s1.mp4"]
    assert report["protocol"]["sources"]["real_selection"].startswith("songweige/TATS")


def test_labels_real_draws_the_whole_split_histogram_not_the_selected_clips(tmp_path, monkeypatch):
    """StyleGAN-V draws each fake's label from a random video of the WHOLE dataset: with sorted-key
    selection the first clips may cover only some classes, the fakes must still get all of them."""
    import types

    import lightning_modules.metrics.fid_is as fid_is
    from lightning_modules.video_diffusion import VideoDiffusion

    # sorted keys src000..src005; the 5-frame one is too short (not usable); first 2 selected: {0: 2}
    write_heldout_shards(tmp_path / "shards", [17, 17, 17, 5, 17, 17], labels=[0, 0, 1, 3, 2, 2])
    stub = types.SimpleNamespace(hparams={"num_classes": 4}, sample_shape=(16, 32, 32), text_encoder=None)
    monkeypatch.setattr(VideoDiffusion, "load_for_sampling", classmethod(lambda cls, *a, **k: stub))
    monkeypatch.setattr(fid_is, "FrameInception", lambda **kw: None)
    seen, real_resolve = {}, evaluate.resolve_conditioning

    class Stop(Exception):
        pass

    def capture(*a, **kw):
        seen["out"] = real_resolve(*a, **kw)
        raise Stop

    monkeypatch.setattr(evaluate, "resolve_conditioning", capture)
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"")
    base = ["--real", str(tmp_path / "shards"), "--fake", str(ckpt), "--metrics", "is", "--num-real", "2"]
    base += ["--num-fake", "5", "--num-frames", "16", "--allow-random-detector", "--no-progress"]
    parser = evaluate.build_parser()
    with pytest.raises(Stop):
        evaluate.evaluate(parser.parse_args([*base, "--labels"]))
    labels, _, info = seen["out"]
    assert Counter(labels) == {0: 2, 1: 1, 2: 2}
    assert info["real_label_histogram"] == {"0": 2, "1": 1, "2": 2} and info["label_pool_size"] == 5
    assert info["selected_label_histogram"] == {"0": 2}
    assert "every usable video" in info["label_source"] and "5 videos" in info["label_source"]
    with pytest.raises(Stop):
        evaluate.evaluate(parser.parse_args([*base, "--labels", "selected"]))
    labels, _, info = seen["out"]
    assert Counter(labels) == {0: 5} and info["label_source"] == "the selected real clips"


def test_a_shard_folder_of_fakes_is_read_whole_whatever_the_tars_split_prefix(tmp_path):
    """Generated shards need not be named val-*.tar: every tar of the fake folder counts."""
    write_heldout_shards(tmp_path / "fakes", [9, 9, 9], split="val")
    write_heldout_shards(tmp_path / "fakes", [9, 9], split="train", first=3)
    protocol = get_protocol("fvd2048_16f").override(num_real=2, num_fake=5, num_frames=9)
    stats, info = fake_statistics_from_folder(
        str(tmp_path / "fakes"), protocol, tiny_detector(protocol), progress=False
    )
    assert info["available"] == 5 and info["selected"] == 5 and stats.count == 5
