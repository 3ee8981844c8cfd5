"""Reused shared-memory batch blocks: worker batches equal in-process ones, blocks come back."""

import gc
import time

import numpy as np
import torch

from datamodules import buffers
from datamodules.synthetic import clip_sample, encode_mp4, write_shards
from datamodules.video_shards import VideoShardsDataModule


def test_batches_through_reused_blocks_equal_in_process_batches(tmp_path):
    samples = [clip_sample(f"v{i:03d}_s0_c0", num_frames=6, height=24, width=32, fps=24.0) for i in range(30)]
    for i, s in enumerate(samples):  # every clip its own colour, so a batch written over another shows
        s["mp4"] = encode_mp4(np.full((6, 24, 32, 3), 8 * i, np.uint8), 24.0)
    write_shards(str(tmp_path / "val-%06d.tar"), samples, maxcount=5)

    def videos(workers, persistent=True):
        dm = VideoShardsDataModule(val_shards=str(tmp_path / "val-*.tar"), train_shards=str(tmp_path / "none-*.tar"),
                                   num_frames=4, height=16, width=16, batch_size=1, num_workers=workers,
                                   latent_downsample=(1, 1, 1), patch_size=(1, 2, 2),
                                   persistent_workers=persistent)  # fmt: skip
        loader = dm.val_dataloader()
        out = {}
        for batch in loader:  # to_unit in the iterator releases each block before the next batch
            assert (
                "_buffer" not in batch
                and batch["video"].is_contiguous()
                and batch["label"].dtype == torch.long
            )
            out[batch["meta"][0]["key"]] = batch["video"][0].clone()
            time.sleep(0.02 * workers)  # a slow consumer: workers run ahead into their next blocks
        return out, loader

    ref, _ = videos(0)
    got, loader = videos(2)
    assert len(ref) == 30 and got.keys() == ref.keys()
    assert len({round(float(v.mean()), 2) for v in ref.values()}) == 30
    for k in ref:  # 15 batches per worker through 6 slots: a block reused too early would show here
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)
    assert int(loader.dataset.blocks.flags.sum()) == 0  # every block given back
    for _ in range(3):  # passes left after one batch: what the workers had prefetched is reclaimed
        next(iter(loader))
    assert {k for b in loader for k in (m["key"] for m in b["meta"])} == ref.keys()
    assert int(loader.dataset.blocks.flags.sum()) == 0
    table_id = loader.dataset.blocks.id
    del loader
    gc.collect()
    assert table_id not in buffers._TABLES  # a loader's blocks go with it
    got, _ = videos(2, persistent=False)  # new workers every pass: blocks made again, same batches
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_a_batch_never_released_costs_only_its_slot():
    table = buffers.BlockTable(1)
    taken = [table.take(0, 100) for _ in range(buffers.SLOTS + 1)]
    assert taken[-1][1] is None and all(h[3] for _, h in taken[:-1])  # slots all held: one-off block
    flat, handle = taken[2]
    batch = buffers.attach({"video": buffers._Where.of(flat.view(4, 25)), "_buffer": list(handle)})
    buffers.release(batch)
    again, handle2 = table.take(0, 50)
    assert handle2[:3] == handle[:3] and not handle2[3] and again.numel() == 50  # the freed slot's block
    buffers.release(buffers.attach({"video": buffers._Where.of(again.view(2, 25)), "_buffer": list(handle2)}))
    grown, handle3 = table.take(0, 1000)
    assert handle3[:3] == handle[:3] and handle3[3] and grown.numel() == 1000  # too small: a new block


def test_a_block_held_raw_stays_claimed_until_its_views_die():
    table = buffers.BlockTable(1)
    flat, handle = table.take(0, 48, tag=buffers.pass_tag(0))
    batch = buffers.attach({"video": buffers._Where.of(flat.view(3, 16)), "_buffer": list(handle)})
    video = batch.pop("video")  # the consumer keeps the raw uint8 view, drops the batch
    del batch
    table.reclaim(buffers.pass_tag(1))  # a new pass: a block still viewed is not reclaimed
    assert int(table.flags[0, handle[2]]) != 0
    del video  # its last view dies: the block is free
    assert int(table.flags[0, handle[2]]) == 0
