"""heed.stats against scipy.stats where the definitions coincide, and against slow literal references
(the loops the intervals were computed with before this module) on random inputs."""
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from heed.stats import (Interval, auc, bootstrap_mean, group_bootstrap, paired_bootstrap, percentile_interval,
                        resample_counts, resample_indices, spearman, stratified_bootstrap_means, two_level_bootstrap,
                        two_level_bootstrap_means)


def scipy_percentile(data, statistic, n_boot, seed, paired=False, vectorized=True):
    res = scipy.stats.bootstrap(data, statistic, n_resamples=n_boot, method="percentile", paired=paired,
                                vectorized=vectorized, rng=np.random.default_rng(seed))
    return tuple(res.confidence_interval)


# ---------------------------------------------------------------- scipy where the definitions coincide

@pytest.mark.parametrize("ci", [0.8, 0.95])
def test_mean_and_paired_difference_equal_scipy_percentile_bootstrap(ci):
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, size=73)
    b = a + rng.normal(0.2, 0.5, 73)
    ours = bootstrap_mean(a, 1500, ci, seed=3)
    ref = scipy.stats.bootstrap((a,), np.mean, n_resamples=1500, method="percentile", confidence_level=ci,
                                rng=np.random.default_rng(3))
    assert (ours.lo, ours.hi) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)
    ours = paired_bootstrap(a, b, 1500, ci, seed=3)
    ref = scipy.stats.bootstrap((a, b), lambda a, b, axis=-1: b.mean(axis) - a.mean(axis), n_resamples=1500,
                                method="percentile", confidence_level=ci, paired=True, rng=np.random.default_rng(3))
    assert (ours.lo, ours.hi) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)
    assert ours.estimate == pytest.approx((b - a).mean())


def test_spearman_equals_scipy_with_ties_and_its_row_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 90).astype(float)
    y = np.round(x + rng.normal(0, 2, 90))
    assert spearman(x, y, n_boot=0).estimate == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    ours = spearman(x, y, n_boot=250, seed=4)
    ref = scipy_percentile((x, y), lambda a, b: scipy.stats.spearmanr(a, b).statistic, 250, 4, paired=True, vectorized=False)
    assert (ours.lo, ours.hi) == pytest.approx(ref, abs=1e-10)


def test_auc_is_mann_whitney_u_over_n1_n0_and_its_row_bootstrap():
    rng = np.random.default_rng(2)
    s = np.round(rng.normal(size=150), 1)
    m = rng.random(150) < 0.3 + 0.2 * (s > 0)
    U = scipy.stats.mannwhitneyu(s[m], s[~m]).statistic
    assert auc(s, m, n_boot=0).estimate == pytest.approx(U / (m.sum() * (~m).sum()), abs=1e-12)

    def u_auc(a, lab):
        lab = lab.astype(bool)
        if lab.all() or not lab.any(): return np.nan
        return scipy.stats.mannwhitneyu(a[lab], a[~lab]).statistic / (lab.sum() * (~lab).sum())
    ours = auc(s, m, n_boot=200, seed=5)
    ref = scipy_percentile((s, m.astype(float)), u_auc, 200, 5, paired=True, vectorized=False)
    assert (ours.lo, ours.hi) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------- vectorised paths against the slow general one

groups_and_values = st.integers(2, 12).flatmap(lambda G: st.tuples(
    st.lists(st.integers(0, G - 1), min_size=G, max_size=40),        # the group of each row
    st.integers(0, 2 ** 16)))                                        # a seed for the values


@settings(max_examples=40, deadline=None)
@given(groups_and_values, st.integers(0, 2 ** 16))
def test_spearman_and_auc_over_groups_equal_the_literal_group_bootstrap(gv, seed):
    groups, vseed = gv
    groups = np.array(groups)
    rng = np.random.default_rng(vseed)
    x = rng.integers(0, 4, len(groups)).astype(float)                 # heavy ties on purpose
    y = x + rng.integers(-2, 3, len(groups))
    lab = rng.random(len(groups)) < 0.4

    def rho(ix):
        if np.ptp(x[ix]) == 0 or np.ptp(y[ix]) == 0: return np.nan
        return scipy.stats.spearmanr(x[ix], y[ix]).statistic

    def pairs_auc(ix):
        p, q = x[ix][lab[ix]], x[ix][~lab[ix]]
        if not len(p) or not len(q): return np.nan
        return np.mean((p[:, None] > q[None]) + 0.5 * (p[:, None] == q[None]))

    for fast, slow in ((spearman(x, y, groups, 60, seed=seed), group_bootstrap(rho, groups, 60, seed=seed)),
                       (auc(x, lab, groups, 60, seed=seed), group_bootstrap(pairs_auc, groups, 60, seed=seed))):
        assert fast.n == slow.n == len(np.unique(groups)) and fast.n_boot == slow.n_boot
        np.testing.assert_allclose(fast[:3], slow[:3], atol=1e-12, equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), st.integers(1, 4), st.integers(0, 2 ** 16))
def test_two_level_equals_its_literal_loop(sizes, n_seeds, seed):
    rng = np.random.default_rng(seed)
    strata = [rng.random((n_seeds, n)) for n in sizes]
    B = 25
    ref_rng = np.random.default_rng(seed)          # the documented draw order: all seed draws, then each stratum's examples
    seeds = ref_rng.integers(0, n_seeds, (B, n_seeds))
    examples = [ref_rng.integers(0, n, (B, n)) for n in sizes]
    ref = np.array([[np.mean([v[s][e[b]].mean() for s in seeds[b]]) for v, e in zip(strata, examples)] for b in range(B)])
    np.testing.assert_allclose(two_level_bootstrap_means(strata, B, seed), ref, atol=1e-12)


# ---------------------------------------------------------------- the loops the repository's intervals used before

def test_same_numbers_as_the_loops_it_replaced():
    """The intervals committed before heed.stats came from these loops (heed.probe, heed.evaluate, experiments 61/62):
    with the same seeds heed.stats draws the same resamples and gives the same intervals."""
    rng = np.random.default_rng(7)
    G = 60
    img = np.repeat(np.arange(G), rng.integers(4, 20, G))
    x, y = rng.random(len(img)), rng.random(len(img))
    lab = rng.random(len(img)) < 0.2

    def old_ranks(v):
        u, inv, cnt = np.unique(v, return_inverse=True, return_counts=True)
        return ((np.cumsum(cnt) - cnt) + (cnt - 1) / 2)[inv]
    members = [np.flatnonzero(img == k) for k in range(G)]

    def old_rho(ix):
        a, b = old_ranks(x[ix]), old_ranks(y[ix])
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum())
    r = np.random.default_rng(0)
    boot = [old_rho(np.concatenate([members[i] for i in r.integers(0, G, G)])) for _ in range(300)]
    assert spearman(x, y, img, 300, seed=0)[:3] == pytest.approx((old_rho(np.arange(len(x))), *np.quantile(boot, [0.025, 0.975])), abs=1e-12)

    def old_auc(ix):
        m, s = lab[ix], x[ix]
        n1, n0 = m.sum(), (~m).sum()
        return (old_ranks(s)[m].sum() - n1 * (n1 - 1) / 2) / (n1 * n0) if n1 and n0 else np.nan
    r = np.random.default_rng(0)      # experiment 61: one stream, rng.choice over the image ids
    boot = np.array([old_auc(np.concatenate([members[i] for i in r.choice(np.arange(G), G)])) for _ in range(300)])
    boot = boot[np.isfinite(boot)]
    assert auc(x, lab, img, 300, seed=np.random.default_rng(0))[:3] == pytest.approx(
        (old_auc(np.arange(len(x))), *np.quantile(boot, [0.025, 0.975])), abs=1e-12)

    v = rng.random(50); v[[3, 9]] = np.nan     # heed.probe.bootstrap_mean: NaNs dropped, one (n_boot, n) draw
    f = v[np.isfinite(v)]
    old = f[np.random.default_rng(0).integers(0, len(f), (2000, len(f)))].mean(1)
    assert bootstrap_mean(v, nan_policy="omit")[:3] == pytest.approx((f.mean(), *np.quantile(old, [0.025, 0.975])), abs=1e-12)

    # heed.evaluate.degradation_report: per category in order, one draw for teacher and student
    cats = [(rng.random(n) < 0.8).astype(float) for n in (30, 12, 45)]
    studs = [np.where(rng.random(len(t)) < 0.1, 1 - t, t) for t in cats]
    r = np.random.default_rng(0)
    old = []
    for t, s in zip(cats, studs):
        idx = r.integers(0, len(t), (500, len(t)))
        old.append(np.stack([t[idx].mean(1), s[idx].mean(1)], -1))
    np.testing.assert_array_equal(stratified_bootstrap_means([np.stack([t, s]) for t, s in zip(cats, studs)], 500, 0),
                                  np.stack(old, 1))


# ---------------------------------------------------------------- behaviour and errors

def test_group_resampling_widens_the_interval_of_clustered_data():
    "Tokens of one image share its value: resampling tokens pretends there are 20x more independent units."
    rng = np.random.default_rng(0)
    img = np.repeat(np.arange(30), 20)
    per_image = rng.normal(size=30)
    x = per_image[img] + rng.normal(0, 0.1, len(img))
    y = per_image[img] + rng.normal(0, 1.0, len(img))
    by_image, by_token = spearman(x, y, img, 500), spearman(x, y, None, 500)
    assert (by_image.hi - by_image.lo) > 2 * (by_token.hi - by_token.lo)
    assert by_image.n == 30 and by_token.n == len(img)


def test_draws_are_deterministic_and_stream_consistent():
    assert (resample_indices(9, 40, seed=1) == resample_indices(9, 40, seed=1)).all()
    g = np.random.default_rng(1)
    first, second = resample_indices(9, 15, g), resample_indices(9, 25, g)
    assert (np.vstack([first, second]) == resample_indices(9, 40, seed=1)).all()
    assert (resample_counts(9, 40, 1).sum(1) == 9).all()
    assert bootstrap_mean(np.arange(10.), seed=2) == bootstrap_mean(np.arange(10.), seed=2)


def test_undefined_replicates_are_left_out_and_counted():
    x = np.r_[np.zeros(9), 1.0]                    # a resample without the single 1 is constant: ρ undefined
    r = spearman(x, np.arange(10.), n_boot=400, seed=0)
    assert 0 < r.n_boot < 400 and np.isfinite([r.lo, r.hi]).all()
    assert all(math.isnan(v) for v in percentile_interval(np.full(5, np.nan)))


@pytest.mark.parametrize("call, message", [
    (lambda: bootstrap_mean([]), "values is empty"),
    (lambda: bootstrap_mean([1.0, np.nan]), "NaN value(s), first at index 1"),
    (lambda: bootstrap_mean([1.0, 2.0], ci=1.0), "strictly between 0 and 1"),
    (lambda: bootstrap_mean([1.0, 2.0], n_boot=-5), "n_boot=-5"),
    (lambda: bootstrap_mean([1.0, 2.0], seed="zero"), "expected an int or a numpy.random.Generator"),
    (lambda: paired_bootstrap([1.0], [1.0, 2.0]), "inputs differ in length: {'a': 1, 'b': 2}"),
    (lambda: spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], groups=[0, 1]), "groups has 2 labels for 3 values"),
    (lambda: spearman([], []), "x and y are empty"),
    (lambda: auc([0.1, 0.5], [0.0, 0.5]), "booleans or 0/1, got 0.5 at index 1"),
    (lambda: auc([0.1, np.nan], [0, 1]), "scores: 1 NaN value(s)"),
    (lambda: two_level_bootstrap_means([np.ones((2, 3)), np.ones((3, 3))]), "leading shapes differ"),
    (lambda: two_level_bootstrap(np.ones(4)), "(seeds, examples)"),
    (lambda: stratified_bootstrap_means([]), "no strata given"),
    (lambda: group_bootstrap(np.mean, []), "non-empty one-dimensional"),
])
def test_bad_input_fails_with_a_clear_message(call, message):
    with pytest.raises((ValueError, TypeError)) as e:
        call()
    assert message in str(e.value)


def test_omit_drops_incomplete_rows_everywhere():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0]); y = np.array([2.0, 1.0, 3.0, np.nan, 6.0])
    keep = np.isfinite(x) & np.isfinite(y)
    assert spearman(x, y, n_boot=50, nan_policy="omit") == spearman(x[keep], y[keep], n_boot=50)
    lab = np.array([0, 1, 1, 0, 1])
    assert auc(x, lab, n_boot=50, nan_policy="omit") == auc(x[np.isfinite(x)], lab[np.isfinite(x)], n_boot=50)
    assert isinstance(auc(x, lab, n_boot=0, nan_policy="omit"), Interval)
