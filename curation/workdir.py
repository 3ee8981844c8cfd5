"""OUT/work/<source_id>/: what one source's stages leave behind, and atomic writes.

record.json      the per-source completion record (written last: its presence seals the source)
clips/<key>.mp4  extracted clips
frames/<key>.jpg the K frames per kept clip for the captioner and the perceptual hash (a strip)
captions.json    captions of the kept clips (+ emb.npz, their float16 CLIP embeddings)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write then rename: a reader (or a rerun after SIGKILL) sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def work_dir(out: Path, source_id: str) -> Path:
    return out / "work" / source_id


def load_caption_frames(wd: Path, row: dict) -> np.ndarray:
    """(K, H, W, 3) uint8 RGB frames saved for the captioner."""
    from curation.analysis import decode_jpeg

    strip = decode_jpeg((wd / "frames" / f"{row['key']}.jpg").read_bytes())
    k = row.get("caption_frames", 1)
    w = strip.shape[1] // k
    return np.stack([strip[:, i * w : (i + 1) * w] for i in range(k)])
