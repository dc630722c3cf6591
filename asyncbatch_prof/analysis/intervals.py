"""Interval arithmetic over numpy arrays of [start, end) times in µs (floats, ns fraction kept).

An "interval set" is a pair (starts, ends) of sorted, disjoint, non-touching intervals, as returned
by :func:`union`. Everything here is vectorized: sort + cumulative max for unions, sweep lines for
coverage counts.
"""

from __future__ import annotations

import numpy as np

EMPTY = (np.zeros(0), np.zeros(0))


def union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals (µs) as a disjoint sorted interval set; touching intervals merge (as in HTA)."""
    starts = np.asarray(starts, dtype=np.float64)
    order = np.argsort(starts, kind="stable")
    groups = sorted_groups(starts[order], np.asarray(ends, dtype=np.float64)[order])
    return groups[0], groups[1]


def sorted_groups(s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge intervals already sorted by start (µs): (group starts, group ends, first row, row of the max end).

    A new group begins where a start lies after the running maximum end (sort + cumulative max).
    """
    if s.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0), np.zeros(0), empty, empty
    e = np.maximum(e, s)
    reach = np.maximum.accumulate(e)
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, s.size - 1)
    # the row whose end is the group's end: the op that ended just before the following gap
    group_of = np.cumsum(new) - 1
    is_reach = e == reach[last][group_of]
    ender = np.full(first.size, -1, dtype=np.int64)
    rows = np.flatnonzero(is_reach)
    ender[group_of[rows[::-1]]] = rows[::-1]  # first such row per group (assignment keeps the last write)
    return s[first], reach[last], first, ender


def length(iset: tuple[np.ndarray, np.ndarray]) -> float:
    """Total length (µs) of an interval set."""
    return float(np.sum(iset[1] - iset[0]))


def clip(iset: tuple[np.ndarray, np.ndarray], lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of an interval set inside [lo, hi) (µs); empty pieces dropped."""
    s = np.clip(iset[0], lo, hi)
    e = np.clip(iset[1], lo, hi)
    keep = e > s
    return s[keep], e[keep]


def complement(iset: tuple[np.ndarray, np.ndarray], lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The maximal sub-intervals of [lo, hi) not covered by the (disjoint, sorted) interval set (µs)."""
    s, e = clip(iset, lo, hi)
    gs = np.concatenate(([lo], e))
    ge = np.concatenate((s, [hi]))
    keep = ge > gs
    return gs[keep], ge[keep]


def intersection_length(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """|A ∩ B| in µs for two interval sets: |A| + |B| − |A ∪ B|."""
    both = union(np.concatenate((a[0], b[0])), np.concatenate((a[1], b[1])))
    return max(0.0, length(a) + length(b) - length(both))


def subtract(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A minus B for two interval sets (µs), as an interval set."""
    if a[0].size == 0 or b[0].size == 0:
        return a
    lo = float(min(a[0][0], b[0][0]))
    hi = float(max(a[1][-1], b[1][-1]))
    not_b = complement(b, lo, hi)
    return intersect(a, not_b)


def intersect(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A ∩ B for two interval sets (µs), as an interval set (a sweep over both sets' boundaries)."""
    if a[0].size == 0 or b[0].size == 0:
        return EMPTY
    return coverage_at_least([a, b], 2)


def coverage_at_least(sets: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Where at least ``k`` of the given interval sets cover the time at once (µs), as an interval set.

    Sweep line: +1 at every start, −1 at every end; ends sort before starts at the same time so that
    touching intervals do not count as running together.
    """
    starts = np.concatenate([s[0] for s in sets]) if sets else np.zeros(0)
    ends = np.concatenate([s[1] for s in sets]) if sets else np.zeros(0)
    if starts.size == 0:
        return EMPTY
    t = np.concatenate((ends, starts))
    step = np.concatenate((-np.ones(ends.size, dtype=np.int64), np.ones(starts.size, dtype=np.int64)))
    order = np.lexsort((step, t))
    t, step = t[order], step[order]
    count = np.cumsum(step)
    inside = count >= k
    # a run of "inside" begins where count reaches k and ends at the next time it drops below
    begin = np.flatnonzero(inside & np.concatenate(([True], ~inside[:-1])))
    end = np.flatnonzero(~inside & np.concatenate(([False], inside[:-1])))
    s, e = t[begin], t[end]
    keep = e > s
    return s[keep], e[keep]


def covered_before(iset: tuple[np.ndarray, np.ndarray], t: np.ndarray) -> np.ndarray:
    """Length (µs) of the interval set that lies before each time in ``t`` (vectorized prefix sums)."""
    s, e = iset
    t = np.asarray(t, dtype=np.float64)
    if s.size == 0:
        return np.zeros(t.shape)
    prefix = np.concatenate(([0.0], np.cumsum(e - s)))
    k = np.searchsorted(s, t, side="right") - 1
    inside = np.clip(t - s[np.maximum(k, 0)], 0.0, (e - s)[np.maximum(k, 0)])
    return np.where(k >= 0, prefix[np.maximum(k, 0)] + inside, 0.0)
