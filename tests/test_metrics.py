"""fastgan.metrics: FID against closed forms and an independent square root; Inception Score."""

from __future__ import annotations

import math

import pytest
import torch

import fastgan.metrics as M


def _random_cov(d: int, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(d, rank or 2 * d, dtype=torch.float64)
    return a @ a.T / a.shape[1]


def _fid_reference(mu1, s1, mu2, s2) -> float:
    """Independent reference: tr sqrt(s1 s2) from the eigenvalues of the non-symmetric product
    s1 s2 (general eigensolver; they are real and non-negative for PSD s1, s2)."""
    vals = torch.linalg.eigvals(s1 @ s2)
    assert vals.imag.abs().max() < 1e-8 * vals.real.abs().max()
    tr_sqrt = vals.real.clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


def test_fid_identical_sets_is_zero():
    feats = torch.randn(300, 16) * 3 + 1
    assert abs(M.fid_from_features(feats, feats)) < 1e-8
    mu, s = feats.double().mean(0), torch.cov(feats.double().T)
    assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-8


def test_fid_diagonal_closed_form():
    d = 10
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    v1, v2 = torch.rand(d, dtype=torch.float64) + 0.1, torch.rand(d, dtype=torch.float64) + 0.1
    expected = (mu1 - mu2).pow(2).sum() + (v1 + v2 - 2 * (v1 * v2).sqrt()).sum()
    got = M.frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert math.isclose(got, float(expected), rel_tol=1e-10)


def test_fid_commuting_closed_form():
    # Covariances sharing eigenvectors Q: tr sqrt(s1 s2) = sum sqrt(l1 * l2).
    d = 8
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    l1, l2 = torch.rand(d, dtype=torch.float64) + 0.05, torch.rand(d, dtype=torch.float64) * 3
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    mu = torch.randn(d, dtype=torch.float64)
    expected = float(l1.sum() + l2.sum() - 2 * (l1 * l2).sqrt().sum())
    assert math.isclose(M.frechet_distance(mu, s1, mu, s2), expected, rel_tol=1e-9)


@pytest.mark.parametrize("rank", [None, 12])
def test_fid_matches_independent_sqrtm(rank):
    d = 24
    s1, s2 = _random_cov(d), _random_cov(d, rank)  # rank 12: a singular s2, as with few samples
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    got = M.frechet_distance(mu1, s1, mu2, s2)
    assert math.isclose(got, _fid_reference(mu1, s1, mu2, s2), rel_tol=1e-7)
    # Symmetric in its arguments although the computation is not.
    assert math.isclose(got, M.frechet_distance(mu2, s2, mu1, s1), rel_tol=1e-7)


def test_fid_from_features_uses_unbiased_cov():
    f1, f2 = torch.randn(50, 6), torch.randn(70, 6) * 2 + 0.5
    c1 = (f1.double() - f1.double().mean(0)).T @ (f1.double() - f1.double().mean(0)) / 49
    c2 = (f2.double() - f2.double().mean(0)).T @ (f2.double() - f2.double().mean(0)) / 69
    expected = _fid_reference(f1.double().mean(0), c1, f2.double().mean(0), c2)
    assert math.isclose(M.fid_from_features(f1, f2), expected, rel_tol=1e-7)
    assert M.fid_from_features(f1.numpy(), f2.numpy()) == M.fid_from_features(f1, f2)
    with pytest.raises(ValueError, match="feature sizes differ"):
        M.fid_from_features(f1, torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"mu \[D\] and sigma \[D, D\]"):
        M.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))


def test_inception_score_extremes():
    k = 7
    mean, std = M.inception_score(torch.full((70, k), 1 / k), splits=5)
    assert math.isclose(mean, 1.0, rel_tol=1e-12) and std < 1e-12
    onehot = torch.eye(k).repeat(10, 1)  # each split holds every class once
    mean, std = M.inception_score(onehot, splits=10)
    assert math.isclose(mean, k, rel_tol=1e-12) and std < 1e-12


def test_inception_score_formula_and_splits():
    probs = torch.softmax(torch.randn(103, 5) * 2, dim=1)
    mean, std = M.inception_score(probs, splits=4)
    part = 103 // 4
    scores = []
    for i in range(4):  # the original code's loop: the 3 left-over samples are dropped
        p = probs[i * part:(i + 1) * part].double()
        py = p.mean(0)
        scores.append(math.exp(sum((p[j] * (p[j] / py).log()).sum() for j in range(part)) / part))
    assert math.isclose(mean, sum(scores) / 4, rel_tol=1e-10)
    ref_std = math.sqrt(sum((s - sum(scores) / 4) ** 2 for s in scores) / 4)
    assert math.isclose(std, ref_std, rel_tol=1e-8)
    assert 1.0 < mean < 5.0
    with pytest.raises(ValueError, match="probability"):
        M.inception_score(torch.randn(20, 5), splits=2)
