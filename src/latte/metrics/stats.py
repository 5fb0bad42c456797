"""Feature statistics and the two scores: Fréchet distance (FID/FVD) and Inception Score.

FID (Heusel et al. 2017) and FVD (Unterthiner et al. 2018) are the Fréchet distance between
Gaussians fitted to detector features: d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
Statistics are accumulated in float64, batch by batch (Chan et al.'s parallel update of the mean
and the centred scatter matrix), so 2048 clips never need to sit in memory at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy


class RunningStats:
    """Streaming mean and covariance of feature rows; `covariance()` equals `numpy.cov(features, rowvar=False)`."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.scatter = np.zeros((dim, dim), dtype=np.float64)  # sum of (x - mean)(x - mean)^T

    def update(self, features) -> None:
        """Add a batch of rows, (N, dim)."""
        x = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        batch_scatter = centred.T @ centred
        delta = batch_mean - self.mean
        total = self.count + n
        self.scatter += batch_scatter + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """(dim, dim) covariance; ddof=1 like numpy.cov (the TTUR FID / TF FVD estimator)."""
        if self.count <= ddof:
            raise ValueError(f"covariance of {self.count} rows with ddof={ddof} is undefined")
        return self.scatter / (self.count - ddof)

    def gaussian(self) -> Gaussian:
        return Gaussian(self.mean.copy(), self.covariance(), self.count)


@dataclass
class Gaussian:
    """Fitted feature distribution: mean (D,), covariance (D, D), number of rows it came from."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def _clip_roundoff(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: below dim * eps * max they are zero (numerical rank)."""
    cutoff = values.size * np.finfo(np.float64).eps * max(float(np.abs(values).max(initial=0.0)), 0.0)
    return np.where(values > cutoff, values, 0.0)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix through its eigen-decomposition."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_clip_roundoff(values))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).

    S1 S2 is not symmetric, but it is similar to sqrt(S1) S2 sqrt(S1), which is symmetric PSD, so
    Tr((S1 S2)^(1/2)) = sum of the square roots of that matrix's (clipped) eigenvalues. This stays
    exact for singular covariances (fewer samples than dimensions), where sqrtm-based code fails.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: {mu1.shape} {cov1.shape} vs {mu2.shape} {cov2.shape}")
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(_clip_roundoff(eigenvalues)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


class FrechetToRows:
    """Fréchet distance from one fixed Gaussian (mu1, S1) to the Gaussians of many sets of feature rows
    (e.g. bootstrap resamples of one set): with Y = (rows - their mean) S1^(1/2), the non-zero eigenvalues
    of S1^(1/2) S2 S1^(1/2) = Y^T Y / (N - 1) are those of the (N, N) Gram matrix Y Y^T / (N - 1), so
    each distance costs one (N, N) eigenvalue problem instead of two (D, D) ones; exact, and the cheaper
    route while N < D (128 videos against I3D's 400 features)."""

    def __init__(self, mu1: np.ndarray, cov1: np.ndarray):
        self.mu1 = np.asarray(mu1, np.float64)
        cov1 = np.asarray(cov1, np.float64)
        self.root1, self.trace1 = _sqrt_psd(cov1), float(np.trace(cov1))

    def __call__(self, rows: np.ndarray) -> float:
        rows = np.asarray(rows, np.float64)  # (N, D)
        n = rows.shape[0]
        if n < 2 or rows.shape[1] != self.mu1.shape[0]:
            raise ValueError(f"need (N >= 2, {self.mu1.shape[0]}) feature rows, got {rows.shape}")
        mean = rows.mean(axis=0)
        centred = rows - mean
        mapped = centred @ self.root1  # (N, D)
        gram = mapped @ mapped.T / (n - 1)  # (N, N)
        trace_sqrt = np.sqrt(_clip_roundoff(np.linalg.eigvalsh((gram + gram.T) / 2))).sum()
        diff = self.mu1 - mean
        return float(diff @ diff + self.trace1 + (centred * centred).sum() / (n - 1) - 2.0 * trace_sqrt)


def inception_score(probs: np.ndarray, splits: int = 10, seed: int | None = 42) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) on each of `splits` parts; returns (mean, std) over the parts.

    Salimans et al. 2016, as StyleGAN-V computes it for UCF101 (rows shuffled with RandomState(42),
    then split evenly; `seed=None` keeps the given order).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < splits:
        raise ValueError(f"need (N, classes) probabilities with N >= splits={splits}, got {p.shape}")
    if seed is not None:
        p = p.copy()
        np.random.RandomState(seed).shuffle(p)
    n = p.shape[0]
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)  # 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
