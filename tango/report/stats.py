"""Paired statistics for comparing the accuracy of evaluation runs that answered the same questions.

Confidence intervals are percentile bootstraps over questions: each of ``n_boot`` replicates draws ``n`` question
indices with replacement, and the CI is the ``(1-level)/2`` and ``1-(1-level)/2`` quantiles of the replicate means
(``np.quantile``, default linear interpolation). With ``strata`` (e.g. each question's task) the draws are made within
each stratum, so every replicate keeps each stratum's size (stratified bootstrap). The CI of a difference between two
runs draws the *same* indices for both runs (paired bootstrap), so the difficulty of a question, shared by both runs,
cancels out.

Significance tests are two-sided paired tests of "both runs have the same mean score". Binary (0/1) scores: exact
McNemar test over the m questions where exactly one run is right, p = min(1, 2 P[Binom(m, 1/2) <= min(n01, n10)]),
with the binomial tail computed in closed form (no sampling). Fractional scores (a question's score averaged over
seeds): sign-flip permutation test of the per-question differences d with statistic |sum(d)|; exact over all 2^k sign
vectors when k <= 20 questions have d != 0, otherwise Monte Carlo over ``n_perm`` random sign vectors with
p = (1 + #{|sum| >= observed}) / (1 + n_perm). Sampling uses ``np.random.default_rng(seed)``: same seed, same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CHUNK = 2_000_000  # resampled indices (or sign entries) held at once: ~16 MB per int64/float64 array
_EXACT_MAX = 20  # sign-flip enumeration holds 2**k sums: 8 MB at k = 20
_TIE_RTOL = 1e-9  # relative to sum|d|; far above float summation error, far below the gap between distinct sums


@dataclass(frozen=True)
class Interval:
    estimate: float  # point estimate, in the unit of the inputs times `scale`
    low: float  # lower bound of the percentile CI
    high: float
    n: int  # number of questions (resampling units)
    level: float  # e.g. 0.95


def bootstrap_mean(scores, *, strata=None, n_boot=10_000, level=0.95, seed=0, scale=100.0) -> Interval:
    """Percentile bootstrap CI of the mean of ``scores`` (float [n], usually per-question scores in [0, 1]).

    ``strata`` (int/str [n]) resamples within each stratum. ``estimate = scale * mean(scores)``; ``low``/``high`` are
    ``scale`` times the quantiles of the replicate means.
    """
    x = _vector(scores, "scores")
    _check_bootstrap_args(n_boot, level)
    means = _bootstrap_means(x, _strata_codes(strata, x.size), n_boot, seed)
    return _interval(x.mean(), means, x.size, level, scale)


def paired_bootstrap_diff(a, b, *, strata=None, n_boot=10_000, level=0.95, seed=0, scale=100.0) -> Interval:
    """Paired percentile bootstrap CI of ``mean(a) - mean(b)``.

    ``a``, ``b``: float [n], the same questions in the same order. Each replicate uses the same resampled indices for
    both, i.e. resamples the differences ``a - b``; ``strata`` as in :func:`bootstrap_mean`.
    """
    a, b = _pair(a, b)
    _check_bootstrap_args(n_boot, level)
    d = a - b
    means = _bootstrap_means(d, _strata_codes(strata, d.size), n_boot, seed)
    return _interval(d.mean(), means, d.size, level, scale)


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar p-value for paired correctness ``a``, ``b`` (bool or 0/1 [n])."""
    a, b = _pair(a, b)
    for x, name in ((a, "a"), (b, "b")):
        bad = np.flatnonzero((x != 0) & (x != 1))
        if bad.size:
            raise ValueError(f"{name} must be boolean or 0/1, got {x[bad[0]]:g} at index {bad[0]}")
    a, b = a.astype(bool), b.astype(bool)
    n01 = int(np.count_nonzero(~a & b))
    n10 = int(np.count_nonzero(a & ~b))
    m, k = n01 + n10, min(n01, n10)
    if m == 0:
        return 1.0
    # P[X <= k] = pmf(k) * sum_j prod_{i=k-j+1..k} pmf(i-1)/pmf(i), and pmf(i-1)/pmf(i) = i/(m-i+1) <= 1 for
    # k <= m/2: the sum lies in [1, k+1], so only pmf(k) needs log space (lgamma) and nothing under- or overflows.
    i = np.arange(k, 0, -1, dtype=float)
    tail_over_pmf = 1.0 + np.cumprod(i / (m - i + 1)).sum()
    log_pmf = math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) - m * math.log(2)
    return min(1.0, math.exp(math.log(2) + log_pmf + math.log(tail_over_pmf)))


def sign_flip_test(d, *, n_perm=100_000, seed=0) -> float:
    """Two-sided sign-flip permutation p-value for ``mean(d) == 0``, ``d``: paired differences, float [n].

    Exact when at most 20 values are non-zero, else Monte Carlo with ``n_perm`` sign vectors (seeded).
    """
    d = _vector(d, "d")
    _check_positive_int(n_perm, "n_perm")
    # a zero difference contributes 0 to the sum under either sign, so only the non-zero ones are flipped
    nz = d[d != 0]
    if nz.size == 0:
        return 1.0
    observed = abs(nz.sum())
    # sums reached by other paths (other order, matrix product) may differ from `observed` by rounding only
    threshold = observed - _TIE_RTOL * np.abs(nz).sum()
    if nz.size <= _EXACT_MAX:
        sums = np.zeros(1)
        for v in nz:  # <= 20 doublings: all 2**k signed sums without a 2**k x k sign matrix
            sums = np.concatenate((sums + v, sums - v))
        return float(np.count_nonzero(np.abs(sums) >= threshold) / sums.size)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // nz.size)
    hits = 0
    for lo in range(0, n_perm, chunk):
        signs = rng.integers(0, 2, size=(min(chunk, n_perm - lo), nz.size)) * 2.0 - 1.0
        hits += int(np.count_nonzero(np.abs(signs @ nz) >= threshold))
    return (1 + hits) / (1 + n_perm)


def paired_test(a, b, **kw) -> tuple[float, str]:
    """Paired two-sided test of ``mean(a) == mean(b)`` for per-question scores ``a``, ``b`` (float [n] in [0, 1]).

    Binary scores -> ``(mcnemar_exact(a, b), "mcnemar_exact")``; otherwise (scores averaged over seeds)
    ``(sign_flip_test(a - b, **kw), "sign_flip")``. ``kw`` (``n_perm``, ``seed``) only affects the sign-flip test.
    """
    unknown = sorted(set(kw) - {"n_perm", "seed"})
    if unknown:  # checked on both branches so a typo does not pass silently on binary data
        raise TypeError(f"paired_test got unexpected keyword argument(s) {unknown}; allowed: n_perm, seed")
    a, b = _pair(a, b)
    if all(np.all((x == 0) | (x == 1)) for x in (a, b)):
        return mcnemar_exact(a, b), "mcnemar_exact"
    return sign_flip_test(a - b, **kw), "sign_flip"


def _bootstrap_means(x: np.ndarray, codes: np.ndarray | None, n_boot: int, seed) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``x`` [n] -> [n_boot]; ``codes`` [n] (stratum ids 0..s-1) or None."""
    n = x.size
    if codes is None:
        order, start, size = np.arange(n), np.zeros(n, dtype=np.int64), np.full(n, n)
    else:
        # sort by stratum: position j then draws uniformly from its stratum's contiguous block [start_j, start_j+size_j)
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes)
        sorted_codes = codes[order]
        start, size = (np.cumsum(counts) - counts)[sorted_codes], counts[sorted_codes]
    xs = x[order]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // n)
    means = np.empty(n_boot)
    for lo in range(0, n_boot, chunk):
        c = min(chunk, n_boot - lo)
        means[lo : lo + c] = xs[start + rng.integers(0, size, size=(c, n))].mean(axis=1)
    return means


def _interval(estimate: float, means: np.ndarray, n: int, level: float, scale: float) -> Interval:
    alpha = 1 - level
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(scale * estimate), float(scale * low), float(scale * high), int(n), float(level))


def _vector(x, name: str) -> np.ndarray:
    """``x`` as a finite, non-empty 1-D float array, or ValueError naming ``name``."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one value, got 0")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} must be finite, got {arr[bad[0]]} at index {bad[0]}")
    return arr


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.size != b.size:
        raise ValueError(f"a and b must have the same length (paired questions), got {a.size} and {b.size}")
    return a, b


def _strata_codes(strata, n: int) -> np.ndarray | None:
    if strata is None:
        return None
    s = np.asarray(strata)
    if s.ndim != 1 or s.size != n:
        raise ValueError(f"strata must be 1-D with one label per question ({n}), got shape {s.shape}")
    return np.unique(s, return_inverse=True)[1].reshape(-1)


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_bootstrap_args(n_boot, level) -> None:
    _check_positive_int(n_boot, "n_boot")
    if not (isinstance(level, (int, float, np.floating)) and 0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
