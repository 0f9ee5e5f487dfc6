"""Entropy estimators of a set of vectors, for entropy-based pruning criteria (EntroDrop).

Each estimator takes `X`, an (n, d) tensor of n samples in d dimensions (any dtype, any device;
computed in float64), and returns one float in **nats**. Divide by ln 2 for bits.

| estimator | what it estimates | scale `X -> aX` | cost |
| --- | --- | --- | --- |
| `knn_entropy` | differential entropy (Kozachenko–Leonenko, k-th neighbour) | `+ d·log a` (`normalise=True`: invariant) | O(m² d), m ≤ `max_samples` |
| `bucket_entropy` | sum over dimensions of the Shannon entropy of a `bins`-bin histogram (discrete) | invariant | O(n d) |
| `renyi_entropy` | matrix-based Rényi α-entropy of the Gram matrix (Giraldo, Rao & Príncipe 2014) | invariant (kernel width relative to the median distance) | O(m² d) (+ O(m³) unless α = 2) |
| `gaussian_entropy` | differential entropy of the Gaussian with the sample covariance | `+ d·log a` | O(n d² + d³) |

Subsampling: `knn_entropy` and `renyi_entropy` cost grows with n², so above `max_samples` rows
they use a fixed subset of `max_samples` rows drawn with a seeded generator (`seed`, default 0).
The subset depends only on (n, max_samples, seed), never on the values, so two sets of the same
size - the hidden states entering and leaving a block, sampled at the same token positions -
are subsampled at the same rows and stay paired.

Differential and discrete entropies are different quantities: compare values of one estimator
with each other (differences across a block, a profile across depth), never across estimators.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from energyprune.errors import UsageError

#: Default cap on the rows used by the O(n²) estimators.
DEFAULT_MAX_SAMPLES = 2048

#: Rows of the distance matrix computed at once by the k-NN estimator (bounds its memory).
_KNN_CHUNK = 1024


def _as_matrix(X: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        raise UsageError(f"{name}: X must be a torch.Tensor of shape (n, d), got {type(X).__name__}")
    if X.ndim == 1:
        X = X.unsqueeze(1)
    if X.ndim != 2:
        raise UsageError(f"{name}: X must have shape (n, d), got {tuple(X.shape)}")
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise UsageError(f"{name}: needs at least 2 samples of at least 1 dimension, got {tuple(X.shape)}")
    X = X.detach().to(torch.float64)
    if not torch.isfinite(X).all():
        raise UsageError(f"{name}: X contains NaN or infinite values")
    return X


def subsample(X: torch.Tensor, max_samples: int | None, seed: int = 0) -> torch.Tensor:
    """At most `max_samples` rows of X: all of them when it has no more, else a subset chosen by
    a generator seeded with `seed` (the same rows for any X of the same length)."""
    if max_samples is None or X.shape[0] <= max_samples:
        return X
    if max_samples < 2:
        raise UsageError(f"max_samples must be at least 2, got {max_samples}")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(X.shape[0], generator=generator)[:max_samples].sort().values
    return X[rows.to(X.device)]


def standardise(X: torch.Tensor) -> torch.Tensor:
    """Each dimension to zero mean and unit (sample) standard deviation; a constant dimension is
    only centred."""
    X = X.to(torch.float64)
    std = X.std(dim=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (X - X.mean(dim=0, keepdim=True)) / std


def log_unit_ball_volume(d: int) -> float:
    """log of the volume of the d-dimensional Euclidean unit ball, π^(d/2) / Γ(d/2 + 1)."""
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)


def knn_entropy(
    X: torch.Tensor,
    k: int = 25,
    *,
    normalise: bool = False,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    """Kozachenko–Leonenko differential entropy, in nats:

        H = ψ(m) − ψ(k) + log V_d + (d / m) · Σ_i log r_i

    where r_i is the Euclidean distance from sample i to its k-th nearest other sample, V_d the
    volume of the unit d-ball (via lgamma) and m the number of samples used (≤ `max_samples`,
    see the module note). Consistent for any density; k = 25 is EntroDrop's choice.

    Not scale-invariant: H(aX) = H(X) + d·log a. With `normalise=True` every dimension is first
    standardised (zero mean, unit variance), which makes it invariant to the scale of each
    dimension - the "normalised control" that tells a real change of shape from a change of norm.

    Repeated samples (r_i = 0, e.g. the hidden state of a BOS token that is the same in every
    sequence) would give log 0: distances are floored at 1e-10 times the median k-th-neighbour
    distance (the floor scales with X, so the d·log a law still holds exactly).

    Bias: in hundreds of dimensions with a few thousand samples the absolute value is far off
    (2048 standard normal samples in d = 2048 give ≈ 3550 nats for a true 2906); differences
    between sets of the same n and d, as ΔH across a block, are what it is used for.
    """
    X = _as_matrix(X, "knn_entropy")
    if k < 1:
        raise UsageError(f"knn_entropy: k must be >= 1, got {k}")
    X = subsample(X, max_samples, seed)
    if normalise:
        X = standardise(X)
    m, d = X.shape
    if k >= m:
        raise UsageError(f"knn_entropy: k={k} needs more than {k} samples, got {m}")
    radii = torch.empty(m, dtype=torch.float64, device=X.device)
    for start in range(0, m, _KNN_CHUNK):
        stop = min(start + _KNN_CHUNK, m)
        dist = torch.cdist(X[start:stop], X)
        rows = torch.arange(stop - start, device=X.device)
        dist[rows, rows + start] = math.inf  # a sample is not its own neighbour
        radii[start:stop] = dist.topk(k, dim=1, largest=False).values[:, -1]
    positive = radii[radii > 0]
    floor = 1e-10 * (positive.median().item() if positive.numel() else 1.0)
    log_r = radii.clamp_min(floor).log()
    value = (torch.special.digamma(torch.tensor(float(m), dtype=torch.float64))
             - torch.special.digamma(torch.tensor(float(k), dtype=torch.float64))).item()
    return value + log_unit_ball_volume(d) + d * log_r.mean().item()


def bucket_entropy(X: torch.Tensor, bins: int = 20) -> float:
    """Sum over dimensions of the Shannon entropy (nats) of a `bins`-bin histogram of that
    dimension, the bins spanning the dimension's own min..max (EntroDrop's "bucket" estimator).

    A discrete entropy of the marginals: it ignores dependence between dimensions, lies in
    [0, d·log bins], and is invariant to scaling and shifting each dimension (the bins move with
    the data). A constant dimension contributes 0. Uses every row (O(n·d)).
    """
    X = _as_matrix(X, "bucket_entropy")
    if bins < 2:
        raise UsageError(f"bucket_entropy: bins must be >= 2, got {bins}")
    n, d = X.shape
    low = X.min(dim=0).values
    span = X.max(dim=0).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    index = ((X - low) / safe * bins).floor().long().clamp_(0, bins - 1)  # max falls in the last bin
    flat = index + torch.arange(d, device=X.device) * bins
    counts = torch.zeros(d * bins, dtype=torch.float64, device=X.device)
    counts.scatter_add_(0, flat.reshape(-1), torch.ones(n * d, dtype=torch.float64, device=X.device))
    p = counts.reshape(d, bins) / n
    terms = torch.where(p > 0, -p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return terms.sum().item()


def renyi_entropy(
    X: torch.Tensor,
    alpha: float = 2.0,
    kernel_width: float | None = None,
    *,
    normalise: bool = True,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    """Matrix-based Rényi α-entropy (Giraldo, Rao & Príncipe, IEEE Trans. Inf. Theory 2014), in
    nats (the paper uses log2: divide by ln 2 for its bits).

    K_ij = exp(−‖x_i − x_j‖² / (2σ²)) on the m samples (≤ `max_samples`), A = K / tr(K) (unit
    trace, eigenvalues λ_i ≥ 0 summing to 1), and

        S_α(A) = 1 / (1 − α) · log Σ_i λ_i^α        (α = 1: −Σ λ_i log λ_i, von Neumann)

    α = 2 needs no eigendecomposition: Σ λ_i² = ‖A‖_F². The value lies in [0, log m].

    Samples: with `normalise=True` (default, as EntroDrop does) every dimension is first
    standardised, so a few dimensions of very large magnitude (the "massive activations" of LLM
    residual streams) do not decide every distance alone.

    Kernel width: σ = `kernel_width` × (median pairwise distance between the samples), with
    `kernel_width=None` meaning 1 (EntroDrop's choice). Because σ is relative to the data's own
    spread, the Gram matrix - and so the entropy - is invariant to scaling X (and translating it),
    with or without `normalise`. Caveat: in many dimensions pairwise distances concentrate near
    their median, K_ij ≈ e^(-1/2) off the diagonal, A is close to rank one and S_2 sits near
    log(1/0.37) ≈ 1 whatever the data; differences across a block are then small (≈ 1e-3) though
    still ordered. A smaller `kernel_width` spreads them, until it saturates at log m (every
    sample its own cluster): for 256 standard normal samples in 32 dimensions, 1.0 gives 0.98
    nats and 0.3 already 5.50 of log 256 = 5.55.
    """
    X = _as_matrix(X, "renyi_entropy")
    if alpha <= 0:
        raise UsageError(f"renyi_entropy: alpha must be > 0, got {alpha}")
    factor = 1.0 if kernel_width is None else float(kernel_width)
    if not factor > 0:
        raise UsageError(f"renyi_entropy: kernel_width (relative to the median distance) must be > 0, got {kernel_width}")
    X = subsample(X, max_samples, seed)
    if normalise:
        X = standardise(X)
    m = X.shape[0]
    sq = torch.cdist(X, X).square_()
    upper = torch.triu_indices(m, m, offset=1, device=X.device)
    median_sq = sq[upper[0], upper[1]].median().item()
    if median_sq <= 0:  # more than half the pairs coincide: fall back to the mean distance
        median_sq = sq.mean().item()
    if median_sq <= 0:  # all samples identical: one point, no uncertainty
        return 0.0
    K = torch.exp(sq / (-2.0 * factor * factor * median_sq))
    A = K / torch.trace(K)
    if alpha == 2.0:
        return -math.log(A.square().sum().item())
    lam = torch.linalg.eigvalsh(A).clamp_min(0.0)
    lam = lam[lam > 0]
    if alpha == 1.0:
        return -(lam * lam.log()).sum().item()
    return math.log(lam.pow(alpha).sum().item()) / (1.0 - alpha)


def gaussian_entropy(X: torch.Tensor, ridge: float = 1e-6) -> float:
    """Differential entropy (nats) of the Gaussian with X's sample covariance Σ:

        H = ½ log det(2πe (Σ + εI)),   ε = `ridge` × tr(Σ)/d

    The ridge is relative to the mean variance, so H(aX) = H(X) + d·log a holds exactly; it keeps
    the log-determinant finite when n ≤ d or dimensions are collinear (then the value mostly
    reflects the ridge: read it as a lower-bounded proxy, not an estimate). Exact for Gaussian
    data, an upper bound of the true differential entropy for any other distribution with that
    covariance. Uses every row.
    """
    X = _as_matrix(X, "gaussian_entropy")
    if ridge < 0:
        raise UsageError(f"gaussian_entropy: ridge must be >= 0, got {ridge}")
    d = X.shape[1]
    centred = X - X.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (X.shape[0] - 1)
    scale = torch.trace(cov).item() / d
    eps = ridge * scale if scale > 0 else 1e-300
    cov = cov + eps * torch.eye(d, dtype=cov.dtype, device=cov.device)
    sign, logdet = torch.linalg.slogdet(cov)
    if sign.item() <= 0:
        raise UsageError("gaussian_entropy: the covariance is not positive definite even with the ridge; raise `ridge`")
    return 0.5 * (d * math.log(2.0 * math.pi * math.e) + logdet.item())


#: Estimators by the names the entropy criterion accepts.
ESTIMATORS: dict[str, Callable[..., float]] = {
    "knn": knn_entropy,
    "bucket": bucket_entropy,
    "renyi": renyi_entropy,
    "gaussian": gaussian_entropy,
}


def get_estimator(name: str) -> Callable[..., float]:
    """The estimator called `name`, or a UsageError listing the known names."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise UsageError(
            f"unknown entropy estimator {name!r}: choose one of {', '.join(sorted(ESTIMATORS))}") from None
