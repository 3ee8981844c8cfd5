"""Near-duplicate clips (issue 3, item 8): CLIP-embedding cosine, or a perceptual hash of the
frames when captioning is off; keep the better clip of each group and record what was dropped.

Grouping is greedy in a fixed order, like non-maximum suppression: clips are visited best first
(higher `quality`, then smaller key); a clip is kept unless it duplicates a clip already kept, in
which case it is dropped in favour of the best such kept clip. So a dropped clip is never anyone's
`kept`, and the result depends only on the set of items, not on their order.

Written with numpy (blocked matrix products over the upper triangle) rather than a library index:
the whole comparison is one dense similarity pass, about a second for 10k clips on one core.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.fft import dctn

from curation.config import DedupConfig  # the schema lives with the others

_BLOCK = 2048  # rows per similarity block: (2048, N) float32 stays small for N in the 100k range


def phash(frames: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a clip: grayscale mean of its frames at 32x32, the 8x8
    lowest DCT frequencies thresholded at their median. frames: uint8 (K, H, W, 3) RGB."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"phash needs frames (K, H, W, 3) with K >= 1, got shape {frames.shape}")
    gray = frames.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])  # (K, H, W)
    small = cv2.resize(gray.mean(0), (32, 32), interpolation=cv2.INTER_AREA)  # (32, 32)
    low = dctn(small.astype(np.float64), type=2, norm="ortho")[:8, :8]  # (8, 8)
    bits = (low > np.median(low)).ravel()  # (64,)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def _bits(hashes: list[int]) -> np.ndarray:
    """(N, 64) float32 0/1 matrix of 64-bit hashes."""
    h = np.array([int(x) & ((1 << 64) - 1) for x in hashes], dtype=np.uint64)
    return ((h[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(np.float32)


def _embeddings(items: list[dict]) -> np.ndarray:
    e = np.stack([np.asarray(it["embedding"], np.float32).ravel() for it in items])  # (N, D)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norms, 1e-12)


def _greedy(n: int, block_neighbours) -> dict[int, int]:
    """NMS over items 0..n-1 (already in visiting order); block_neighbours(b0, b1) gives the
    boolean (b1 - b0, n) duplicate matrix of rows b0..b1. Returns {dropped index: kept index}."""
    dropped: dict[int, int] = {}
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        adj = block_neighbours(b0, b1)  # (b1 - b0, n) bool
        for i in range(b0, b1):
            if i in dropped:
                continue
            for j in np.flatnonzero(adj[i - b0, i + 1 :]) + i + 1:
                dropped.setdefault(int(j), i)  # the first (best) kept neighbour wins
    return dropped


def find_duplicates(items: list[dict], cfg: DedupConfig) -> dict[str, str]:
    """{dropped key: kept key} for near-duplicate items {"key", "embedding", "phash", "quality"}.

    Uses embeddings (cosine >= cfg.cosine_threshold) when every item has one (method auto or
    embedding), else perceptual hashes (Hamming <= cfg.hamming_threshold) among the items that
    have one. Higher quality is kept (NaN/None count as lowest); ties go to the smaller key.
    """
    if cfg.method not in ("auto", "embedding", "phash"):
        raise ValueError(f"dedup.method={cfg.method!r}: use auto, embedding or phash")
    if not cfg.enabled or len(items) < 2:
        return {}
    keys = [it["key"] for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("find_duplicates: item keys must be unique")

    def rank(it: dict) -> tuple:
        q = it.get("quality")
        q = float("-inf") if q is None or not np.isfinite(q) else float(q)
        return (-q, it["key"])

    have_emb = all(it.get("embedding") is not None for it in items)
    if cfg.method == "embedding" and not have_emb:
        missing = next(it["key"] for it in items if it.get("embedding") is None)
        raise ValueError(
            f"dedup.method=embedding but clip {missing!r} has no CLIP embedding (captioning off?); "
            "use dedup.method=auto or phash"
        )
    if have_emb and cfg.method != "phash":
        items = sorted(items, key=rank)
        e = _embeddings(items)  # (N, D)
        thr = np.float32(cfg.cosine_threshold) - np.float32(1e-6)  # float32 rounding of exact copies

        def neighbours(b0: int, b1: int) -> np.ndarray:
            return (e[b0:b1] @ e.T) >= thr  # (b, N)

    else:
        items = sorted((it for it in items if it.get("phash") is not None), key=rank)
        if len(items) < 2:
            return {}
        bits = _bits([it["phash"] for it in items])  # (N, 64)
        ones = bits.sum(1)  # (N,)

        def neighbours(b0: int, b1: int) -> np.ndarray:
            # hamming(a, b) = |a| + |b| - 2 a.b on 0/1 vectors; exact in float32 (<= 64)
            ham = ones[b0:b1, None] + ones[None, :] - 2.0 * (bits[b0:b1] @ bits.T)  # (b, N)
            return ham <= cfg.hamming_threshold + 0.5

    pairs = _greedy(len(items), neighbours)
    return {items[j]["key"]: items[i]["key"] for j, i in sorted(pairs.items())}


def mark_duplicates(clips: list[dict], embeddings: dict, calibrated: bool, cfg: DedupConfig) -> None:
    """Drop near-duplicates among the kept clip rows (stage `dedup`, `duplicate_of` set)."""
    for c in clips:
        c["duplicate_of"] = None
    kept = [c for c in clips if c["kept"]]
    if not cfg.enabled or not kept:
        return
    items = [
        {
            "key": c["key"],
            # random CLIP weights give meaningless cosines (they merged distinct clips): use phash
            "embedding": embeddings.get(c["key"]) if calibrated else None,
            "phash": c.get("phash"),
            "quality": c["clip_score"] if c["clip_score"] is not None else c["duration"],
        }
        for c in kept
    ]
    dropped = find_duplicates(items, cfg)
    for c in kept:
        if c["key"] in dropped:
            c.update(
                kept=False,
                stage="dedup",
                reason=f"near-duplicate of {dropped[c['key']]}",
                duplicate_of=dropped[c["key"]],
            )
