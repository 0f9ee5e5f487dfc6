"""Entropy estimators against cases with a known answer, and the invariances each one claims."""

from __future__ import annotations

import math

import pytest
import torch

from energyprune.errors import UsageError
from energyprune.metrics.entropy import (
    bucket_entropy,
    gaussian_entropy,
    get_estimator,
    knn_entropy,
    renyi_entropy,
    subsample,
)

D = 4
N = 2000


@pytest.fixture(scope="module")
def gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Σ): N samples of a 4-d Gaussian with a known, correlated covariance."""
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(D, D, generator=generator, dtype=torch.float64)
    sigma = A @ A.T + 0.5 * torch.eye(D, dtype=torch.float64)
    X = torch.randn(N, D, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    return X, sigma


def true_entropy(sigma: torch.Tensor) -> float:
    d = sigma.shape[0]
    return 0.5 * (d * math.log(2 * math.pi * math.e) + torch.logdet(sigma).item())


# ------------------------------------------------------------------------------ known answers
def test_knn_matches_gaussian_entropy(gaussian):
    X, sigma = gaussian
    truth = true_entropy(sigma)
    assert knn_entropy(X, k=25) == pytest.approx(truth, rel=0.05)


def test_knn_normalised_matches_entropy_of_the_correlation(gaussian):
    X, sigma = gaussian
    std = sigma.diagonal().sqrt()
    correlation = sigma / std[:, None] / std[None, :]
    assert knn_entropy(X, normalise=True) == pytest.approx(true_entropy(correlation), rel=0.05)


def test_gaussian_estimator_matches(gaussian):
    X, sigma = gaussian
    assert gaussian_entropy(X) == pytest.approx(true_entropy(sigma), rel=0.02)


def test_bucket_entropy_of_uniform_data_is_d_log_bins():
    U = torch.rand(N, D, generator=torch.Generator().manual_seed(2))
    assert bucket_entropy(U, bins=20) == pytest.approx(D * math.log(20), rel=0.01)


def test_bucket_entropy_of_two_values_and_a_constant():
    X = torch.tensor([[0.0, 5.0], [1.0, 5.0]] * 50)
    assert bucket_entropy(X) == pytest.approx(math.log(2), abs=1e-12)  # the constant column adds 0


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_renyi_of_k_separated_clusters_is_log_k(alpha):
    """k tight, far-apart, equal clusters: with a narrow kernel A is block-diagonal with k equal
    blocks, its eigenvalues are 1/k each, and S_α = log k for every α."""
    generator = torch.Generator().manual_seed(3)
    centres = torch.eye(4, dtype=torch.float64) * 10
    X = centres.repeat_interleave(50, dim=0) + 1e-4 * torch.randn(200, 4, generator=generator, dtype=torch.float64)
    assert renyi_entropy(X, alpha=alpha, kernel_width=0.05, normalise=False) == pytest.approx(math.log(4), rel=1e-3)


def test_renyi_bounds_and_order_in_alpha():
    X = torch.randn(300, 8, generator=torch.Generator().manual_seed(4))
    s1, s2, s3 = (renyi_entropy(X, alpha=a) for a in (1.0, 2.0, 3.0))
    assert 0 < s3 <= s2 <= s1 <= math.log(300)  # Rényi entropies do not increase with α
    assert renyi_entropy(torch.ones(50, 3)) == 0.0


# ---------------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("estimate", [
    bucket_entropy,
    renyi_entropy,
    lambda X: renyi_entropy(X, normalise=False),
    lambda X: knn_entropy(X, normalise=True),
], ids=["bucket", "renyi", "renyi-unnormalised", "knn-normalised"])
def test_scale_invariant_estimators(gaussian, estimate):
    X, _ = gaussian
    assert estimate(7 * X) == pytest.approx(estimate(X), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("estimate", [knn_entropy, gaussian_entropy], ids=["knn", "gaussian"])
def test_differential_estimators_shift_by_d_log_a(gaussian, estimate):
    X, _ = gaussian
    assert estimate(7 * X) - estimate(X) == pytest.approx(D * math.log(7), abs=1e-9)


# ----------------------------------------------------------------------------- subsampling
def test_subsample_is_deterministic_and_pairs_rows():
    X = torch.arange(500, dtype=torch.float64)[:, None]
    first = subsample(X, 100, seed=0)
    assert first.shape == (100, 1)
    assert torch.equal(first, subsample(X, 100, seed=0))
    assert torch.equal(subsample(2 * X + 1, 100, seed=0), 2 * first + 1)  # same rows for a paired set
    assert not torch.equal(first, subsample(X, 100, seed=1))
    assert subsample(X, 600) is X


def test_knn_caps_its_samples():
    X = torch.randn(3000, 3, generator=torch.Generator().manual_seed(5))
    capped = knn_entropy(X, max_samples=500)
    assert capped == knn_entropy(X, max_samples=500)
    assert capped != knn_entropy(X, max_samples=500, seed=1)


def test_knn_survives_repeated_samples():
    X = torch.randn(200, 3, generator=torch.Generator().manual_seed(6))
    X[:40] = X[0]  # 40 copies of one vector, as a BOS token gives
    assert math.isfinite(knn_entropy(X, k=5))


# ----------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError, match="at least 2 samples"):
        knn_entropy(torch.zeros(1, 3))
    with pytest.raises(UsageError, match="NaN"):
        bucket_entropy(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(UsageError, match="more than 25 samples"):
        knn_entropy(torch.randn(10, 2))
    with pytest.raises(UsageError, match="bucket, gaussian, knn, renyi"):
        get_estimator("kde")
