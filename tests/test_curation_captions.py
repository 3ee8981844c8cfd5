"""CLIP recaptioning (curation/captions.py) with a tiny random-init open_clip model saved to a temp
file and loaded back through `caption.pretrained=<path>`, like a user's own checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curation import captions
from curation.captions import CaptionConfig, Captioner, CaptionWeightsError, check_weights, save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def captioner(tiny):
    return Captioner(CaptionConfig(**tiny))


def _clip(seed: int, k: int = 4, h: int = 48, w: int = 80) -> np.ndarray:
    """A clip of K frames: a coloured gradient that drifts, plus a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(k):
        grad = (xx + 3 * i) / w * 255 * rng.uniform(0.3, 1.0) + yy / h * 64
        img = np.stack([grad * (c / 255) for c in base], -1) + rng.normal(0, 8, (h, w, 3))
        frames.append(np.clip(img, 0, 255))
    return np.stack(frames).astype(np.uint8)  # (K, H, W, 3)


def _items(n: int, **extra) -> list[dict]:
    return [
        {"key": f"clip{i:02d}", "frames": _clip(i), "source_caption": None, "motion": {}, **extra}
        for i in range(n)
    ]


def test_embeddings_are_unit_float16_means_of_frame_embeddings(captioner):
    items = _items(3)
    results = captioner.caption_clips(items)
    assert [r["key"] for r in results] == [it["key"] for it in items]
    for it, r in zip(items, results):
        emb = r["embedding"]
        assert emb.dtype == np.float16 and emb.shape == (captioner.embed_dim,) == (32,)
        assert np.linalg.norm(emb.astype(np.float32)) == pytest.approx(1.0, abs=2e-3)
        # equivalence: mean of the per-frame normalised embeddings, re-normalised
        per_frame = captioner.embed([it["frames"][i : i + 1] for i in range(len(it["frames"]))])  # (K, D)
        expected = per_frame.mean(0) / np.linalg.norm(per_frame.mean(0))
        np.testing.assert_allclose(emb.astype(np.float32), expected, atol=2e-3)


def test_batching_and_reloading_are_deterministic(tiny, captioner):
    items = _items(4)
    a = captioner.caption_clips(items)
    b = Captioner(CaptionConfig(**tiny, batch_size=3)).caption_clips(items[::-1])[::-1]  # fresh load
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and x["caption"] == y["caption"]
        assert x["caption_origin"] == y["caption_origin"]
        assert x["clip_score"] == pytest.approx(y["clip_score"], abs=1e-5)
        np.testing.assert_allclose(
            x["embedding"].astype(np.float32), y["embedding"].astype(np.float32), atol=1e-3
        )
        assert [c["text"] for c in x["caption_candidates"]] == [c["text"] for c in y["caption_candidates"]]


def test_candidates_are_complete_ranked_and_scored_by_cosine(captioner):
    (r,) = captioner.caption_clips(_items(1, source_caption="a red square on a plain background"))
    cands = r["caption_candidates"]
    origins = [c["origin"] for c in cands]
    assert origins.count("source") == 1
    # top-2 subjects x top-2 actions x top-2 scenes x top-1 camera term (vocabulary.yaml)
    assert origins.count("retrieval") == 8
    assert "coca" not in origins  # not a CoCa model
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert (r["caption"], r["caption_origin"], r["clip_score"]) == (
        cands[0]["text"],
        cands[0]["origin"],
        scores[0],
    )
    texts = [c["text"] for c in cands]
    expected = captioner.encode_texts(texts) @ captioner.embed([_clip(0)])[0]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # every retrieval sentence is built from vocabulary phrases
    vocab = captioner.vocab
    for c in cands:
        if c["origin"] == "retrieval":
            assert any(c["text"].startswith(s) for s in vocab["subjects"])
            assert any(s in c["text"] for s in vocab["scenes"])


@pytest.mark.parametrize(
    ("mean", "kind"), [(0.01, "static"), (0.1, "slow"), (0.9, "fast"), (None, None), (float("nan"), None)]
)
def test_motion_scores_add_a_motion_phrase(captioner, mean, kind):
    motion = {} if mean is None else {"motion_mean": mean, "motion_peak": 1.0}
    (r,) = captioner.caption_clips(_items(1, motion=motion))
    phrases = captioner.vocab["motion"]
    for c in r["caption_candidates"]:
        present = [k for k, p in phrases.items() if c["text"].endswith(p)]
        assert present == ([kind] if kind else [])


def test_source_caption_wins_exactly_when_it_scores_highest(captioner):
    clip = _clip(7)
    (plain,) = captioner.caption_clips([{"key": "k", "frames": clip, "source_caption": None, "motion": {}}])
    assert plain["caption_origin"] == "retrieval"
    best_retrieval = plain["clip_score"]
    # score a pool of phrases against this clip; pick one above and one below the retrieval winner
    pool = [f"{s} {a}" for s in captioner.vocab["subjects"] for a in captioner.vocab["actions"][:6]]
    scores = captioner.encode_texts(pool) @ captioner.embed([clip])[0]
    above, below = pool[int(np.argmax(scores))], pool[int(np.argmin(scores))]
    assert scores.max() > best_retrieval > scores.min(), "the pool must bracket the retrieval score"

    (win,) = captioner.caption_clips([{"key": "k", "frames": clip, "source_caption": above, "motion": {}}])
    assert (win["caption"], win["caption_origin"]) == (above, "source")
    assert win["clip_score"] == pytest.approx(float(scores.max()), abs=1e-5)

    (lose,) = captioner.caption_clips([{"key": "k", "frames": clip, "source_caption": below, "motion": {}}])
    assert lose["caption_origin"] == "retrieval" and lose["caption"] == plain["caption"]
    assert {"text": below, "origin": "source"}.items() <= lose["caption_candidates"][-1].items()


def test_random_weights_are_marked_uncalibrated(tiny, tmp_path, captioner):
    assert captioner.calibrated is False and captioner.info()["calibrated"] is False
    assert all(r["calibrated"] is False for r in captioner.caption_clips(_items(2)))
    # the same tiny model with a trained-looking logit scale (CLIP trains it towards log 100)
    state = torch.load(tiny["pretrained"])
    state["logit_scale"] = torch.tensor(math.log(100.0))
    torch.save(state, tmp_path / "trained.pt")
    trained = Captioner(CaptionConfig(model=tiny["model"], pretrained=str(tmp_path / "trained.pt")))
    assert trained.calibrated is True


def test_missing_checkpoint_fails_before_any_model_is_built(monkeypatch, tmp_path, tiny):
    def boom(*a, **k):
        raise AssertionError("a model was built although the weights are missing")

    monkeypatch.setattr("open_clip.create_model", boom)
    missing = tmp_path / "nowhere" / "clip.pt"
    cfg = CaptionConfig(model=tiny["model"], pretrained=str(missing))
    with pytest.raises(CaptionWeightsError) as e:
        Captioner(cfg)
    msg = str(e.value)
    assert (
        str(missing) in msg and "caption.pretrained=/path/to/ckpt" in msg and "caption.enabled=false" in msg
    )
    check_weights(CaptionConfig(model=tiny["model"], pretrained=str(missing), enabled=False))  # off: fine


def test_pretrained_tag_offline_and_not_cached_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = CaptionConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))
    with pytest.raises(CaptionWeightsError) as e:
        check_weights(cfg)
    msg = str(e.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "open_clip_pytorch_model.bin" in msg
    assert "caption.pretrained=/path/to/ckpt" in msg and "caption.enabled=false" in msg


def test_pretrained_tag_found_in_the_offline_cache_passes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors").write_bytes(b"weights")
    check_weights(CaptionConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path)))


@pytest.mark.parametrize(
    ("model", "pretrained", "needle"),
    [
        ("ViT-B-32", "no_such_tag", "known tags"),
        ("No-Such-Arch", "laion2b_s34b_b79k", "caption.model='No-Such-Arch'"),
        ("/missing/arch.json", "x.pt", "model-config file not found"),
        ("ViT-B-32", "", "caption.pretrained is empty"),
    ],
)
def test_bad_model_or_tag_is_explained(model, pretrained, needle):
    with pytest.raises(CaptionWeightsError, match="caption.enabled=false") as e:
        check_weights(CaptionConfig(model=model, pretrained=pretrained))
    assert needle in str(e.value)


def test_custom_vocabulary_is_used(tiny, tmp_path):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("template: '{subject} {scene}'\nsubjects: [a zebra, a kite]\nscenes: [at dawn]\n")
    cap = Captioner(CaptionConfig(**tiny, vocabulary=str(vocab)))
    (r,) = cap.caption_clips(_items(1))
    assert sorted(c["text"] for c in r["caption_candidates"]) == ["a kite at dawn", "a zebra at dawn"]


def test_bad_frames_are_rejected_with_their_shape(captioner):
    with pytest.raises(ValueError, match=r"uint8 \(K, H, W, 3\)"):
        captioner.caption_clips([{"key": "k", "frames": np.zeros((2, 8, 8), np.uint8), "motion": {}}])


def test_vocabulary_is_encoded_once_and_the_text_cache_is_bounded(tiny, monkeypatch):
    cap = Captioner(CaptionConfig(**tiny))
    encoded = []
    real = cap.model.encode_text
    monkeypatch.setattr(cap.model, "encode_text", lambda tokens: encoded.append(len(tokens)) or real(tokens))
    items = _items(2)
    first = cap.caption_clips(items)
    vocab_size = sum(len(cap.vocab[k]) for k in ("subjects", "actions", "scenes", "camera"))
    assert sum(encoded) >= vocab_size
    encoded.clear()
    again = cap.caption_clips(items)
    assert sum(encoded) == 0  # phrases and composed sentences come from the caches
    assert [r["caption_candidates"] for r in again] == [r["caption_candidates"] for r in first]

    monkeypatch.setattr(captions, "_TEXT_CACHE_SIZE", 5)
    texts = [f"text number {i}" for i in range(12)]
    bounded = cap.encode_texts(texts)
    assert len(cap._text_cache) <= 5
    np.testing.assert_allclose(bounded, cap.encode_texts(texts), atol=1e-6)


def test_empty_batch(captioner):
    assert captioner.caption_clips([]) == []


# CoCa: the tiny CoCa builds cheaply; open_clip's CoCa.generate needs `transformers` (< 5 with
# open_clip 3.3, which in turn needs huggingface_hub < 1), absent from the default environment.
_HAS_GENERATE = captions._coca_generation_available()


@pytest.fixture(scope="module")
def tiny_coca(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_coca"), coca=True, seed=0)


@pytest.mark.skipif(_HAS_GENERATE, reason="transformers is installed: generation is tested instead")
def test_coca_without_transformers_fails_early_or_scores_only(tiny_coca):
    with pytest.raises(CaptionWeightsError, match="transformers.*caption.coca=false"):
        check_weights(CaptionConfig(**tiny_coca))
    cap = Captioner(CaptionConfig(**tiny_coca, coca=False))
    assert cap.is_coca and cap.info()["coca"] is False
    (r,) = cap.caption_clips(_items(1))
    assert {c["origin"] for c in r["caption_candidates"]} == {"retrieval"}


@pytest.mark.skipif(not _HAS_GENERATE, reason="CoCa generation needs transformers<5 (not installed)")
def test_coca_model_adds_a_generated_candidate(tiny_coca):
    cap = Captioner(CaptionConfig(**tiny_coca, coca_seq_len=8))
    assert cap.info()["coca"] is True
    results = cap.caption_clips(_items(2))
    for r in results:
        assert [c["origin"] for c in r["caption_candidates"]].count("coca") <= 1
    assert any(c["origin"] == "coca" for r in results for c in r["caption_candidates"])


@pytest.mark.gpu
def test_cuda_autocast_matches_cpu(tiny):
    items = _items(3, source_caption="a red square on a plain background")
    cpu = Captioner(CaptionConfig(**tiny, device="cpu")).caption_clips(items)
    cap = Captioner(CaptionConfig(**tiny, device="auto"))
    assert cap.device.type == "cuda"  # auto picks cuda when there is one
    gpu = cap.caption_clips(items)
    for a, b in zip(cpu, gpu):
        ea, eb = a["embedding"].astype(np.float32), b["embedding"].astype(np.float32)
        assert float(ea @ eb) > 0.99  # bf16 autocast vs float32
        assert abs(a["clip_score"] - b["clip_score"]) < 0.05
