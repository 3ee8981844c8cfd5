"""Conditions for evaluation samples: label histograms, prompts, and the loud unconditional case."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lightning_modules.metrics.conditioning import (
    balanced_labels,
    conditioned_generate,
    resolve,
    uniform_labels,
)

CLASS = {"num_classes": 4, "text": False}
TEXT = {"num_classes": 0, "text": True}


def test_balanced_labels_reproduce_the_real_histogram():
    real = [0, 0, 0, 1, 3, 3]  # {0: 3, 1: 1, 3: 2}
    assert Counter(balanced_labels(real, 6, seed=0)) == Counter(real)
    assert Counter(balanced_labels(real, 12, seed=0)) == {0: 6, 1: 2, 3: 4}
    # 5 of 6: exact shares 2.5, 0.83, 1.67 -> floors 2, 0, 1, the 2 left to the largest remainders (1, 3)
    assert Counter(balanced_labels(real, 5, seed=0)) == {0: 2, 1: 1, 3: 2}
    a, b = balanced_labels(real, 6, seed=0), balanced_labels(real, 6, seed=1)
    assert a != b and sorted(a) == sorted(b)  # the seed moves the order only


def test_uniform_labels():
    assert Counter(uniform_labels(4, 10, seed=0)) == {0: 3, 1: 3, 2: 2, 3: 2}
    with pytest.raises(ValueError, match="class-conditional"):
        uniform_labels(0, 4)


def test_resolve_records_the_mode_and_refuses_what_the_model_cannot_take(tmp_path):
    labels, caps, info = resolve(
        CLASS, labels="real", prompts=None, n=4, seed=0, real_labels=[1, 1, 2, 2], real_keys=list("abcd")
    )
    assert Counter(labels) == {1: 2, 2: 2} and caps is None
    assert info["mode"] == "class" and info["label_histogram"] == info["real_label_histogram"] == {
        "1": 2,
        "2": 2,
    }
    with pytest.raises(ValueError, match="missing on"):
        resolve(CLASS, labels="real", prompts=None, n=4, seed=0, real_labels=[1, None], real_keys=["a", "b"])
    with pytest.raises(ValueError, match="outside the checkpoint's classes"):
        resolve(CLASS, labels="real", prompts=None, n=2, seed=0, real_labels=[7, 7], real_keys=["a", "b"])
    with pytest.raises(ValueError, match="not class-conditional"):
        resolve(TEXT, labels="uniform", prompts=None, n=2, seed=0)
    with pytest.raises(ValueError, match="no text encoder"):
        resolve(CLASS, labels="uniform", prompts="captions", n=2, seed=0)
    file = tmp_path / "prompts.txt"
    file.write_text("a dog\n\na cat\n")
    _, caps, info = resolve(TEXT, labels=None, prompts=str(file), n=5, seed=0)
    assert caps == ["a dog", "a cat", "a dog", "a cat", "a dog"] and info["mode"] == "text"
    _, caps, info = resolve(TEXT, labels=None, prompts="captions", n=3, seed=0, real_captions=["x", "y"])
    assert caps == ["x", "y", "x"] and info["prompts"] == "captions of the selected real clips"


def test_an_unconditional_run_of_a_conditional_model_is_loud():
    with pytest.warns(UserWarning, match="UNCONDITIONAL evaluation of a conditional checkpoint"):
        labels, caps, info = resolve(CLASS, labels=None, prompts=None, n=4, seed=0)
    assert labels is None and info["unconditional_run_of_conditional_model"] is True
    assert info["mode"] == "unconditional" and "null class" in info["warning"]
    _, _, info = resolve({"num_classes": 0, "text": False}, labels=None, prompts=None, n=4, seed=0)
    assert info["unconditional_run_of_conditional_model"] is False and "warning" not in info


def test_conditions_follow_the_sample_index_not_the_batch():
    seen = []

    def generate(n, *, first_index=0, labels=None, captions=None, **kw):
        seen.append((first_index, list(labels), list(captions)))
        return torch.zeros(n)

    run = conditioned_generate(generate, [5, 6, 7, 8, 9], list("abcde"))
    run(2, first_index=0)
    run(3, first_index=2)
    assert seen == [(0, [5, 6], ["a", "b"]), (2, [7, 8, 9], ["c", "d", "e"])]
