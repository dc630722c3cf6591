"""What to check: budgets and baseline thresholds, from command-line options or a TOML table.

A check is one metric of the contract, one threshold kind, one number and a level::

    max / min                 absolute budget on the head runs' aggregate, in the metric's unit
    max_increase_pp           head - baseline, in percentage points (metrics whose unit is %)
    max_decrease_pp           baseline - head, in percentage points
    max_increase_pct          100 * (head - baseline) / |baseline|, in percent (any metric)
    max_decrease_pct          100 * (baseline - head) / |baseline|

TOML (``abprof.toml`` with a ``[gate]`` table, or ``[tool.abprof.gate]`` in ``pyproject.toml``)::

    [gate]
    aggregate = "median"        # median | mean | min | max
    alpha = 0.05                # significance level of the one-sided Mann-Whitney U test
    min_samples = 3             # per side, to test significance at all
    require_baseline = false
    allow_throttled = false
    allow_incomplete = false    # an incomplete trace (trace_integrity) warns instead of invalidating
    clock_warn_pct = 3          # head vs baseline mean SM clock: a larger difference warns,
    clock_invalid_pct = 10      # and a larger one than this makes the comparison invalid (exit 4)

    [gate.metrics.gpu_idle_pct]
    max = 25
    max_increase_pp = 2
    level = "error"             # or "warn"

    [[gate.metrics.overlap_pct]]  # an array of tables: several levels for one metric
    min = 90
    level = "warn"

Unknown keys, unknown metric names and percentage points on a metric that is not a percentage
are configuration errors (exit 2): a budget that silently checks nothing is worse than none.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from asyncbatch_prof.analysis.contract import Metric, UnknownMetricError, parse_name
from asyncbatch_prof.errors import AbprofError

from asyncbatch_prof.analysis.stats import AGGREGATES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ABSOLUTE_KINDS = ("max", "min")
BASELINE_KINDS = ("max_increase_pp", "max_decrease_pp", "max_increase_pct", "max_decrease_pct")
KINDS = ABSOLUTE_KINDS + BASELINE_KINDS
LEVELS = ("error", "warn")

# Used when nothing is configured and a baseline is given: the bubble and the throughput.
DEFAULT_BASELINE_CHECKS = (("gpu_idle_pct", "max_increase_pp", 2.0), ("tokens_per_s", "max_decrease_pct", 5.0))

CONFIG_FILES = ("abprof.toml", "pyproject.toml")


class GateConfigError(AbprofError):
    """A budget or setting that cannot mean anything (exit 2)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Check:
    """One threshold on one metric: ``kind`` in KINDS, ``value`` in the kind's unit, ``level`` error|warn."""

    metric: str  # as written, possibly qualified: "gpu_idle_pct.kernel"
    kind: str
    value: float
    level: str = "error"
    source: str = "option"  # "option", the config file's path, or "default"

    @property
    def contract(self) -> Metric:
        return parse_name(self.metric)[0]

    @property
    def needs_baseline(self) -> bool:
        return self.kind in BASELINE_KINDS

    @property
    def unit(self) -> str:
        """Unit of the threshold: the metric's for max/min, "pp" or "%" for baseline kinds."""
        if self.kind in ABSOLUTE_KINDS:
            return self.contract.unit
        return "pp" if self.kind.endswith("_pp") else "%"

    def describe(self) -> str:
        """``max_increase_pp 2 pp`` style text for tables and test names."""
        unit = self.unit
        unit = "" if unit in ("count", "bool") else (unit if unit in ("%",) else f" {unit}")
        return f"{self.kind} {_fmt(self.value)}{unit}"


@dataclass(slots=True)
class GateSpec:
    """Everything that decides a verdict, apart from the runs themselves."""

    checks: list[Check] = field(default_factory=list)
    aggregate: str = "median"
    alpha: float = 0.05
    min_samples: int = 3
    require_baseline: bool = False
    allow_throttled: bool = False
    allow_incomplete: bool = False
    clock_warn_pct: float = 3.0  # % difference of head and baseline mean SM clocks that warns
    clock_invalid_pct: float = 10.0  # ... and that makes the comparison invalid
    source: str | None = None  # the config file, if one was read
    require_baseline_by: str = "--require-baseline"  # what asked for it, named in the error


def _fmt(x: float) -> str:
    return f"{x:g}"


def make_check(metric: str, kind: str, value: Any, level: str = "error", source: str = "option") -> Check:
    """Validate one check (names against the contract, units against the kind) or raise GateConfigError."""
    try:
        contract, _ = parse_name(metric)
    except UnknownMetricError as exc:
        raise GateConfigError(f"{source}: {exc}") from None
    if kind not in KINDS:
        raise GateConfigError(f"{source}: unknown threshold {kind!r} for {metric} (known: {', '.join(KINDS)})")
    if level not in LEVELS:
        raise GateConfigError(f"{source}: level must be 'error' or 'warn', not {level!r} ({metric} {kind})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GateConfigError(f"{source}: {metric} {kind} needs a finite number, not {value!r}")
    if kind.endswith("_pp") and contract.unit != "%":
        raise GateConfigError(
            f"{source}: {kind} compares percentage points, but {contract.name} is in {contract.unit}; "
            f"use {kind[:-3]}_pct for a relative change"
        )
    if kind in BASELINE_KINDS and value < 0:
        raise GateConfigError(f"{source}: {metric} {kind} must be >= 0 (it is the allowed change), not {value}")
    return Check(metric, kind, float(value), level, source)


def parse_option(text: str, kind: str, level: str = "error") -> Check:
    """Parse ``METRIC=NUMBER[:warn|:error]`` from ``--max``, ``--min``, ``--max-increase-pp``, ..."""
    option = "--" + kind.replace("_", "-")
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise GateConfigError(f"{option} expects METRIC=NUMBER (e.g. gpu_idle_pct=5), got {text!r}")
    number, _, suffix = rest.partition(":")
    if suffix:
        level = suffix.strip()
    try:
        value = float(number)
    except ValueError:
        raise GateConfigError(f"{option} {text!r}: {number!r} is not a number") from None
    return make_check(name.strip(), kind, value, level, source=option)


_SETTING_KEYS = {"aggregate", "alpha", "min_samples", "require_baseline", "allow_throttled", "allow_incomplete",
                 "clock_warn_pct", "clock_invalid_pct", "metrics"}


def _checks_from_table(metric: str, table: Mapping[str, Any], source: str) -> list[Check]:
    unknown = set(table) - set(KINDS) - {"level"}
    if unknown:
        raise GateConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))} for {metric} "
            f"(known: {', '.join(KINDS)}, level)"
        )
    level = table.get("level", "error")
    checks = [make_check(metric, kind, table[kind], level, source) for kind in KINDS if kind in table]
    if not checks:
        raise GateConfigError(f"{source}: {metric} has no threshold (give one of {', '.join(KINDS)})")
    return checks


def spec_from_table(table: Mapping[str, Any], source: str) -> GateSpec:
    """Build a GateSpec from a parsed ``[gate]`` table; ``source`` names it in error messages."""
    unknown = set(table) - _SETTING_KEYS
    if unknown:
        raise GateConfigError(
            f"{source}: unknown [gate] key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_SETTING_KEYS))})"
        )
    spec = GateSpec(source=source)
    metrics = table.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise GateConfigError(f"{source}: [gate.metrics] must be a table of metric names")
    for metric, entry in metrics.items():
        entries = entry if isinstance(entry, list) else [entry]
        for item in entries:
            if not isinstance(item, Mapping):
                raise GateConfigError(f"{source}: gate.metrics.{metric} must be a table, e.g. {{max = 5}}")
            spec.checks.extend(_checks_from_table(metric, item, source))
    settings = {k: table[k] for k in _SETTING_KEYS - {"metrics"} if k in table}
    if table.get("require_baseline") is True:
        settings["require_baseline_by"] = f"require_baseline = true in {source}"
    return validate_settings(replace(spec, **settings), source)


def validate_settings(spec: GateSpec, source: str = "options") -> GateSpec:
    """Check the spec's settings (aggregate, alpha, min_samples, booleans) and return it."""
    if spec.aggregate not in AGGREGATES:
        raise GateConfigError(f"{source}: aggregate must be one of {', '.join(AGGREGATES)}, not {spec.aggregate!r}")
    if isinstance(spec.alpha, bool) or not isinstance(spec.alpha, (int, float)) or not 0 < spec.alpha < 1:
        raise GateConfigError(f"{source}: alpha must be a number between 0 and 1, not {spec.alpha!r}")
    if isinstance(spec.min_samples, bool) or not isinstance(spec.min_samples, int) or spec.min_samples < 2:
        raise GateConfigError(f"{source}: min_samples must be an integer >= 2, not {spec.min_samples!r}")
    for key in ("require_baseline", "allow_throttled", "allow_incomplete"):
        if not isinstance(getattr(spec, key), bool):
            raise GateConfigError(f"{source}: {key} must be true or false")
    for key in ("clock_warn_pct", "clock_invalid_pct"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise GateConfigError(f"{source}: {key} must be a finite number >= 0 (percent), not {value!r}")
    if spec.clock_warn_pct > spec.clock_invalid_pct:
        raise GateConfigError(f"{source}: clock_warn_pct ({spec.clock_warn_pct:g}) must not exceed "
                              f"clock_invalid_pct ({spec.clock_invalid_pct:g})")
    return spec


def load_config(path: Path) -> GateSpec:
    """Read ``[gate]`` (abprof.toml or any file) or ``[tool.abprof.gate]`` (pyproject.toml) from ``path``."""
    path = Path(path)
    table = _gate_table(read_toml(path))
    if table is None:
        raise GateConfigError(f"{path} has no [gate] or [tool.abprof.gate] table")
    return spec_from_table(table, str(path))


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; any reason it cannot be read (missing, not UTF-8, bad syntax, nested too deep) is
    one GateConfigError line: a config that cannot be read must never mean "no budgets"."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise GateConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise GateConfigError(f"config file is a directory: {path}") from None
    except UnicodeDecodeError as exc:
        raise GateConfigError(f"{path} is not UTF-8 text (byte {exc.start}): TOML files must be UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise GateConfigError(f"{path} is not valid TOML: {exc} (fix it, or pass --no-config)") from None
    except RecursionError:
        raise GateConfigError(f"{path} is nested too deeply to read") from None


def _gate_table(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    tool = doc.get("tool", {})
    if isinstance(tool, Mapping) and isinstance(tool.get("abprof"), Mapping) and "gate" in tool["abprof"]:
        table = tool["abprof"]["gate"]
    else:
        table = doc.get("gate")
    if table is not None and not isinstance(table, Mapping):
        raise GateConfigError("the gate configuration must be a table")
    return table


def find_config(directory: Path) -> Path | None:
    """The config file that applies in ``directory``: abprof.toml, else a pyproject.toml with [tool.abprof.gate]."""
    directory = Path(directory)
    candidate = directory / "abprof.toml"
    if candidate.is_file():
        return candidate
    candidate = directory / "pyproject.toml"
    if candidate.is_file():
        doc = read_toml(candidate)  # a broken pyproject.toml is an error, not a silent "no budgets"
        tool = doc.get("tool", {})
        if isinstance(tool, Mapping) and isinstance(tool.get("abprof"), Mapping) and "gate" in tool["abprof"]:
            return candidate
    return None


def merge(base: GateSpec, option_checks: Iterable[Check]) -> GateSpec:
    """Add command-line checks to a config's; an option replaces the config's check of same metric, kind, level."""
    option_checks = list(option_checks)
    keys = {(c.metric, c.kind, c.level) for c in option_checks}
    kept = [c for c in base.checks if (c.metric, c.kind, c.level) not in keys]
    return replace(base, checks=kept + option_checks)


def default_checks() -> list[Check]:
    """The budget used when none is configured and a baseline is given."""
    return [make_check(m, k, v, "error", source="default") for m, k, v in DEFAULT_BASELINE_CHECKS]
