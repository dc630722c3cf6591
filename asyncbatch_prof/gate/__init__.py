"""``abprof gate``: CI regression gates on GPU idle share, overlap, throughput and latency.

- :mod:`.spec`: what to check (budgets and baseline thresholds from options or TOML),
- :mod:`.stats`: aggregation of repeated runs and the Mann-Whitney U test,
- :mod:`.evaluate`: the checks, the verdict and the exit code,
- :mod:`.outputs`: table, JSON, JUnit XML, Markdown step summary, github-action-benchmark export.
"""

from __future__ import annotations

from .evaluate import (
    EXIT_INVALID,
    EXIT_NO_BASELINE,
    EXIT_PASS,
    EXIT_REGRESSION,
    EXIT_USAGE,
    BaselineMissingError,
    CheckResult,
    GateResult,
    run_gate,
)
from .spec import Check, GateConfigError, GateSpec, find_config, load_config, make_check, merge, parse_option
from asyncbatch_prof.analysis.stats import aggregate, mann_whitney_u

__all__ = [
    "EXIT_INVALID", "EXIT_NO_BASELINE", "EXIT_PASS", "EXIT_REGRESSION", "EXIT_USAGE",
    "BaselineMissingError", "Check", "CheckResult", "GateConfigError", "GateResult", "GateSpec",
    "aggregate", "find_config", "load_config", "make_check", "mann_whitney_u", "merge", "parse_option", "run_gate",
]
