"""Run the checks of a GateSpec on head runs and baseline runs and decide the verdict.

Verdict and exit code (the first that applies wins):

====  ===========  ==========================================================================
exit  verdict      when
====  ===========  ==========================================================================
2     (error)      usage or configuration error (raised as GateConfigError before any check)
3     no-baseline  a baseline is required (``--require-baseline``) but none was given, or a
                   ``--baseline`` path does not exist
4     invalid      a checked metric is absent from a head or baseline run, a run's clocks
                   throttled (``clock_throttled`` true; ``--allow-throttled`` makes it a warning),
                   a metric taken from the trace of a run whose trace is incomplete
                   (``trace_integrity``; ``--allow-incomplete`` makes it a warning), head and
                   baseline SM clocks differ by more than ``clock_invalid_pct``, a run folder is
                   incomplete, a metrics.json breaks the contract (unknown ``schema_version``, a
                   value of the wrong type), or a relative change has a zero baseline
1     regression   an error-level check failed
0     pass         everything else; warn-level failures are reported but do not fail
====  ===========  ==========================================================================

An invalid measurement outranks a regression: a throttled run's "regression" is not evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from asyncbatch_prof.analysis.contract import METRICS, lookup
from asyncbatch_prof.errors import AbprofError
from asyncbatch_prof.runfolder import INCOMPLETE, RUN_JSON, MetricsDocError, load_metrics, read_json

from .spec import ABSOLUTE_KINDS, Check, GateSpec, default_checks
from asyncbatch_prof.analysis.stats import aggregate, mann_whitney_u, min_possible_p

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_NO_BASELINE, EXIT_INVALID = 0, 1, 2, 3, 4

# status of one check: pass | fail (error level) | warn (warn level failed) | invalid | skip
STATUSES = ("pass", "fail", "warn", "invalid", "skip")


class BaselineMissingError(AbprofError):
    """A baseline was required and is not there (exit 3)."""

    exit_code = EXIT_NO_BASELINE


@dataclass(slots=True)
class Run:
    """One measured run: where it came from and its metrics.json document (None if it is not usable)."""

    path: str
    doc: dict[str, Any] | None
    problem: str | None = None  # why the run cannot be used (incomplete folder)


@dataclass(slots=True)
class CheckResult:
    """The outcome of one check; values in the metric's unit, delta in the threshold's unit."""

    metric: str
    kind: str
    threshold: float
    unit: str  # the threshold's unit
    metric_unit: str
    level: str
    better: str  # "lower" or "higher", from the contract
    source: str
    status: str = "pass"
    head: float | None = None
    baseline: float | None = None
    delta: float | None = None
    head_values: list[float] = field(default_factory=list)
    baseline_values: list[float] = field(default_factory=list)
    p_value: float | None = None
    significant: bool | None = None  # None: not tested (absolute budget, or too few samples)
    over_threshold: bool | None = None  # the aggregate crossed the threshold (None: not compared)
    note: str = ""

    @property
    def name(self) -> str:
        """A stable test name: ``gpu_idle_pct max_increase_pp 2``."""
        if self.kind == "not_throttled":
            return "clock_throttled not_throttled"
        if self.kind == "usable":
            return "runs usable"
        return f"{self.metric} {self.kind} {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(slots=True)
class GateResult:
    """All check results, the runs they were computed from, and the exit code."""

    checks: list[CheckResult]
    head: list[str]
    baseline: list[str]
    spec: GateSpec
    notes: list[str] = field(default_factory=list)
    head_docs: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def head_metric_values(self, metric: str) -> list[float]:
        """The metric's value in every usable head run that has it (for exports beyond the checks)."""
        values = [_value(doc, metric)[0] for doc in self.head_docs]
        return [v for v in values if v is not None]

    @property
    def exit_code(self) -> int:
        statuses = {c.status for c in self.checks}
        if "invalid" in statuses:
            return EXIT_INVALID
        if "fail" in statuses:
            return EXIT_REGRESSION
        return EXIT_PASS

    @property
    def verdict(self) -> str:
        return {EXIT_PASS: "pass", EXIT_REGRESSION: "regression", EXIT_INVALID: "invalid"}[self.exit_code]

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}


def load_run(path: str | Path, role: str) -> Run:
    """Load a head or baseline run (a run folder or a metrics.json file).

    A path that does not exist is a usage error for the head (exit 2) and a missing baseline for a
    baseline (exit 3); an incomplete folder (also when its metrics.json is named directly) and a
    metrics.json that breaks the contract (unknown schema_version, values of the wrong type) become an
    invalid run (exit 4).
    """
    p = Path(path)
    if not p.exists():
        if role == "baseline":
            raise BaselineMissingError(f"baseline not found: {p}")
        raise AbprofError(f"run not found: {p}")
    if p.is_dir():
        inner = sorted(d.name for d in p.iterdir() if (d / RUN_JSON).exists())
        if not (p / RUN_JSON).exists() and inner:  # `abprof run --mode both` writes DIR/sync and DIR/async
            raise AbprofError(f"{p} holds run folders ({', '.join(inner)}), not a run: name one, e.g. {p / inner[0]}")
    folder = p if p.is_dir() else p.parent
    if p.is_dir() or (folder / RUN_JSON).exists() or (folder / INCOMPLETE).exists():
        problem = _folder_problem(folder)
        if problem:
            return Run(str(p), None, problem)
    try:
        return Run(str(p), load_metrics(p))
    except MetricsDocError as exc:
        return Run(str(p), None, f"metrics.json is not valid evidence: {exc}")


def _folder_problem(folder: Path) -> str | None:
    if (folder / INCOMPLETE).exists():
        reason = (folder / INCOMPLETE).read_text(errors="replace").strip() or "no reason recorded"
        return f"run folder is incomplete: {reason}"
    if (folder / RUN_JSON).exists() and read_json(folder / RUN_JSON).get("status") != "complete":
        return "run folder is not marked complete"
    return None


def run_gate(head: Sequence[str | Path], baselines: Sequence[str | Path], spec: GateSpec) -> GateResult:
    """Load the runs and evaluate every check of ``spec`` (see the module docstring for the verdicts)."""
    if not head:
        raise AbprofError("give at least one head run (a run folder or a metrics.json file)")
    head_runs = [load_run(p, "head") for p in head]
    base_runs = [load_run(p, "baseline") for p in baselines]
    if spec.require_baseline and not base_runs:
        raise BaselineMissingError(f"a baseline is required ({spec.require_baseline_by}) but no --baseline was given")
    notes: list[str] = []
    checks = list(spec.checks)
    if not checks:
        if not base_runs:
            raise AbprofError(
                "nothing to check: give budgets (--max/--min, ...), a [gate] table in abprof.toml "
                "or [tool.abprof.gate] in pyproject.toml, or a --baseline to use the default budget"
            )
        checks = default_checks()
        defaults = ", ".join(f"{c.metric} {c.describe()}" for c in checks)
        notes.append(f"no budget configured: using the default {defaults}")
    results = [_throttle_check(head_runs, base_runs, spec)]
    if base_runs and any(_value(r.doc, "sm_clock_mhz_mean")[0] is not None for r in head_runs + base_runs if r.doc):
        results.append(_clock_check(head_runs, base_runs, spec))  # only where some run recorded its clocks
    results += [evaluate_check(c, head_runs, base_runs, spec) for c in checks]
    unusable = [r for r in head_runs + base_runs if r.doc is None]
    if unusable:  # every run is evidence: a broken baseline is not ignored because only budgets were asked
        res = CheckResult("runs", "usable", 0.0, "count", "count", "error", "lower", "always", status="invalid")
        res.note = "; ".join(f"{r.path}: {r.problem}" for r in unusable)
        results.append(res)
    for run in head_runs + base_runs:
        if run.problem:
            notes.append(f"{run.path}: {run.problem}")
    head_docs = [r.doc for r in head_runs if r.doc is not None]
    return GateResult(results, [r.path for r in head_runs], [r.path for r in base_runs], spec, notes, head_docs)


def _blank(check: Check) -> CheckResult:
    m = check.contract
    return CheckResult(check.metric, check.kind, check.value, check.unit, m.unit, check.level, m.better, check.source)


def _value(doc: dict[str, Any], metric: str) -> tuple[float | None, str | None]:
    """The contract's lookup, with values that are not finite numbers turned into a reason."""
    try:
        value, reason = lookup(doc, metric)
    except (TypeError, ValueError):
        return None, "not a number in metrics.json"
    if value is not None and not math.isfinite(value):
        return None, f"not a finite number ({value})"
    return value, reason


def _values(runs: list[Run], metric: str) -> tuple[list[float], list[str]]:
    """The metric's value in each run, and why it is missing where it is."""
    values, missing = [], []
    for run in runs:
        if run.doc is None:
            missing.append(f"{run.path}: {run.problem}")
            continue
        value, reason = _value(run.doc, metric)
        if value is None:
            missing.append(f"{run.path}: {reason}")
        else:
            values.append(value)
    return values, missing


def evaluate_check(check: Check, head: list[Run], base: list[Run], spec: GateSpec) -> CheckResult:
    """Evaluate one check: aggregate each side, compare with the threshold, test significance."""
    res = _blank(check)
    res.head_values, missing = _values(head, check.metric)
    if base:
        res.baseline_values, missing_base = _values(base, check.metric)
        if check.needs_baseline:
            missing += [f"baseline {m}" for m in missing_base]
        elif missing_base:  # an absolute budget only shows the baseline for context
            res.baseline_values = []
            res.note = "baseline lacks it: " + "; ".join(missing_base)
    if missing:
        res.status, res.note = "invalid", f"{check.metric} is absent: " + "; ".join(missing)
        return res
    incomplete = _incomplete_traces(head + (base if check.needs_baseline else []), check.metric)
    if incomplete and not spec.allow_incomplete:
        res.status = "invalid"
        res.note = "trace incomplete, not evidence: " + "; ".join(incomplete)
        return res
    res = _evaluate_values(check, res, spec)
    if incomplete and res.status == "pass":
        res.status = "warn"
    if incomplete:
        res.note = "; ".join(filter(None, [res.note, "trace incomplete, allowed by --allow-incomplete: "
                                           + "; ".join(incomplete)]))
    return res


def _incomplete_traces(runs: list[Run], metric: str) -> list[str]:
    """'path (reason codes)' for each run whose trace_integrity verdict is incomplete and covers ``metric``."""
    out = []
    name = metric.partition(".")[0]
    for run in runs:
        integrity = run.doc.get("trace_integrity") if isinstance(run.doc, dict) else None
        if not isinstance(integrity, dict) or integrity.get("verdict") != "incomplete":
            continue
        affected = integrity.get("affected_metrics")
        if not isinstance(affected, list):  # a document without the list: every metric taken from the trace
            affected = [m.name for m in METRICS.values() if m.windowed]
        if name not in affected:
            continue
        codes = integrity.get("codes")
        why = ", ".join(map(str, codes)) if isinstance(codes, list) and codes else "no reason recorded"
        out.append(f"{run.path} ({why})")
    return out


def _evaluate_values(check: Check, res: CheckResult, spec: GateSpec) -> CheckResult:
    """Aggregate the values found, compare with the threshold and test significance."""
    res.head = aggregate(res.head_values, spec.aggregate)
    if res.baseline_values:
        res.baseline = aggregate(res.baseline_values, spec.aggregate)
    if check.kind in ABSOLUTE_KINDS:
        exceeded = res.head > check.value if check.kind == "max" else res.head < check.value
        res.delta = None if res.baseline is None else res.head - res.baseline
        return _decide(res, exceeded, significant=None)
    if res.baseline is None:
        res.status, res.note = "skip", "no baseline given: nothing to compare with (first run?)"
        return res
    if check.unit == "pp":
        res.delta = res.head - res.baseline
    else:
        if res.baseline == 0:
            res.status = "invalid"
            res.note = "baseline is 0: a change in percent is undefined (use an absolute budget)"
            return res
        res.delta = 100.0 * (res.head - res.baseline) / abs(res.baseline)
    worse_up = check.kind.startswith("max_increase")
    change = res.delta if worse_up else -res.delta
    exceeded = change > check.value
    significant = None
    m, n = len(res.head_values), len(res.baseline_values)
    if m >= spec.min_samples and n >= spec.min_samples and min_possible_p(m, n) <= spec.alpha:
        _, res.p_value = mann_whitney_u(res.head_values, res.baseline_values, "greater" if worse_up else "less")
        significant = res.p_value <= spec.alpha
    elif m >= spec.min_samples and n >= spec.min_samples:
        res.note = (
            f"too few runs to judge significance at alpha {spec.alpha:g} ({m} head, {n} baseline can reach "
            f"p = {min_possible_p(m, n):.3g} at best): threshold only"
        )
    elif m > 1 or n > 1:
        res.note = (
            f"too few runs to judge significance ({m} head, {n} baseline; {spec.min_samples} needed per side): "
            "threshold only"
        )
    else:
        res.note = "one run per side: threshold only"
    return _decide(res, exceeded, significant)


def _decide(res: CheckResult, exceeded: bool, significant: bool | None) -> CheckResult:
    res.significant, res.over_threshold = significant, bool(exceeded)
    if not exceeded:
        res.status = "pass"
    elif significant is False:
        res.status = "pass"
        res.note = f"over the threshold but not significant (p={res.p_value:.3g}): treated as noise"
    else:
        res.status = "fail" if res.level == "error" else "warn"
        if significant:
            res.note = f"significant (one-sided Mann-Whitney U p={res.p_value:.3g})"
    return res


def _throttle_check(head: list[Run], base: list[Run], spec: GateSpec) -> CheckResult:
    """One check over every run: no run's clocks may have throttled (NVML's clock-event reasons)."""
    res = CheckResult("clock_throttled", "not_throttled", 0.0, "bool", "bool", "error", "lower", "always")
    usable = [r for r in head + base if r.doc is not None]  # unusable runs are reported by the metric checks
    flags = {r.path: _value(r.doc, "clock_throttled")[0] for r in usable}
    res.head_values = [flags[r.path] for r in head if r.doc is not None and flags[r.path] is not None]
    res.baseline_values = [flags[r.path] for r in base if r.doc is not None and flags[r.path] is not None]
    throttled = [path for path, flag in flags.items() if flag]
    unknown = [path for path, flag in flags.items() if flag is None]
    if throttled:
        res.note = "clocks throttled during " + ", ".join(throttled)
        if spec.allow_throttled:
            res.status, res.note = "warn", res.note + " (allowed by --allow-throttled)"
        else:
            res.status = "invalid"
    elif usable and len(unknown) == len(usable):
        res.status, res.note = "skip", "clock state not recorded (no NVML): cannot tell whether clocks throttled"
    elif unknown:
        res.note = "clock state not recorded for " + ", ".join(unknown)
    return res


def _clock_check(head: list[Run], base: list[Run], spec: GateSpec) -> CheckResult:
    """Head and baseline must run at comparable SM clocks (``sm_clock_mhz_mean``, NVML's mean over the run).

    A relative difference of the aggregates above ``spec.clock_warn_pct`` warns, above
    ``spec.clock_invalid_pct`` the comparison is invalid: a faster or slower clock moves every timing.
    """
    res = CheckResult("sm_clock_mhz_mean", "clock_match", spec.clock_invalid_pct, "%", "MHz", "error", "lower",
                      "always")
    res.head_values, missing = _values(head, "sm_clock_mhz_mean")
    res.baseline_values, missing_base = _values(base, "sm_clock_mhz_mean")
    if missing or missing_base or not res.head_values or not res.baseline_values:
        res.status = "skip"
        res.note = "SM clock not recorded for every run (no NVML): cannot compare clocks"
        return res
    res.head = aggregate(res.head_values, spec.aggregate)
    res.baseline = aggregate(res.baseline_values, spec.aggregate)
    if res.baseline <= 0:
        res.status, res.note = "invalid", f"baseline SM clock is {res.baseline:g} MHz"
        return res
    res.delta = 100.0 * (res.head - res.baseline) / res.baseline
    if abs(res.delta) > spec.clock_invalid_pct:
        res.status = "invalid"
        res.note = (f"SM clocks differ by {res.delta:+.1f}% (> {spec.clock_invalid_pct:g}%): "
                    "head and baseline ran at different speeds")
    elif abs(res.delta) > spec.clock_warn_pct:
        res.status = "warn"
        res.note = f"SM clocks differ by {res.delta:+.1f}% (> {spec.clock_warn_pct:g}%)"
    return res
