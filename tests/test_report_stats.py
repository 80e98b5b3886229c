"""Paired statistics: bootstrap CIs of a mean and of a paired difference, exact McNemar, sign-flip permutation test."""

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest

from tango.report.stats import (
    Interval,
    bootstrap_mean,
    mcnemar_exact,
    paired_bootstrap_diff,
    paired_test,
    sign_flip_test,
)

pytestmark = pytest.mark.unit

B = 4000  # bootstrap replicates in tests: enough for stable percentiles, fast


def _bernoulli(p, n, seed):
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def _discordant(n01, n10, n11=7, n00=5):
    """Paired correctness with the given discordant counts (n01: a wrong, b right), shuffled together."""
    a = np.array([0] * n01 + [1] * n10 + [1] * n11 + [0] * n00, dtype=bool)
    b = np.array([1] * n01 + [0] * n10 + [1] * n11 + [0] * n00, dtype=bool)
    perm = np.random.default_rng(n01 * 1000 + n10).permutation(a.size)
    return a[perm], b[perm]


# ---- bootstrap_mean --------------------------------------------------------------------------------------------------


def test_bootstrap_mean_estimate_and_ci_contain_mean():
    x = _bernoulli(0.6, 300, seed=1)
    iv = bootstrap_mean(x, n_boot=B)
    assert isinstance(iv, Interval)
    assert iv.estimate == pytest.approx(100 * x.mean())
    assert iv.low < iv.estimate < iv.high
    assert (iv.n, iv.level) == (300, 0.95)
    assert bootstrap_mean(x, n_boot=B, scale=1.0).estimate == pytest.approx(x.mean())


def test_bootstrap_width_shrinks_like_inverse_sqrt_n():
    small = bootstrap_mean(_bernoulli(0.6, 100, seed=2), n_boot=B)
    large = bootstrap_mean(_bernoulli(0.6, 1600, seed=3), n_boot=B)
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 3.2 < ratio < 4.8  # sqrt(1600 / 100) = 4


def test_bootstrap_is_reproducible_for_a_seed_and_differs_across_seeds():
    x = _bernoulli(0.5, 250, seed=4)
    assert bootstrap_mean(x, n_boot=B, seed=7) == bootstrap_mean(x, n_boot=B, seed=7)
    first, other = bootstrap_mean(x, n_boot=B, seed=7), bootstrap_mean(x, n_boot=B, seed=8)
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)


def test_bootstrap_matches_normal_approximation_for_bernoulli():
    n = 400
    x = _bernoulli(0.7, n, seed=5)
    p = x.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    iv = bootstrap_mean(x, n_boot=B)
    assert iv.low == pytest.approx(100 * (p - half), abs=1.0)
    assert iv.high == pytest.approx(100 * (p + half), abs=1.0)


def test_bootstrap_level_widens_the_interval():
    x = _bernoulli(0.5, 200, seed=6)
    narrow, wide = bootstrap_mean(x, n_boot=B, level=0.8), bootstrap_mean(x, n_boot=B, level=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_constant_scores_collapse_the_interval():
    iv = bootstrap_mean(np.full(50, 0.7), n_boot=B)
    assert iv.low == pytest.approx(iv.estimate) and iv.high == pytest.approx(iv.estimate)
    assert iv.estimate == pytest.approx(70.0)


def test_bootstrap_chunks_many_replicates_for_many_questions():
    # 3000 x 10_000 indices would be 240 MB in one draw; chunked it must still give n_boot replicates of the right mean
    x = _bernoulli(0.55, 3000, seed=9)
    iv = bootstrap_mean(x, n_boot=10_000)
    half = 100 * 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert iv.high - iv.low == pytest.approx(2 * half, rel=0.1)


# ---- stratified bootstrap --------------------------------------------------------------------------------------------


def test_stratified_bootstrap_keeps_stratum_sizes():
    x = np.array([1.0] * 60 + [0.0] * 140)
    strata = np.array(["A"] * 60 + ["B"] * 140)
    perm = np.random.default_rng(0).permutation(x.size)  # strata interleaved, not contiguous
    x, strata = x[perm], strata[perm]
    stratified = bootstrap_mean(x, strata=strata, n_boot=B)
    plain = bootstrap_mean(x, n_boot=B)
    assert stratified.low == stratified.high == stratified.estimate == pytest.approx(30.0)
    assert plain.high - plain.low > 5.0


def test_stratified_bootstrap_with_integer_strata_and_variance_within():
    rng = np.random.default_rng(10)
    strata = rng.integers(0, 3, 600)
    x = (rng.random(600) < np.array([0.2, 0.5, 0.9])[strata]).astype(float)
    stratified = bootstrap_mean(x, strata=strata, n_boot=B)
    plain = bootstrap_mean(x, n_boot=B)
    assert stratified.estimate == plain.estimate
    assert stratified.low < stratified.estimate < stratified.high
    # removing the between-strata variance makes the CI narrower
    assert stratified.high - stratified.low < plain.high - plain.low


# ---- paired_bootstrap_diff -------------------------------------------------------------------------------------------


def test_paired_diff_of_identical_runs_is_exactly_zero():
    a = _bernoulli(0.6, 150, seed=11)
    iv = paired_bootstrap_diff(a, a.copy(), n_boot=B)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)


def test_paired_diff_detects_ten_flips_out_of_200():
    a = _bernoulli(0.6, 200, seed=12)
    a[:10] = 1.0
    b = a.copy()
    b[:10] = 0.0  # 10 questions right in a, wrong in b
    iv = paired_bootstrap_diff(a, b, n_boot=B)
    assert iv.estimate == pytest.approx(5.0)
    assert 0.0 < iv.low < iv.estimate < iv.high
    assert paired_bootstrap_diff(b, a, n_boot=B).estimate == pytest.approx(-5.0)


def test_pairing_narrows_the_interval_for_correlated_runs():
    rng = np.random.default_rng(13)
    n = 500
    a = (rng.random(n) < 0.6).astype(float)
    b = np.where(rng.random(n) < 0.05, 1 - a, a)  # b agrees with a on ~95 % of the questions
    paired = paired_bootstrap_diff(a, b, n_boot=B)
    # the same difference with a and b resampled independently (ignores the pairing)
    boot = np.random.default_rng(0)
    diffs = a[boot.integers(0, n, (B, n))].mean(1) - b[boot.integers(0, n, (B, n))].mean(1)
    lo, hi = 100 * np.quantile(diffs, [0.025, 0.975])
    assert lo < paired.estimate < hi
    assert (paired.high - paired.low) < 0.5 * (hi - lo)


def test_paired_diff_with_strata_is_reproducible():
    a, b = _bernoulli(0.6, 300, seed=14), _bernoulli(0.5, 300, seed=15)
    strata = np.repeat([0, 1, 2], 100)
    first = paired_bootstrap_diff(a, b, strata=strata, n_boot=B, seed=3)
    assert first == paired_bootstrap_diff(a, b, strata=strata, n_boot=B, seed=3)
    assert first.estimate == pytest.approx(100 * (a.mean() - b.mean()))


# ---- mcnemar_exact ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n01,n10", [(0, 0), (0, 5), (5, 0), (1, 1), (3, 12), (12, 3), (40, 60), (50, 50), (7, 8)])
def test_mcnemar_matches_scipy_binomtest(n01, n10):
    a, b = _discordant(n01, n10)
    m = n01 + n10
    expected = 1.0 if m == 0 else binomtest(min(n01, n10), m, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-10, abs=0)
    assert mcnemar_exact(b, a) == mcnemar_exact(a, b)


def test_mcnemar_known_values():
    assert mcnemar_exact(*_discordant(0, 0)) == 1.0
    assert mcnemar_exact(*_discordant(0, 5)) == pytest.approx(2 / 32)
    assert mcnemar_exact(*_discordant(2, 3)) == 1.0  # 2 * P[X <= 2] > 1 is clipped


@pytest.mark.parametrize("n01,n10", [(9_900, 10_100), (9_000, 11_000), (9_700, 10_000)])
def test_mcnemar_large_discordant_counts_match_scipy(n01, n10):
    a, b = _discordant(n01, n10, n11=300, n00=200)
    expected = binomtest(min(n01, n10), n01 + n10, 0.5).pvalue
    assert 0 < expected < 1
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-8)


def test_mcnemar_accepts_zero_one_ints_and_rejects_other_values():
    a, b = _discordant(3, 12)
    assert mcnemar_exact(a.astype(int), b.astype(int)) == mcnemar_exact(a, b)
    with pytest.raises(ValueError, match=r"a must be boolean or 0/1, got 0.5 at index 1"):
        mcnemar_exact([1, 0.5, 0], [1, 1, 0])


# ---- sign_flip_test --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n01,n10", [(2, 9), (5, 5), (0, 6), (4, 14)])
def test_sign_flip_exact_equals_mcnemar_on_binary_differences(n01, n10):
    a, b = _discordant(n01, n10)
    d = a.astype(float) - b.astype(float)  # +-1 on discordant questions, 0 elsewhere: <= 20 non-zero -> exact
    assert sign_flip_test(d) == pytest.approx(mcnemar_exact(a, b), rel=1e-12)


def test_sign_flip_monte_carlo_approximates_mcnemar():
    a, b = _discordant(15, 30, n11=100, n00=50)  # 45 non-zero differences -> Monte Carlo
    d = a.astype(float) - b.astype(float)
    exact = mcnemar_exact(a, b)
    assert 0.01 < exact < 0.1
    assert sign_flip_test(d, n_perm=50_000) == pytest.approx(exact, abs=0.01)


def test_sign_flip_exact_matches_brute_force_on_fractional_differences():
    rng = np.random.default_rng(16)
    d = np.round(rng.uniform(-1, 1, 12) * 3) / 3 + 0.1  # seed-averaged scores with float ties between sign vectors
    d[[2, 7]] = 0.0
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d.size)))
    sums = np.abs(signs @ d)
    expected = np.mean(sums >= abs(d.sum()) - 1e-9)
    assert sign_flip_test(d) == pytest.approx(expected, rel=1e-12)


def test_sign_flip_all_zero_differences_give_one():
    assert sign_flip_test(np.zeros(30)) == 1.0


def test_sign_flip_clear_effect_is_significant_and_reproducible():
    rng = np.random.default_rng(17)
    d = np.clip(0.3 + 0.3 * rng.standard_normal(60), -1, 1)  # fractional, 60 non-zero -> Monte Carlo
    p = sign_flip_test(d, n_perm=20_000, seed=1)
    assert p < 1e-3
    assert p >= 1 / 20_001  # Monte Carlo p never reaches 0
    assert sign_flip_test(d, n_perm=20_000, seed=1) == p
    small = d - d.mean() + 0.02  # weak effect: Monte Carlo p depends on the seed
    assert sign_flip_test(small, n_perm=5_000, seed=1) != sign_flip_test(small, n_perm=5_000, seed=2)


def test_sign_flip_is_symmetric_in_sign():
    d = np.clip(0.1 + 0.4 * np.random.default_rng(18).standard_normal(40), -1, 1)
    assert sign_flip_test(d, n_perm=5_000) == sign_flip_test(-d, n_perm=5_000)


# ---- paired_test -----------------------------------------------------------------------------------------------------


def test_paired_test_dispatches_on_binary_versus_fractional_scores():
    a, b = _discordant(3, 12)
    p, name = paired_test(a.astype(float), b.astype(float))
    assert name == "mcnemar_exact" and p == mcnemar_exact(a, b)
    fa, fb = a * 2 / 3, b.astype(float)  # scores averaged over 3 seeds
    p, name = paired_test(fa, fb, n_perm=2_000, seed=4)
    assert name == "sign_flip" and p == sign_flip_test(fa - fb, n_perm=2_000, seed=4)


def test_paired_test_rejects_unknown_keyword():
    with pytest.raises(TypeError, match="n_boot"):
        paired_test([1, 0], [0, 1], n_boot=10)


# ---- validation ------------------------------------------------------------------------------------------------------


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match=r"a and b must have the same length.*got 5 and 4"):
        paired_bootstrap_diff(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match=r"got 3 and 2"):
        mcnemar_exact([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"strata .*\(10\), got shape \(9,\)"):
        bootstrap_mean(np.ones(10), strata=np.zeros(9))


@pytest.mark.parametrize("level", [1.5, 0.0, 1.0, float("nan")])
def test_bad_level_is_rejected(level):
    with pytest.raises(ValueError, match=rf"level must be in \(0, 1\), got {level}"):
        bootstrap_mean(np.ones(10), level=level)


def test_two_dimensional_input_is_rejected():
    with pytest.raises(ValueError, match=r"scores must be 1-D, got shape \(2, 3\)"):
        bootstrap_mean(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"d must be 1-D"):
        sign_flip_test(np.ones((4, 1)))


def test_non_finite_and_empty_input_is_rejected():
    with pytest.raises(ValueError, match=r"scores must be finite, got nan at index 3"):
        bootstrap_mean([1.0, 0.0, 1.0, np.nan])
    with pytest.raises(ValueError, match=r"b must be finite, got inf at index 0"):
        paired_bootstrap_diff([1.0], [np.inf])
    with pytest.raises(ValueError, match=r"scores must hold at least one value"):
        bootstrap_mean([])


@pytest.mark.parametrize("n_boot", [0, 2.5])
def test_bad_replicate_counts_are_rejected(n_boot):
    with pytest.raises(ValueError, match=rf"n_boot must be an integer >= 1, got {n_boot}"):
        bootstrap_mean(np.ones(10), n_boot=n_boot)
    with pytest.raises(ValueError, match="n_perm must be an integer >= 1, got 0"):
        sign_flip_test(np.ones(3), n_perm=0)
