"""Near-duplicate removal (curation/dedup.py): perceptual hash and greedy best-first grouping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation.dedup import DedupConfig, find_duplicates, phash


def _scene(seed: int, k: int = 4, h: int = 72, w: int = 128) -> np.ndarray:
    """Frames of a random blocky scene (distinct per seed): uint8 (K, H, W, 3)."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0, 255, (6, 8, 3))
    img = np.repeat(np.repeat(blocks, h // 6, 0), w // 8, 1)  # (H, W, 3)
    return np.stack([np.roll(img, i, axis=1) for i in range(k)]).clip(0, 255).astype(np.uint8)


def _noisy(frames: np.ndarray, seed: int, sigma: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (frames + rng.normal(0, sigma, frames.shape)).clip(0, 255).astype(np.uint8)


def _hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_phash_is_64_bit_stable_under_noise_and_separates_scenes():
    scenes = [_scene(s) for s in range(12)]
    hashes = [phash(f) for f in scenes]
    assert all(isinstance(h, int) and 0 <= h < 1 << 64 for h in hashes)
    assert phash(scenes[0]) == hashes[0]  # deterministic
    for s, f in enumerate(scenes):
        assert _hamming(phash(_noisy(f, seed=100 + s)), hashes[s]) <= 4
        # re-encoded / rescaled copies keep their hash too
        half = f[:, ::2, ::2]
        assert _hamming(phash(half), hashes[s]) <= 4
    distances = [_hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) > 4, "distinct scenes must not look like duplicates"
    assert 20 <= np.mean(distances) <= 44  # roughly half the bits differ between unrelated scenes


def test_phash_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(K, H, W, 3\)"):
        phash(np.zeros((8, 8, 3), np.uint8))


def _phash_items(n_scenes: int = 6) -> tuple[list[dict], dict[str, str]]:
    """Scenes with an exact copy and a noisy copy each; the expected {dropped: kept}."""
    items, expected = [], {}
    for s in range(n_scenes):
        f = _scene(s)
        base = {"key": f"s{s}_a", "embedding": None, "phash": phash(f), "quality": 1.0 + s}
        copy = {"key": f"s{s}_b", "embedding": None, "phash": phash(f), "quality": 0.5 + s}
        near = {"key": f"s{s}_c", "embedding": None, "phash": phash(_noisy(f, s)), "quality": 0.7 + s}
        items += [base, copy, near]
        expected[f"s{s}_b"] = f"s{s}_a"
        expected[f"s{s}_c"] = f"s{s}_a"
    return items, expected


def test_phash_duplicates_exact_and_noisy_copies_keep_the_best():
    items, expected = _phash_items()
    assert find_duplicates(items, DedupConfig()) == expected


def test_result_does_not_depend_on_input_order():
    items, expected = _phash_items()
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [items[i] for i in rng.permutation(len(items))]
        assert find_duplicates(shuffled, DedupConfig()) == expected


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_embedding_cosine_threshold_and_ties_by_key():
    rng = np.random.default_rng(1)
    d = 64
    a = _unit(rng.normal(size=d))
    noise = _unit(rng.normal(size=d) - (rng.normal(size=d) @ a) * a)
    near = _unit(a + 0.1 * noise)  # cosine ~0.995
    far = _unit(a - 0.3 * noise)  # cosine ~0.958 to a, ~0.92 to near
    items = [
        {"key": "x2", "embedding": a.astype(np.float16), "phash": None, "quality": 0.3},
        {"key": "x1", "embedding": a.astype(np.float16), "phash": None, "quality": 0.3},  # tie: x1 kept
        {"key": "x3", "embedding": near, "phash": None, "quality": 0.9},  # better: it is kept
        {"key": "x4", "embedding": far, "phash": None, "quality": 0.1},
        {"key": "y", "embedding": _unit(rng.normal(size=d)), "phash": None, "quality": 0.0},
    ]
    assert float(near @ a) > 0.98 > float(far @ a)
    assert find_duplicates(items, DedupConfig()) == {"x1": "x3", "x2": "x3"}
    items[2]["quality"] = 0.3  # now x1, x2, x3 tie; the smallest key wins
    assert find_duplicates(items, DedupConfig()) == {"x2": "x1", "x3": "x1"}
    assert find_duplicates(items, DedupConfig(cosine_threshold=0.9)) == {"x2": "x1", "x3": "x1", "x4": "x1"}
    assert find_duplicates(items, DedupConfig(enabled=False)) == {}


def test_chains_never_drop_in_favour_of_a_dropped_clip():
    # a ~ b and b ~ c, but a !~ c: b goes with a (the better), c survives on its own
    def at(deg: float) -> np.ndarray:  # unit vectors in one plane: cos 10 deg = 0.985, cos 20 deg = 0.94
        return np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg)), 0.0, 0.0])

    a, b, c = at(0), at(10), at(20)
    assert b @ a > 0.98 and b @ c > 0.98 and a @ c < 0.98
    items = [
        {"key": k, "embedding": v, "phash": None, "quality": q}
        for k, v, q in (("a", a, 3.0), ("b", b, 2.0), ("c", c, 1.0))
    ]
    assert find_duplicates(items, DedupConfig()) == {"b": "a"}
    items[1]["quality"] = 5.0  # b best: it absorbs both neighbours
    assert find_duplicates(items, DedupConfig()) == {"a": "b", "c": "b"}


def test_falls_back_to_phash_when_an_embedding_is_missing_and_handles_none_quality():
    items, expected = _phash_items(2)
    items[0]["embedding"] = np.ones(4)  # only some embeddings: hashes decide
    for it in items:
        if it["key"].endswith("_a"):
            it["quality"] = None  # None / NaN rank lowest
    got = find_duplicates(items, DedupConfig())
    assert set(got) | set(got.values()) == {it["key"] for it in items}
    assert all(v not in got for v in got.values())
    assert {k[:2] for k in got} == {v[:2] for v in got.values()} == {"s0", "s1"}
    assert (
        find_duplicates([{"key": "k", "embedding": None, "phash": None, "quality": 1}], DedupConfig()) == {}
    )


def test_ten_thousand_clips_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    n, d = 10_000, 64
    base = rng.normal(size=(n // 2, d))
    e = np.concatenate([base, base[: n // 2] + rng.normal(0, 0.02, size=(n // 2, d))])  # half are near-copies
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    quality = rng.uniform(size=n)
    items = [
        {
            "key": f"k{i:05d}",
            "embedding": e[i].astype(np.float16),
            "phash": None,
            "quality": float(quality[i]),
        }
        for i in range(n)
    ]
    got = find_duplicates(items, DedupConfig())
    # reference: plain pairwise loop over the expected near-copy pairs (random vectors in 64-d
    # are far apart, so only i <-> i + n/2 pairs can reach 0.98)
    expected = {}
    for i in range(n // 2):
        j = i + n // 2
        cos = float(
            _unit(e[i].astype(np.float16).astype(np.float32))
            @ _unit(e[j].astype(np.float16).astype(np.float32))
        )
        if cos >= 0.98:
            lo, hi = sorted((i, j), key=lambda t: (-quality[t], f"k{t:05d}"))
            expected[f"k{hi:05d}"] = f"k{lo:05d}"
    assert len(expected) > n // 4
    assert got == dict(sorted(expected.items()))


def test_method_forces_phash_or_embeddings():
    items, expected = _phash_items(2)
    rng = np.random.default_rng(3)
    for it in items:
        it["embedding"] = rng.normal(size=16)  # unrelated embeddings: no embedding duplicates
    assert find_duplicates(items, DedupConfig()) == {}
    assert find_duplicates(items, DedupConfig(method="phash")) == expected
    items[0]["embedding"] = None
    with pytest.raises(ValueError, match="dedup.method=embedding"):
        find_duplicates(items, DedupConfig(method="embedding"))
    with pytest.raises(ValueError, match="use auto, embedding or phash"):
        find_duplicates(items, DedupConfig(method="clip"))
