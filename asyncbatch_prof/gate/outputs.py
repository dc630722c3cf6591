"""The gate's outputs: rich table, JSON, JUnit XML, GitHub Markdown, github-action-benchmark JSON.

All of them render the same GateResult, so the terminal, the CI test report and the job summary
can never disagree.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncbatch_prof import __version__
from asyncbatch_prof.analysis.contract import parse_name

from .evaluate import CheckResult, GateResult
from asyncbatch_prof.analysis.stats import aggregate

# GitHub refuses a step summary over 1024 KiB; stay well under it.
SUMMARY_LIMIT_BYTES = 1_000_000

_VERDICT_TEXT = {"pass": "pass", "fail": "FAIL", "warn": "warn", "invalid": "INVALID", "skip": "skipped"}
_ICON = {"pass": "✅", "regression": "❌", "invalid": "⚠️"}


def fmt_value(x: float | None, unit: str = "") -> str:
    """A metric value for people: 4 significant digits, thousands separated, no exponent for big numbers."""
    if x is None:
        return "–"
    if unit == "bool":
        return "yes" if x else "no"
    text = f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:.4g}"
    return f"{text}%" if unit == "%" else text


def fmt_delta(res: CheckResult) -> str:
    if res.delta is None:
        return "–"
    if res.kind in ("max", "min"):  # baseline shown for context: the change in the metric's own unit
        unit = "pp" if res.metric_unit == "%" else res.metric_unit
    else:
        unit = res.unit
    sep = "" if unit == "%" else " "
    return f"{res.delta:+.3g}{sep}{unit}"


def fmt_threshold(res: CheckResult) -> str:
    if res.kind == "not_throttled":
        return "clocks not throttled"
    if res.kind == "clock_match":
        return f"SM clock within ±{res.threshold:g}%"
    if res.kind == "usable":
        return "complete, valid runs"
    unit = res.unit
    number = f"{res.threshold:g}"
    text = {"max": f"≤ {number}", "min": f"≥ {number}"}.get(res.kind)
    if text is not None:
        text += "%" if unit == "%" else ("" if unit in ("bool", "count") else f" {unit}")
    else:
        direction = "+" if res.kind.startswith("max_increase") else "-"
        text = f"{direction}{number}{'%' if unit == '%' else ' pp'} max"
    return text + (" (warn)" if res.level == "warn" else "")


def fmt_verdict(res: CheckResult) -> str:
    text = _VERDICT_TEXT[res.status]
    if res.status == "pass" and res.significant is False and res.over_threshold:
        text = "pass (~ n.s.)"  # over the threshold, but within the noise; an unchanged metric is a plain pass
    return text


def _with_n(x: float | None, values: list[float], unit: str) -> str:
    text = fmt_value(x, unit)
    return f"{text} (n={len(values)})" if len(values) > 1 else text


def rows(result: GateResult) -> list[list[str]]:
    """The table's rows: metric, baseline, head, delta, threshold, verdict, note."""
    out = []
    for r in result.checks:
        if r.kind == "not_throttled":  # per side: did any run throttle?
            r = _throttle_view(r)
        out.append([
            r.metric,
            _with_n(r.baseline, r.baseline_values, r.metric_unit),
            _with_n(r.head, r.head_values, r.metric_unit),
            fmt_delta(r),
            fmt_threshold(r),
            fmt_verdict(r),
            r.note,
        ])
    return out


def _throttle_view(r: CheckResult) -> CheckResult:
    from dataclasses import replace

    return replace(r, head=float(any(r.head_values)) if r.head_values else None,
                   baseline=float(any(r.baseline_values)) if r.baseline_values else None,
                   head_values=[], baseline_values=[])


HEADERS = ["Metric", "Baseline", "Head", "Δ", "Threshold", "Verdict", "Note"]


def headline(result: GateResult) -> str:
    c = result.counts()
    parts = [f"{c['pass']} passed", f"{c['fail']} failed", f"{c['warn']} warned", f"{c['invalid']} invalid",
             f"{c['skip']} skipped"]
    return f"abprof gate: {result.verdict} (exit {result.exit_code}): " + ", ".join(parts)


def print_table(result: GateResult, console) -> None:
    """Print the rich table and the notes to a rich Console.

    Cells are Text, never markup: a path or reason holding ``[/bold]`` prints as written. Names and
    verdicts do not wrap, so an 80-column CI log breaks notes between words, not names mid-word.
    """
    from rich.table import Table
    from rich.text import Text

    styles = {"FAIL": "bold red", "INVALID": "bold yellow", "warn": "yellow", "pass": "green"}
    table = Table(title=Text(f"abprof gate ({result.spec.aggregate} of {len(result.head)} head, "
                             f"{len(result.baseline)} baseline run(s))"))
    for h in HEADERS:
        keep = h in ("Metric", "Verdict", "Δ")
        table.add_column(h, no_wrap=keep, overflow="ellipsis" if keep else "fold", min_width=4)
    for row in rows(result):
        style = styles.get(row[5].split(" ")[0], "")
        table.add_row(*(Text(safe_text(c)) for c in row[:5]), Text(row[5], style=style), Text(safe_text(row[6])))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {safe_text(note)}", markup=False, highlight=False)
    console.print(headline(result), markup=False, highlight=False)


def safe_text(text: str) -> str:
    """``text`` with control characters (ESC of CSI/OSC sequences, BEL, ...) shown as ``\\x1b`` escapes."""
    from asyncbatch_prof.textsafe import printable

    return printable(text)


def to_json(result: GateResult) -> dict[str, Any]:
    """The whole result as a JSON document (schema_version 1)."""
    spec = result.spec
    return {
        "schema_version": 1,
        "tool": {"name": "abprof", "version": __version__},
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "counts": result.counts(),
        "settings": {"aggregate": spec.aggregate, "alpha": spec.alpha, "min_samples": spec.min_samples,
                     "require_baseline": spec.require_baseline, "allow_throttled": spec.allow_throttled,
                     "allow_incomplete": spec.allow_incomplete,
                     "config": spec.source},
        "head": result.head,
        "baseline": result.baseline,
        "checks": [c.to_dict() for c in result.checks],
        "notes": result.notes,
    }


def _details(r: CheckResult) -> str:
    lines = [
        f"metric: {r.metric} ({r.better} is better)",
        f"threshold: {fmt_threshold(r)} [{r.level}, from {r.source}]",
        f"head: {fmt_value(r.head, r.metric_unit)} from {r.head_values}",
        f"baseline: {fmt_value(r.baseline, r.metric_unit)} from {r.baseline_values}",
        f"delta: {fmt_delta(r)}",
    ]
    if r.p_value is not None:
        lines.append(f"Mann-Whitney U one-sided p = {r.p_value:.4g} (significant: {r.significant})")
    if r.note:
        lines.append(f"note: {r.note}")
    return "\n".join(lines)


def to_junit(result: GateResult) -> bytes:
    """JUnit XML, one testcase per check, in the dialect of the Jenkins xUnit plugin's junit-10.xsd."""
    c = result.counts()
    total = str(len(result.checks))
    attrs = {"tests": total, "failures": str(c["fail"]), "errors": str(c["invalid"])}
    root = ET.Element("testsuites", {"name": "abprof gate", **attrs, "time": "0"})
    suite = ET.SubElement(root, "testsuite", {
        "name": "abprof gate", **attrs, "skipped": str(c["skip"]), "time": "0",
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    })
    props = ET.SubElement(suite, "properties")
    for name, value in (("aggregate", result.spec.aggregate), ("alpha", f"{result.spec.alpha:g}"),
                        ("head", " ".join(result.head)), ("baseline", " ".join(result.baseline)),
                        ("verdict", result.verdict)):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for r in result.checks:
        case = ET.SubElement(suite, "testcase", {"name": r.name, "classname": f"abprof.gate.{r.metric}", "time": "0"})
        summary = (f"{r.metric}: head {fmt_value(r.head, r.metric_unit)}, "
                   f"baseline {fmt_value(r.baseline, r.metric_unit)}, "
                   f"delta {fmt_delta(r)}, threshold {fmt_threshold(r)}")
        if r.status == "fail":
            ET.SubElement(case, "failure", {"type": "regression", "message": summary}).text = _details(r)
        elif r.status == "invalid":
            ET.SubElement(case, "error", {"type": "invalid measurement", "message": r.note}).text = _details(r)
        elif r.status == "skip":
            ET.SubElement(case, "skipped", {"message": r.note})
        else:
            prefix = "WARNING (warn level, not failing): " if r.status == "warn" else ""
            ET.SubElement(case, "system-out").text = prefix + _details(r)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(result: GateResult) -> str:
    """GitHub-flavoured Markdown: a one-line verdict, the table, the notes (under SUMMARY_LIMIT_BYTES)."""
    lines = [f"### {_ICON[result.verdict]} {headline(result)}", "",
             f"Head: {', '.join(f'`{h}`' for h in result.head)}  ",
             f"Baseline: {', '.join(f'`{b}`' for b in result.baseline) or 'none'}  ",
             f"Aggregate: {result.spec.aggregate}; significance: one-sided Mann-Whitney U, alpha "
             f"{result.spec.alpha:g}, with at least {result.spec.min_samples} runs per side", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in rows(result)]
    if result.notes:
        lines += ["", *[f"- {_md_cell(n)}" for n in result.notes]]
    text = "\n".join(lines) + "\n\n"
    data = text.encode("utf-8")
    if len(data) > SUMMARY_LIMIT_BYTES:
        text = data[: SUMMARY_LIMIT_BYTES - 200].decode("utf-8", "ignore") + "\n\n(truncated: see --json)\n\n"
    return text


def append_step_summary(result: GateResult, path: str | None = None) -> Path | None:
    """Append the Markdown to ``$GITHUB_STEP_SUMMARY`` (or ``path``); None when neither is set."""
    target = path or os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(to_markdown(result))
    return Path(target)


def to_benchmark_json(result: GateResult) -> list[dict[str, Any]]:
    """github-action-benchmark ``customSmallerIsBetter`` entries for the checked metrics of the head runs.

    The format says smaller is better for every entry, so a metric where larger is better is turned
    into its cost: a percentage ``x`` becomes ``100 - x`` (``overlap_pct`` → the share of host work
    *not* overlapped), any other metric its reciprocal (``tokens_per_s`` → ms per output token), so the
    action's ``current / previous`` ratio still grows when the run gets worse. ``gpu_idle_pct`` is always
    exported when the head runs have it. ``clock_throttled`` is never exported.
    """
    entries, seen = [], set()
    metrics = [r.metric for r in result.checks if r.kind != "not_throttled"]
    if "gpu_idle_pct" not in metrics:
        metrics.insert(0, "gpu_idle_pct")
    by_metric = {r.metric: r for r in result.checks if r.head_values and r.kind != "not_throttled"}
    for name in metrics:
        if name in seen or name.startswith("clock_throttled"):
            continue
        seen.add(name)
        values = by_metric[name].head_values if name in by_metric else result.head_metric_values(name)
        if not values:
            continue
        entry = _benchmark_entry(name, values, result.spec.aggregate)
        if entry is not None:
            entries.append(entry)
    return entries


def _benchmark_entry(name: str, values: list[float], how: str) -> dict[str, Any] | None:
    metric, _ = parse_name(name)
    if metric.better == "lower":
        label, unit, costs = name, metric.unit, values
    elif metric.unit == "%":
        label, unit, costs = f"{name} (as 100 - value)", "%", [100.0 - v for v in values]
    elif name == "tokens_per_s":
        if any(v <= 0 for v in values):
            return None
        label, unit, costs = "tokens_per_s (as ms per output token)", "ms/tok", [1000.0 / v for v in values]
    else:
        if any(v <= 0 for v in values):
            return None
        label, unit, costs = f"{name} (as 1/value)", f"1/({metric.unit})", [1.0 / v for v in values]
    value = aggregate(costs, how)
    entry: dict[str, Any] = {"name": label, "unit": unit, "value": value if math.isfinite(value) else None}
    if len(costs) > 1:
        entry["range"] = f"± {statistics.stdev(costs):.4g}"
    entry["extra"] = f"{how} of {len(values)} run(s); raw {name}: " + ", ".join(f"{v:.6g}" for v in values)
    return entry


def write_json_file(doc: Any, path: Path) -> None:
    from asyncbatch_prof.runfolder import atomic_write_text

    atomic_write_text(Path(path), json.dumps(doc, indent=2, allow_nan=False) + "\n")
