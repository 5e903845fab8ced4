"""Sample-quality metrics from precomputed network outputs: FID (Heusel et al. 2017) from
feature statistics and Inception Score (Salimans et al. 2016) from class probabilities.

Feature extraction (Inception-v3 pool3 / logits) is the caller's: these functions take the
features or probabilities. Everything is computed in float64 with torch only (no scipy): the
matrix square root in FID comes from symmetric eigendecompositions.
"""

from __future__ import annotations

import torch

__all__ = ["fid_from_features", "frechet_distance", "inception_score"]


def _as64(x, name: str, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to(torch.float64)
    if t.dim() != ndim:
        raise ValueError(f"fastgan.metrics: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2}).

    mu [D], sigma [D, D] (tensors or arrays). tr((s1 s2)^{1/2}) is computed as
    tr((s1^{1/2} s2 s1^{1/2})^{1/2}): the same eigenvalues, but of a symmetric PSD matrix, so two
    float64 ``eigh`` calls give it without the complex parts and ill-conditioning that a general
    sqrtm of the non-symmetric s1 s2 meets on near-singular covariances (few samples, D = 2048).
    """
    mu1, mu2 = _as64(mu1, "mu1", 1), _as64(mu2, "mu2", 1)
    sigma1, sigma2 = _as64(sigma1, "sigma1", 2), _as64(sigma2, "sigma2", 2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"fastgan.metrics.frechet_distance: need mu [D] and sigma [D, D] of one "
                         f"D, got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, "
                         f"{tuple(sigma2.shape)}")
    sigma2 = sigma2.to(sigma1.device)
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2.to(mu1.device)
    fid = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(fid)


def _mean_cov(feats) -> tuple[torch.Tensor, torch.Tensor]:
    f = _as64(feats, "features", 2)
    if f.shape[0] < 2:
        raise ValueError(f"fastgan.metrics.fid_from_features: need at least 2 samples, got "
                         f"{f.shape[0]}")
    # Unbiased covariance over samples, as numpy.cov(rowvar=False) in the reference FID code.
    return f.mean(0), torch.cov(f.T)


def fid_from_features(feats1, feats2) -> float:
    """FID between two sets of features [N1, D] and [N2, D] (e.g. Inception pool3, D = 2048)."""
    mu1, s1 = _mean_cov(feats1)
    mu2, s2 = _mean_cov(feats2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"fastgan.metrics.fid_from_features: feature sizes differ, "
                         f"{mu1.shape[0]} and {mu2.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2)


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) of class probabilities ``probs`` [N, K].

    As the original code: the N samples are cut into ``splits`` consecutive equal parts (a
    remainder of N % splits samples is dropped), the score computed per part with p(y) that
    part's mean, and the mean and (population) standard deviation over parts returned.
    """
    p = _as64(probs, "probs", 2)
    if splits < 1 or p.shape[0] < splits:
        raise ValueError(f"fastgan.metrics.inception_score: need 1 <= splits <= N, got "
                         f"splits={splits}, N={p.shape[0]}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError("fastgan.metrics.inception_score: probs rows must be probability "
                         "distributions (non-negative, summing to 1); apply softmax to logits")
    part = p.shape[0] // splits
    scores = []
    for k in range(splits):
        chunk = p[k * part:(k + 1) * part]
        marginal = chunk.mean(0, keepdim=True)
        # xlogy: 0 * log 0 = 0 for classes a sample gives no probability.
        kl = (torch.xlogy(chunk, chunk) - torch.xlogy(chunk, marginal)).sum(1)
        scores.append(kl.mean().exp())
    scores_t = torch.stack(scores)
    return float(scores_t.mean()), float(scores_t.std(unbiased=False))
