"""What a conditional model is asked to generate when it is evaluated: labels and prompts per sample.

A class- or text-conditional checkpoint sampled without conditions (null class, empty caption)
is a different model from the one the papers score, so:

* `--labels` (real): the fakes' class histogram equals the WHOLE real set's (every usable video of
  the split, not only the clips selected for the statistics: StyleGAN-V's
  `compute_feature_stats_for_generator` draws each fake's label from a random video of the whole
  dataset, `dataset.get_label(np.random.randint(len(dataset)))`; Latte does the same). That is the
  same histogram in expectation; we allocate it exactly, largest remainder, then shuffle with the
  sampling seed. The pool is recorded as `label_source`. `--labels selected`: the histogram of the
  selected real clips only (with sorted-key selection on UCF-101 the first 2048 clips cover ~20
  classes: not what the papers do). `--labels uniform`: the same count per class (TATS: n // classes
  + 1 per class, then a random subset).
* `--prompts FILE` (one prompt per line) or `--prompts captions` (the selected real clips' captions),
  cycled over the samples in order.
* Sample i gets labels[i] / prompts[i]: conditions, like seeds, depend on the sample index only.

`describe_conditioning` builds the report's `conditioning` block; an unconditional run of a
conditional model sets `unconditional_run_of_conditional_model` and a warning.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

LABEL_MODES = ("real", "selected", "uniform")


def model_conditioning(model) -> dict:
    """What a `VideoDiffusion` is conditioned on: {"num_classes": K (0 = none), "text": bool}."""
    hp = getattr(model, "hparams", {})
    return {
        "num_classes": int(hp.get("num_classes", 0) or 0),
        "text": getattr(model, "text_encoder", None) is not None,
    }


def _shuffled(counts: dict[int, int], seed: int) -> list[int]:
    labels = np.array([c for c in sorted(counts) for _ in range(counts[c])], dtype=np.int64)
    return [int(x) for x in labels[np.random.RandomState(seed).permutation(len(labels))]]


def balanced_labels(real_labels: Sequence[int], n: int, *, seed: int = 0) -> list[int]:
    """`n` labels whose histogram is the real one scaled to n (exactly it when n == len(real)).

    Counts: floor(n * real_c / N), the remainder given one each to the classes with the largest
    fractional parts (ties: smaller class id); order: a seeded permutation.
    """
    if not real_labels:
        raise ValueError("no real labels to match")
    real = Counter(int(c) for c in real_labels)
    total = sum(real.values())
    exact = {c: n * k / total for c, k in real.items()}
    counts = {c: int(np.floor(v)) for c, v in exact.items()}
    left = n - sum(counts.values())
    for c in sorted(exact, key=lambda c: (-(exact[c] - counts[c]), c))[:left]:
        counts[c] += 1
    return _shuffled(counts, seed)


def uniform_labels(num_classes: int, n: int, *, seed: int = 0) -> list[int]:
    """`n` labels, n // K of each class and one more for the first n % K classes, seeded order."""
    if num_classes < 1:
        raise ValueError("uniform labels need a class-conditional model (num_classes > 0)")
    counts = {c: n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)}
    return _shuffled({c: k for c, k in counts.items() if k}, seed)


def read_prompts(path: str | Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise ValueError(f"--prompts {path}: no non-empty lines")
    return prompts


def cycled(items: Sequence, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def histogram(labels: Sequence[int] | None) -> dict[str, int] | None:
    if labels is None:
        return None
    return {str(c): k for c, k in sorted(Counter(int(x) for x in labels).items())}


def resolve(
    model: dict,
    *,
    labels: str | Sequence[int] | None,
    prompts: str | Sequence[str] | None,
    n: int,
    seed: int,
    real_labels: Sequence[int | None] | None = None,
    real_captions: Sequence[str | None] | None = None,
    real_keys: Sequence[str] | None = None,
    all_labels: Sequence[int | None] | None = None,
    all_keys: Sequence[str] | None = None,
    label_source: str | None = None,
) -> tuple[list[int] | None, list[str] | None, dict]:
    """Per-sample labels and captions for `n` fakes, and the report's `conditioning` block.

    real_labels / real_captions / real_keys: the selected real clips'.
    all_labels / all_keys: the labels of every usable video of the real set (the whole split), the
    pool of labels="real"; `label_source` describes it for the report (without it "real" falls
    back to the selected clips, and `label_source` says so).
    labels: None, "real" (the whole real set's histogram), "selected" (the selected real clips'
    histogram), "uniform", or an explicit list (cycled).
    prompts: None, "captions" (the real clips' captions), a file path, or an explicit list (cycled).
    """
    out_labels = out_captions = None
    pool = source = None
    if labels is not None:
        if model["num_classes"] < 1:
            raise ValueError(f"--labels {labels}: the checkpoint is not class-conditional (num_classes=0)")
        if labels in ("real", "selected"):
            if labels == "real" and all_labels is not None:
                pool, keys = all_labels, all_keys
                source = label_source or "every usable video of the real set"
            else:
                pool, keys = real_labels, real_keys
                source = "the selected real clips" + (
                    "" if labels == "selected" else " (the whole real set's labels were not given)"
                )
            missing = [k for k, y in zip(keys or [], pool or []) if y is None]
            if pool is None or missing or not pool:
                raise ValueError(
                    f"--labels {labels} needs a class label on every real clip of {source} (shards: a `.cls` "
                    f"member or the json's label field, see --label-field); missing on {missing[:3] or 'all'}"
                )
            out_labels = balanced_labels([int(y) for y in pool], n, seed=seed)
        elif labels == "uniform":
            out_labels = uniform_labels(model["num_classes"], n, seed=seed)
        elif isinstance(labels, str):
            raise ValueError(
                f"labels must be 'real', 'selected', 'uniform' or a list of ints, got {labels!r}"
            )
        else:
            out_labels = cycled([int(y) for y in labels], n)
        bad = sorted({y for y in out_labels if not 0 <= y < model["num_classes"]})
        if bad:
            raise ValueError(
                f"labels {bad[:5]} outside the checkpoint's classes 0..{model['num_classes'] - 1}"
            )
    if prompts is not None:
        if not model["text"]:
            raise ValueError("--prompts: the checkpoint has no text encoder (not text-conditional)")
        if prompts == "captions":
            caps = [c for c in (real_captions or []) if c]
            if real_captions is None or len(caps) != len(real_captions) or not caps:
                raise ValueError("--prompts captions needs a caption (.txt) on every selected real clip")
            out_captions, source = cycled(caps, n), "captions of the selected real clips"
        elif isinstance(prompts, str):
            out_captions, source = cycled(read_prompts(prompts), n), f"file {prompts}"
        else:
            out_captions, source = cycled(list(prompts), n), "list"
    conditional = model["num_classes"] > 0 or model["text"]
    mode = "+".join(
        m for m, on in (("class", out_labels is not None), ("text", out_captions is not None)) if on
    )
    info = {
        "mode": mode or "unconditional",
        "model": dict(model),
        "labels": None if labels is None else (labels if isinstance(labels, str) else "list"),
        "label_histogram": histogram(out_labels),
        "label_source": source,
        "label_pool_size": None if pool is None else len(pool),
        "real_label_histogram": histogram([y for y in pool if y is not None]) if pool else None,
        "selected_label_histogram": (
            histogram([y for y in real_labels if y is not None]) if real_labels else None
        ),
        "prompts": None if out_captions is None else source,
        "distinct_prompts": None if out_captions is None else len(set(out_captions)),
        "first_prompts": None if out_captions is None else out_captions[:3],
        "per_sample": "sample i gets labels[i] / prompts[i]" if mode else None,
        "unconditional_run_of_conditional_model": False,
    }
    missing = []
    if model["num_classes"] > 0 and out_labels is None:
        missing.append(
            f"class-conditional (num_classes={model['num_classes']}) but sampled with the null class"
        )
    if model["text"] and out_captions is None:
        missing.append("text-conditional but sampled with empty captions")
    if conditional and missing:
        info["unconditional_run_of_conditional_model"] = True
        info["warning"] = (
            "UNCONDITIONAL evaluation of a conditional checkpoint: "
            + "; ".join(missing)
            + ". Published conditional numbers sample with the dataset's conditions: pass --labels "
            "(real histogram) or --labels uniform, and/or --prompts FILE|captions."
        )
        warnings.warn(info["warning"], stacklevel=2)
    return out_labels, out_captions, info


def conditioned_generate(
    generate: Callable[..., torch.Tensor], labels: list[int] | None, captions: list[str] | None
) -> Callable[..., torch.Tensor]:
    """`generate(n, first_index=, ...)` that passes samples first_index.. their labels / captions."""
    if labels is None and captions is None:
        return generate

    def run(n, *, first_index=0, **kwargs):
        part = {}
        if labels is not None:
            part["labels"] = labels[first_index : first_index + n]
        if captions is not None:
            part["captions"] = captions[first_index : first_index + n]
        return generate(n, first_index=first_index, **part, **kwargs)

    return run
