"""VideoShardsDataModule on shards written in the contract format (curation/schema.py)."""

import io
import itertools
import tarfile

import pytest
import torch

from curation.schema import REQUIRED_META
from datamodules.sampling import span
from datamodules.shards import expand_shards
from datamodules.synthetic import clip_sample, frame_index, write_shards
from datamodules.video_shards import VideoShardsDataModule

# (frames, height, width, fps) of the training clips, cycled
SHAPES = [(40, 48, 64, 30.0), (30, 64, 48, 25.0), (24, 48, 48, 24.0), (41, 36, 64, 30000 / 1001)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "shards").mkdir()
    train = [
        clip_sample(f"src{i:03d}_s0000_c00", num_frames=t, height=h, width=w, fps=fps, label=i % 3)
        for i, (t, h, w, fps) in zip(range(12), itertools.cycle(SHAPES))
    ]
    val = [
        clip_sample(f"val{i:03d}_s0000_c00", num_frames=t, height=h, width=w, fps=fps, split="val")
        for i, (t, h, w, fps) in zip(range(5), itertools.cycle(SHAPES))
    ]
    write_shards(str(root / "shards" / "train-%06d.tar"), train, maxcount=3)  # 4 shards
    write_shards(str(root / "shards" / "val-%06d.tar"), val, maxcount=3)  # 2 shards
    return root


def make(root, **kw):
    args = dict(
        data_dir=str(root),
        num_frames=8,
        height=32,
        width=32,
        batch_size=3,
        num_workers=0,
        latent_downsample=(1, 1, 1),
    )
    args.update(kw)
    return VideoShardsDataModule(**args)


def check_frames(batch_video, metas):
    """Every decoded frame is the source frame its meta names."""
    for video, meta in zip(batch_video, metas):  # (3, T, H, W)
        got = [frame_index(video[:, t]) for t in range(video.shape[1])]
        assert got == meta["frame_indices"], (meta["key"], got, meta["frame_indices"])


def test_batches_follow_the_contract(shards):
    dm = make(shards, frame_stride=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.batches_per_rank == 4  # 12 clips / 3
    for b in batches:
        assert set(b) >= {"video", "caption", "label", "fps", "meta"}
        assert b["video"].shape == (3, 3, 8, 32, 32) and b["video"].dtype == torch.float32
        assert b["video"].min() >= -1 and b["video"].max() <= 1
        assert b["label"].dtype == torch.long and b["label"].tolist() == [m["label"] for m in b["meta"]]
        assert b["caption"] == [f"clip {m['key']}" for m in b["meta"]]
        for m in b["meta"]:
            assert not set(REQUIRED_META) - set(m) and len(m["frame_indices"]) == 8
        check_frames(b["video"], b["meta"])
    keys = [m["key"] for b in batches for m in b["meta"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12  # one pass, every clip once


def test_stride_is_honoured_exactly(shards):
    dm = make(shards, frame_stride=3)
    for b in dm.train_dataloader():
        for m, fps in zip(b["meta"], b["fps"].tolist()):
            idx = m["frame_indices"]
            assert [j - i for i, j in zip(idx, idx[1:])] == [3] * 7
            assert 0 <= idx[0] and idx[-1] < m["num_frames"]
            assert fps == pytest.approx(m["fps"] / 3)
        check_frames(b["video"], b["meta"])


def test_target_fps_is_honoured_exactly(shards):
    dm = make(shards, target_fps=10.0, num_frames=6)
    seen = set()
    for b in dm.train_dataloader():
        for m, fps in zip(b["meta"], b["fps"].tolist()):
            step = m["fps"] / 10.0
            idx = m["frame_indices"]
            # frame i sits on the 10 fps clock to within half a source frame
            assert all(abs((j - idx[0]) - i * step) <= 0.5 + 1e-9 for i, j in enumerate(idx))
            assert fps == pytest.approx(10.0)
            seen.add(round(m["fps"], 2))
            if m["fps"] == 30.0:
                assert [j - i for i, j in zip(idx, idx[1:])] == [3] * 5
        check_frames(b["video"], b["meta"])
    assert {30.0, 25.0, 24.0, 29.97} <= seen


def test_validation_is_deterministic(shards):
    def run():
        dm = make(shards, frame_stride=2)
        return [b for _ in range(2) for b in dm.val_dataloader()]  # two epochs

    a, b = run(), run()
    half = len(a) // 2
    for x, y in zip(a, a[half:] + b):
        assert torch.equal(x["video"], y["video"]) and [m["frame_indices"] for m in x["meta"]] == [
            m["frame_indices"] for m in y["meta"]
        ]
    keys = [m["key"] for x in a[:half] for m in x["meta"]]
    assert sorted(keys) == [f"val{i:03d}_s0000_c00" for i in range(5)]  # every val clip, partial batch kept
    for x in a[:half]:
        for m in x["meta"]:  # centred offset
            assert m["frame_indices"][0] == (m["num_frames"] - span(8, 2.0)) // 2


def test_training_offsets_change_with_epoch_but_not_with_rerun(shards):
    def offsets(epochs):
        dm = make(shards, frame_stride=2, hflip=True)
        loader = dm.train_dataloader()
        return [
            {m["key"]: (m["frame_indices"][0], m["crop"]) for b in loader for m in b["meta"]}
            for _ in range(epochs)
        ]

    first, again = offsets(2), offsets(2)
    assert first == again  # deterministic given seed and epoch
    assert first[0] != first[1]  # a new epoch draws new offsets


def test_short_clips_skipped_and_counted_or_padded(shards):
    dm = make(shards, frame_stride=1, num_frames=32)  # only the 40- and 41-frame clips are long enough
    batches = list(dm.train_dataloader())
    assert all(m["num_frames"] >= 32 for b in batches for m in b["meta"])
    assert dm.data_stats()["short"] > 0
    dm = make(shards, frame_stride=1, num_frames=32, short_clips="pad", shuffle_buffer=0)
    b = next(iter(dm.train_dataloader()))
    assert any(m["num_frames"] < 32 for m in b["meta"])  # the padding branch below really runs
    for m, v in zip(b["meta"], b["video"]):
        if m["num_frames"] < 32:
            assert m["frame_indices"][-1] == m["num_frames"] - 1 == m["frame_indices"][m["num_frames"]]
        check_frames(v[None], [m])


def _corrupt_shards(root):
    good = [clip_sample(f"ok{i:02d}_s0_c0", num_frames=12, height=32, width=32, fps=24.0) for i in range(5)]
    garbage = dict(good[0], __key__="bad00_s0_c0", mp4=b"\x00not an mp4 at all" * 50)
    truncated = dict(good[1], __key__="bad01_s0_c0", mp4=good[1]["mp4"][: len(good[1]["mp4"]) // 3])
    badjson = dict(good[2], __key__="bad02_s0_c0", json=b"{not json")
    samples = good[:2] + [garbage] + good[2:4] + [truncated, badjson] + good[4:]
    write_shards(str(root / "train-%06d.tar"), samples, maxcount=100)
    # a second shard cut off in the middle of a member
    write_shards(str(root / "cut-%06d.tar"), good, maxcount=100)
    data = (root / "cut-000000.tar").read_bytes()
    (root / "train-000001.tar").write_bytes(data[: int(len(data) * 0.6)])
    (root / "cut-000000.tar").unlink()


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_samples_are_skipped_and_counted(tmp_path, workers):
    _corrupt_shards(tmp_path)
    dm = VideoShardsDataModule(
        train_shards=str(tmp_path / "train-*.tar"),
        val_shards=None,
        num_frames=4,
        height=32,
        width=32,
        batch_size=2,
        num_workers=workers,
        latent_downsample=(1, 1, 1),
        batches_per_epoch=8,
    )  # (>= one full pass per worker)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == dm.batches_per_rank == len(loader)  # the epoch completes
    keys = {m["key"] for b in batches for m in b["meta"]}
    assert keys and not any(k.startswith("bad") for k in keys)
    stats = dm.data_stats()
    assert stats["corrupt"] >= 3 and stats["shard_errors"] >= 1, stats


def test_heldout_data_never_reaches_training(shards, tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        make(shards, train_shards=str(shards / "shards" / "*.tar")).train_dataloader()
    mixed = [
        clip_sample(f"m{i}_s0_c0", num_frames=10, height=32, width=32, fps=24.0, split=s)
        for i, s in enumerate(["train", "val", "train", "val"])
    ]
    write_shards(str(tmp_path / "train-%06d.tar"), mixed)
    dm = VideoShardsDataModule(
        train_shards=str(tmp_path / "train-*.tar"),
        num_frames=4,
        height=32,
        width=32,
        batch_size=1,
        num_workers=0,
        latent_downsample=(1, 1, 1),
        batches_per_epoch=4,
    )  # (two passes)
    keys = {m["key"] for b in dm.train_dataloader() for m in b["meta"]}
    assert keys == {"m0_s0_c0", "m2_s0_c0"} and dm.data_stats()["heldout"] >= 2


def test_shard_specs_paths_globs_braces_lists_pipes_and_fsspec(shards, tmp_path):
    d = shards / "shards"
    names = [str(d / f"train-{i:06d}.tar") for i in range(4)]
    assert expand_shards(str(d / "train-{000000..000003}.tar")) == names
    assert expand_shards(str(d / "train-*.tar")) == names
    assert expand_shards([names[0], str(d / "train-00000[1-3].tar")]) == names
    (tmp_path / "list.txt").write_text(
        "\n".join(names[:2]) + "\n# comment\n" + names[2] + "::" + names[3] + "\n"
    )
    assert expand_shards(str(tmp_path / "list.txt")) == names
    import fsspec

    fs = fsspec.filesystem("memory")
    for n in names:
        fs.pipe(f"/vd/{n.rsplit('/', 1)[1]}", open(n, "rb").read())
    assert expand_shards("memory:///vd/train-*.tar") == [f"memory:///vd/train-{i:06d}.tar" for i in range(4)]
    for spec in [f"pipe:cat {names[0]}", "memory:///vd/train-000000.tar", f"file://{names[0]}"]:
        dm = make(shards, train_shards=spec, batches_per_epoch=1)
        b = next(iter(dm.train_dataloader()))
        assert b["video"].shape[0] == 3 and {m["key"] for m in b["meta"]} <= {
            f"src{i:03d}_s0000_c00" for i in range(3)
        }


def test_shards_read_by_plain_webdataset(shards):
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(shards / "shards" / "train-000000.tar"), shardshuffle=False)))
    assert {"mp4", "json", "txt"} <= set(sample)
    with tarfile.open(shards / "shards" / "train-000000.tar") as tar:
        assert all("." in m.name.split("/")[-1] for m in tar)
    assert io.BytesIO(sample["mp4"]).read(12)[4:8] == b"ftyp"


def test_resampled_streaming_has_the_defined_epoch_length(shards):
    counts, keys = [], []
    for rank in range(2):
        dm = make(shards, resampled=True, batches_per_epoch=7, rank=rank, world_size=2, num_workers=2)
        batches = list(dm.train_dataloader())
        counts.append(len(batches))
        keys.append([m["key"] for b in batches for m in b["meta"]])
    assert counts == [4, 4]  # ceil(7 / 2) per rank
    assert keys[0] != keys[1]  # ranks draw different shards


def test_device_side_scaling_equals_loader_scaling(shards):
    dm = make(shards, frame_stride=2)
    on_host = list(dm.val_dataloader())
    loader = dm.val_dataloader()
    loader.normalize_on_device = True  # what the datamodule sets when the trainer has an accelerator
    wire = list(loader)
    assert wire[0]["video"].dtype == torch.uint8  # 4x less to move
    for a, b in zip(on_host, wire):
        assert torch.equal(a["video"], dm.on_after_batch_transfer(b, 0)["video"])
