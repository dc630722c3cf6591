"""Repeated measured passes of one run, reduced to one metrics.json: medians, spread and an interval.

For each contract metric measured by every repeat, ``metrics`` holds the median of the repeats (per
window for a windowed metric; a yes/no metric holds the worse answer of any repeat, so one throttled
repeat marks the run throttled) and ``repeats.metrics`` holds the per-repeat values, min, max and a 95%
interval of the median. The interval is distribution-free: for n >= 6 the order statistics
``[x_(k), x_(n+1-k)]`` with the largest k whose binomial coverage is still >= 95%; below 6 repeats no
pair of order statistics reaches 95%, so it is the min-max range with its (lower) coverage stated.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any, Mapping, Sequence

from asyncbatch_prof.analysis.contract import METRICS, WINDOWS, format_value, lookup

MIN_N_ORDER_STATISTICS = 6  # the smallest n whose [x_(1), x_(n)] covers the median with >= 95%
# A spread (max - min) wider than this warns: relative to the median for throughput, in points for idle share
WIDE_SPREAD = {"tokens_per_s": ("relative_pct", 10.0), "gpu_idle_pct": ("points", 2.0)}


def median_interval(values: Sequence[float]) -> dict[str, Any]:
    """A 95% interval of the median of ``values`` (same unit), with its method and exact coverage (0-1)."""
    xs = sorted(values)
    n = len(xs)
    if n < MIN_N_ORDER_STATISTICS:
        return {"ci95": [xs[0], xs[-1]], "ci_method": "min-max (fewer than 6 repeats: no order-statistic "
                "interval reaches 95%)", "ci_coverage": round(1 - 2 * 0.5 ** n, 4) if n > 1 else 0.0}
    k = 1  # P(median in [x_(k), x_(n+1-k)]) = 1 - 2 * P(Binomial(n, 1/2) <= k - 1)
    while 1 - 2 * _binom_cdf(k, n) >= 0.95:
        k += 1
    return {"ci95": [xs[k - 1], xs[n - k]], "ci_method": f"order statistics x_({k}), x_({n + 1 - k})",
            "ci_coverage": round(1 - 2 * _binom_cdf(k - 1, n), 4)}


def _binom_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def spread_of(values: Sequence[float]) -> dict[str, Any]:
    """n, the per-repeat values (in run order), median, min, max and the 95% interval of the median."""
    return {"n": len(values), "values": list(values), "median": float(statistics.median(values)),
            "min": min(values), "max": max(values), **median_interval(values)}


def _value_keys(doc: Mapping[str, Any], name: str) -> list[str]:
    """The qualified names of a metric's values in one document: ``name.step``/``name.kernel`` or ``name``."""
    value = doc.get("metrics", {}).get(name)
    if isinstance(value, Mapping):
        return [f"{name}.{w}" for w in WINDOWS if value.get(w) is not None]
    return [name] if value is not None else []


def merge_repeats(docs: Sequence[dict[str, Any]], representative: int, order: Sequence[int]) -> dict[str, Any]:
    """One metrics.json from the repeats' documents (run order): the ``representative`` repeat's document
    (its sections, its absences) with each contract metric measured by every repeat replaced by the
    median, and a ``repeats`` section. ``order``: each repeat's position in the whole run (alternation)."""
    merged = copy.deepcopy(docs[representative])
    section: dict[str, Any] = {"n": len(docs), "representative": representative + 1, "order": list(order),
                               "metrics": {}, "not_in_every_repeat": []}
    for name, metric in METRICS.items():
        keys = _value_keys(merged, name)
        for doc in docs:
            keys = [k for k in keys if k in _value_keys(doc, name)]
        missing = set().union(*(_value_keys(d, name) for d in docs)) - set(keys)
        section["not_in_every_repeat"] += sorted(missing)
        for key in keys:
            values = [lookup(doc, key)[0] for doc in docs]
            if metric.unit == "bool":
                worse = any(values) if metric.better == "lower" else all(values)
                _store(merged, key, bool(worse))
                section["metrics"][key] = {"n": len(values), "values": [bool(v) for v in values]}
                continue
            stats = spread_of(values)
            _store(merged, key, stats["median"])
            section["metrics"][key] = stats
    merged["repeats"] = section
    return merged


def _store(doc: dict[str, Any], key: str, value: Any) -> None:
    name, _, window = key.partition(".")
    if window:
        doc["metrics"][name][window] = value
    else:
        doc["metrics"][name] = value


def repeat_stats(doc: Mapping[str, Any], qualified: str) -> dict[str, Any] | None:
    """The ``repeats`` entry of a metric (qualified as in :func:`lookup`), None without repeats."""
    section = (doc.get("repeats") or {}).get("metrics") or {}
    if qualified in section:
        return section[qualified]
    metric_name, _, window = qualified.partition(".")
    if window or not METRICS.get(metric_name, None) or not METRICS[metric_name].windowed:
        return None
    value = doc.get("metrics", {}).get(metric_name)  # the unqualified name: the window lookup() takes
    for w in WINDOWS:
        if isinstance(value, Mapping) and value.get(w) is not None:
            return section.get(f"{metric_name}.{w}")
    return None


def format_range(doc: Mapping[str, Any], qualified: str) -> str | None:
    """``32,900-33,400``: the repeats' min-max range in the metric's format; None without repeats."""
    stats = repeat_stats(doc, qualified)
    if not stats or "min" not in stats:
        return None
    unit = METRICS[qualified.partition(".")[0]].unit
    lo, hi = (format_value(qualified, stats[k]).removesuffix(f" {unit}").removesuffix(unit) for k in ("min", "max"))
    return f"{lo}-{hi}"


def format_spread(doc: Mapping[str, Any], qualified: str) -> str:
    """``33,113 tok/s (32,900-33,400, n=3)``: the value, and with repeats their min-max range and count."""
    value, _ = lookup(doc, qualified)
    text = format_value(qualified, value)
    span = format_range(doc, qualified) if value is not None else None
    return text if span is None else f"{text} ({span}, n={repeat_stats(doc, qualified)['n']})"


def spread_warnings(doc: Mapping[str, Any]) -> list[str]:
    """One line per metric whose repeats spread wider than :data:`WIDE_SPREAD` allows (empty: none)."""
    lines = []
    for name, (kind, limit) in WIDE_SPREAD.items():
        stats = repeat_stats(doc, name)
        if not stats or "min" not in stats:
            continue
        width = stats["max"] - stats["min"]
        if kind == "relative_pct":
            if stats["median"] == 0:
                continue
            width = 100 * width / abs(stats["median"])
        if width > limit:
            unit = "% of the median" if kind == "relative_pct" else " points"
            lines.append(f"{name} varies widely across {stats['n']} repeats: max-min is {width:.1f}{unit} "
                         f"(over {limit:g}{unit}); the machine was not steady")
    return lines


def representative(docs: Sequence[Mapping[str, Any]]) -> int:
    """The index of the repeat whose tokens/s is the median (the lower middle for an even count): its trace,
    samples and report stand for the run. The first repeat when tokens/s is absent from any."""
    rates = [lookup(doc, "tokens_per_s")[0] for doc in docs]
    if any(r is None for r in rates):
        return 0
    ranked = sorted(range(len(docs)), key=lambda i: (rates[i], i))
    return ranked[(len(docs) - 1) // 2]


def noise_between(base_doc: Mapping[str, Any], doc: Mapping[str, Any], metric: str) -> dict | None:
    """Whether ``doc``'s repeats of ``metric`` differ from ``base_doc``'s beyond run-to-run noise: the gate's
    Mann-Whitney test (:func:`~asyncbatch_prof.analysis.stats.noise_verdict`); None when neither run has
    repeats of it."""
    from asyncbatch_prof.analysis.stats import noise_verdict

    a, b = repeat_stats(base_doc, metric), repeat_stats(doc, metric)
    if not (a and "values" in a and "min" in a) and not (b and "values" in b and "min" in b):
        return None
    values = [s["values"] if s and "min" in s else [] for s in (a, b)]
    if not values[0] or not values[1]:  # one side measured once: the other's spread says nothing about it
        values = [v or [None] for v in values]
        return {"verdict": "cannot tell", "p_value": None, "n": [len(v) for v in values],
                "reason": "only one side has repeats (abprof run --repeats N on both)"}
    return noise_verdict(*values)
