"""Aggregation of repeats and the Mann-Whitney U test (cross-checked against scipy)."""

from __future__ import annotations

import random

import pytest

from asyncbatch_prof.analysis.stats import aggregate, mann_whitney_u, min_possible_p


@pytest.mark.parametrize("how, expected", [("median", 3.0), ("mean", 4.0), ("min", 1.0), ("max", 10.0)])
def test_aggregate(how, expected):
    assert aggregate([10.0, 1.0, 3.0, 2.0, 4.0], how) == expected


def test_aggregate_rejects_unknown_and_empty():
    with pytest.raises(ValueError):
        aggregate([1.0], "pessimistic")
    with pytest.raises(ValueError):
        aggregate([], "median")


def test_exact_small_sample_by_hand():
    # 3 vs 3, every x above every y: U = 9, and only 1 of the C(6,3) = 20 orderings is as extreme.
    u, p = mann_whitney_u([4, 5, 6], [1, 2, 3], "greater")
    assert u == 9 and p == pytest.approx(1 / 20)
    assert min_possible_p(3, 3) == pytest.approx(0.05)
    u, p = mann_whitney_u([4, 5, 6], [1, 2, 3], "less")
    assert p == pytest.approx(1.0)
    _, p = mann_whitney_u([4, 5, 6], [1, 2, 3], "two-sided")
    assert p == pytest.approx(0.1)


def test_all_tied_is_never_significant():
    _, p = mann_whitney_u([2.0, 2.0, 2.0], [2.0, 2.0, 2.0], "greater")
    assert p == 1.0


def test_exact_refuses_ties():
    with pytest.raises(ValueError):
        mann_whitney_u([1, 2, 2], [2, 3, 4], method="exact")


def _cases():
    rng = random.Random(7)
    cases = []
    for m, n in [(3, 3), (3, 5), (4, 4), (5, 7), (8, 6), (10, 12)]:
        x = [round(rng.gauss(10, 2), 3) for _ in range(m)]
        y = [round(rng.gauss(11, 2), 3) for _ in range(n)]
        cases.append((x, y))
    cases.append(([1, 2, 2, 3, 3, 3], [2, 3, 4, 4, 5]))  # ties: asymptotic only
    cases.append(([5.0, 5.0, 6.0, 7.0], [5.0, 6.0, 6.0, 8.0, 9.0]))
    return cases


@pytest.mark.parametrize("x, y", _cases())
@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_matches_scipy(x, y, alternative):
    stats = pytest.importorskip("scipy.stats")
    has_ties = len(set(x + y)) < len(x + y)
    methods = ["asymptotic"] if has_ties else ["exact", "asymptotic"]
    for method in methods:
        u, p = mann_whitney_u(x, y, alternative, method=method)
        ref = stats.mannwhitneyu(x, y, alternative=alternative, method=method)
        assert u == pytest.approx(ref.statistic), method
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12), method


def test_auto_uses_exact_without_ties_and_asymptotic_with():
    x, y = [1.0, 2.5, 3.0, 4.0], [3.5, 5.0, 6.0, 7.0]
    assert mann_whitney_u(x, y, "less") == mann_whitney_u(x, y, "less", method="exact")
    x2 = [1.0, 3.0, 3.0, 4.0]
    assert mann_whitney_u(x2, y, "less") == mann_whitney_u(x2, y, "less", method="asymptotic")
