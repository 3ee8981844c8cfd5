"""Fréchet distance and streaming statistics vs a plain scipy reference (issue 6, Validation)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_modules.metrics.frechet import GaussianStats, frechet_distance, stats_distance

D = 400


def reference_fd(x: np.ndarray, y: np.ndarray, *, ddof: int) -> float:
    """The textbook formula on float64 features with scipy.linalg.sqrtm (StyleGAN-V / pytorch-fid style)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    c1, c2 = np.cov(x, rowvar=False, ddof=ddof), np.cov(y, rowvar=False, ddof=ddof)
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.real(np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2.0 * covmean)))


def features(n: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, D))
    if kind == "random":
        return z + 0.1 * seed
    # ill-conditioned: correlated columns with scales spanning 8 orders of magnitude
    mix = np.eye(D) + 0.05 * rng.standard_normal((D, D))
    return (z @ mix) * np.logspace(-4, 4, D) + seed


@pytest.mark.parametrize("n", [128, 256, 2048])
@pytest.mark.parametrize("kind", ["random", "ill_conditioned"])
@pytest.mark.parametrize("sqrtm", ["scipy", "eig"])
def test_matches_scipy_reference(n, kind, sqrtm):
    x, y = features(n, kind, 1), features(n, kind, 2)
    for divisor, ddof in (("N", 0), ("N-1", 1)):
        ours = stats_distance(
            GaussianStats(D).update(x), GaussianStats(D).update(y), divisor=divisor, sqrtm=sqrtm
        )
        ref = reference_fd(x, y, ddof=ddof)
        assert abs(ours - ref) <= 1e-6 * abs(ref), (ours, ref)


def test_scipy_and_eig_square_roots_agree():
    x, y = features(256, "ill_conditioned", 3), features(256, "ill_conditioned", 4)
    a, b = GaussianStats(D).update(x), GaussianStats(D).update(y)
    s, e = stats_distance(a, b, sqrtm="scipy"), stats_distance(a, b, sqrtm="eig")
    assert abs(s - e) <= 1e-6 * abs(s)


def test_analytic_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(D), rng.standard_normal(D)
    v1, v2 = rng.uniform(0.1, 5.0, D), rng.uniform(0.1, 5.0, D)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    for method in ("scipy", "eig"):
        got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), sqrtm=method)
        assert got == pytest.approx(expected, rel=1e-10)


def test_distance_to_itself_is_zero():
    x = features(2048, "random", 5)
    s = GaussianStats(D).update(x)
    scale = np.trace(s.cov())
    for method in ("scipy", "eig"):
        assert abs(stats_distance(s, s, sqrtm=method)) <= 1e-8 * scale


def test_invariant_to_sample_order_and_argument_order():
    x, y = features(512, "random", 6), features(512, "random", 7)
    a, b = GaussianStats(D).update(x), GaussianStats(D).update(y)
    perm = np.random.default_rng(0).permutation(len(x))
    a_perm = GaussianStats(D).update(x[perm])
    forward = stats_distance(a, b)
    assert stats_distance(a_perm, b) == pytest.approx(forward, rel=1e-10)
    assert stats_distance(b, a) == pytest.approx(forward, rel=1e-9)


def test_streaming_equals_one_batch_and_merge_is_exact():
    x = features(1000, "ill_conditioned", 8)
    whole = GaussianStats(D).update(x)
    streamed = GaussianStats(D)
    cuts = [0, 1, 7, 300, 301, 999, 1000]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        streamed.update(torch.from_numpy(x[lo:hi]))  # torch float64 input path too
    # as if three DDP ranks had each seen a strided share, merged in rank order
    ranks = [GaussianStats(D).update(x[r::3]) for r in range(3)]
    merged = GaussianStats(D)
    for part in ranks:
        merged.merge(part)
    for s in (streamed, merged):
        assert s.count == 1000
        np.testing.assert_allclose(s.mean, whole.mean, rtol=1e-12, atol=1e-12 * np.abs(x).max())
        np.testing.assert_allclose(s.cov(), whole.cov(), rtol=1e-9, atol=1e-12 * np.abs(whole.cov()).max())
    np.testing.assert_allclose(
        whole.cov("N-1"), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12 * np.abs(whole.cov()).max()
    )


def test_divisor_n_versus_n_minus_1():
    x, y = features(128, "random", 9), features(128, "random", 10)
    a = GaussianStats(D).update(x)
    np.testing.assert_allclose(a.cov("N") * 128, a.cov("N-1") * 127, rtol=1e-12)
    np.testing.assert_allclose(a.cov("N"), np.cov(x, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)
    b = GaussianStats(D).update(y)
    biased, unbiased = stats_distance(a, b, divisor="N"), stats_distance(a, b, divisor="N-1")
    assert biased != pytest.approx(unbiased, rel=1e-4)  # the divisor matters at N = 128
    assert unbiased == pytest.approx(reference_fd(x, y, ddof=1), rel=1e-6)
    with pytest.raises(ValueError, match="divisor"):
        a.cov("N+1")


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match=r"\(B, 400\)"):
        GaussianStats(D).update(np.zeros((4, 10)))
    with pytest.raises(ValueError, match="merge"):
        GaussianStats(D).merge(GaussianStats(3))
