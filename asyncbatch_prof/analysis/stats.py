"""Aggregating repeated runs and the Mann-Whitney U test, with no scipy at run time (the gate's
budgets and compare's noise verdicts both rest on it).

The gate compares N head runs with M baseline runs. Each side is reduced to one number
(:func:`aggregate`, median by default), and, when both sides have enough samples, the change must
also be significant by a one-sided Mann-Whitney U test before it fails the build (asv does the
same: a change over the factor that is not significant is noise, shown with ``~``).
"""

from __future__ import annotations

import math
import statistics
from functools import lru_cache
from typing import Sequence

AGGREGATES = ("median", "mean", "min", "max")

# Exact null distribution up to this many samples in all (without ties); the normal approximation
# with tie correction above it. The count table has at most (n/2)**2 entries per row, so 50 is cheap.
EXACT_MAX_TOTAL = 50


def aggregate(values: Sequence[float], how: str = "median") -> float:
    """Reduce repeated measurements of one metric to one number (same unit as the values)."""
    if not values:
        raise ValueError("no values to aggregate")
    if how == "median":
        return float(statistics.median(values))
    if how == "mean":
        return float(statistics.fmean(values))
    if how == "min":
        return float(min(values))
    if how == "max":
        return float(max(values))
    raise ValueError(f"unknown aggregate {how!r} (choose from {', '.join(AGGREGATES)})")


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Mid-ranks (1-based, ties share their average rank) and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@lru_cache(maxsize=256)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """Number of orderings of m x's and n y's giving U = 0..m*n (U counts pairs with x > y)."""
    # Recurrence on the largest element: it is an x (adds n to U) or a y (adds nothing).
    if m == 0 or n == 0:
        return (1,)
    with_x = _u_counts(m - 1, n)
    with_y = _u_counts(m, n - 1)
    counts = [0] * (m * n + 1)
    for u, c in enumerate(with_y):
        counts[u] += c
    for u, c in enumerate(with_x):
        counts[u + n] += c
    return tuple(counts)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(
    x: Sequence[float], y: Sequence[float], alternative: str = "two-sided", method: str = "auto"
) -> tuple[float, float]:
    """Mann-Whitney U test of samples ``x`` and ``y``; returns ``(U of x, p-value)``.

    ``alternative``: "greater" (x tends to be larger than y), "less", or "two-sided".
    ``method``: "exact" (the permutation distribution; only without ties), "asymptotic" (normal
    approximation with tie correction and a 0.5 continuity correction), or "auto" (exact when there
    are no ties and at most ``EXACT_MAX_TOTAL`` samples in all). U and p match
    ``scipy.stats.mannwhitneyu`` with the same method.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"unknown alternative {alternative!r}")
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("both samples need at least one value")
    ranks, ties = _ranks([*x, *y])
    u_x = sum(ranks[:m]) - m * (m + 1) / 2
    has_ties = any(t > 1 for t in ties)
    if method == "auto":
        method = "exact" if not has_ties and m + n <= EXACT_MAX_TOTAL else "asymptotic"
    if method == "exact":
        if has_ties:
            raise ValueError("the exact test needs samples without ties")
        return u_x, _exact_p(u_x, m, n, alternative)
    if method != "asymptotic":
        raise ValueError(f"unknown method {method!r}")
    return u_x, _asymptotic_p(u_x, m, n, ties, alternative)


def _exact_p(u_x: float, m: int, n: int, alternative: str) -> float:
    counts = _u_counts(m, n)
    total = math.comb(m + n, m)
    u = int(round(u_x))
    greater = sum(counts[u:]) / total  # P(U >= u)
    less = sum(counts[: u + 1]) / total  # P(U <= u)
    if alternative == "greater":
        return greater
    if alternative == "less":
        return less
    return min(1.0, 2 * min(greater, less))


def _asymptotic_p(u_x: float, m: int, n: int, ties: list[int], alternative: str) -> float:
    total = m + n
    mu = m * n / 2
    tie_term = sum(t**3 - t for t in ties) / (total * (total - 1))
    var = m * n / 12 * ((total + 1) - tie_term)
    if var <= 0:  # every value the same: no evidence of any difference
        return 1.0
    sd = math.sqrt(var)
    if alternative == "greater":
        return _normal_sf((u_x - mu - 0.5) / sd)
    if alternative == "less":
        return _normal_sf((m * n - u_x - mu - 0.5) / sd)
    u = max(u_x, m * n - u_x)
    return min(1.0, 2 * _normal_sf((u - mu - 0.5) / sd))


def min_possible_p(m: int, n: int) -> float:
    """The smallest one-sided p an exact test can reach with m and n samples: 1 / C(m+n, m)."""
    return 1.0 / math.comb(m + n, m)


def noise_verdict(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict:
    """Whether repeats ``b`` differ from repeats ``a`` beyond run-to-run noise: a two-sided Mann-Whitney U
    test (no direction was set in advance, unlike a gate budget). ``verdict``: "beyond noise" (p <= alpha),
    "within noise" (not significant), or "cannot tell": fewer than 2 values on a side, or every value of
    one side beyond every value of the other with counts whose smallest two-sided p exceeds alpha (3 + 3
    repeats reach 0.10 at best)."""
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        return {"verdict": "cannot tell", "p_value": None, "n": [m, n],
                "reason": "needs repeats on both sides (abprof run --repeats N)"}
    _, p = mann_whitney_u(b, a, "two-sided")
    floor = min(1.0, 2 * min_possible_p(m, n))
    if p <= alpha:
        verdict, reason = "beyond noise", f"p={p:.3g}"
    elif floor > alpha and p <= floor * (1 + 1e-9):
        verdict, reason = "cannot tell", (f"{m}+{n} repeats cannot reach p<={alpha:g} (smallest two-sided p "
                                          f"{floor:.2g}); p={p:.2g}")
    else:
        verdict, reason = "within noise", f"p={p:.2g}"
    return {"verdict": verdict, "p_value": p, "n": [m, n], "reason": reason}
