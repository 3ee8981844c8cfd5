"""SyntheticVideoDataModule: the batch contract, determinism, packing budget and rank splitting."""

import torch
from jsonargparse import ArgumentParser
from torch.utils.data import DistributedSampler

from datamodules.synthetic import SyntheticVideoDataModule, make_video


def test_bucketed_batches_follow_the_contract():
    dm = SyntheticVideoDataModule(
        num_samples=10, num_frames=4, height=16, width=24, batch_size=4, num_classes=3
    )
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # ceil(10 / 4)
    assert sorted(len(b["caption"]) for b in batches) == [2, 4, 4]
    for b in batches:
        assert b["video"].shape[1:] == (3, 4, 16, 24) and b["video"].dtype == torch.float32
        assert b["video"].min() >= -1 and b["video"].max() <= 1 and b["video"].std() > 0.1
        assert b["label"].dtype == torch.long and set(b["label"].tolist()) <= {0, 1, 2}
        assert b["fps"].shape == (len(b["caption"]),) and all(c.startswith("a ") for c in b["caption"])
        assert all(m["frame_indices"] == [0, 1, 2, 3] for m in b["meta"])
    # the square moves: consecutive frames differ
    for b in batches:
        v = b["video"]  # (B, 3, T, H, W)
        assert ((v[:, :, 1:] - v[:, :, :-1]).abs().flatten(1).sum(1) > 0).all()


def test_same_seed_same_pixels_and_splits_differ():
    a = SyntheticVideoDataModule(num_samples=4, num_val_samples=4, batch_size=4)
    b = SyntheticVideoDataModule(num_samples=4, num_val_samples=4, batch_size=4)
    va, vb = next(iter(a.val_dataloader())), next(iter(b.val_dataloader()))
    assert torch.equal(va["video"], vb["video"]) and va["caption"] == vb["caption"]
    tr = next(iter(a.train_dataloader()))
    assert not torch.equal(tr["video"], va["video"])
    assert torch.equal(
        make_video(7, num_frames=3, height=8, width=8)[0], make_video(7, num_frames=3, height=8, width=8)[0]
    )


def test_label_sets_motion_direction_and_caption():
    _, cap_right = make_video(1, num_frames=2, height=8, width=8, label=0)
    _, cap_left = make_video(1, num_frames=2, height=8, width=8, label=1)
    assert "moving right" in cap_right and "moving left" in cap_left


def test_packed_mode_mixes_shapes_within_token_budget():
    dm = SyntheticVideoDataModule(
        num_samples=30,
        num_frames=8,
        height=32,
        width=32,
        mode="packed",
        tokens_per_batch=4096,
        patch_size=(1, 2, 2),
        latent_downsample=(1, 1, 1),
    )
    batches = list(dm.train_dataloader())
    seen, shapes = [], set()
    for b in batches:
        assert "videos" in b and "video" not in b
        assert b["shapes"].shape == (len(b["videos"]), 3)
        for v, s in zip(b["videos"], b["shapes"].tolist()):
            assert list(v.shape[1:]) == s and v.shape[0] == 3
            shapes.add(tuple(s))
        assert sum(dm.grid.tokens(*s) for s in b["shapes"].tolist()) <= 4096
        seen += [m["key"] for m in b["meta"]]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 30
    assert len(shapes) >= 4 and any(s[0] == 1 for s in shapes)  # images mixed in


def test_two_ranks_get_disjoint_whole_batches_in_equal_counts():
    dm = SyntheticVideoDataModule(num_samples=21, batch_size=4, height=8, width=8, num_frames=2)
    ds = dm.train_dataloader().dataset  # 6 batches
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        per_rank.append([k for i in sampler for k in (m["key"] for m in ds[i]["meta"])])
    assert (
        len(list(DistributedSampler(ds, num_replicas=2, rank=0)))
        == len(list(DistributedSampler(ds, num_replicas=2, rank=1)))
        == 3
    )
    assert not set(per_rank[0]) & set(per_rank[1])


def test_constructor_is_cli_configurable():
    parser = ArgumentParser()
    parser.add_class_arguments(SyntheticVideoDataModule, "data")
    cfg = parser.parse_args(
        ["--data.mode=packed", "--data.tokens_per_batch=512", "--data.shapes=[[4,16,16]]"]
    )
    init = parser.instantiate_classes(cfg)
    assert init.data.hparams.mode == "packed" and init.data.shapes == [(4, 16, 16)]
