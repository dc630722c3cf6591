"""`abprof gate`: check runs against budgets and a baseline; the exit code is the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from asyncbatch_prof.cli.errors import cli_errors

_SPEC = "METRIC=NUMBER[:warn]"


def _opt(help_text: str, *names: str):
    return typer.Option(*names, metavar=_SPEC, help=help_text, show_default=False)


def gate(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN", help="Head runs: run folders or metrics.json files. Several runs are repeats of one "
        "measurement.", show_default=False)],
    *,
    baseline: Annotated[Optional[list[Path]], typer.Option(
        "--baseline", "-b", metavar="RUN",
        help="A baseline run (folder or metrics.json); repeat for several baseline runs.",
        show_default=False)] = None,
    max_: Annotated[Optional[list[str]], _opt("Budget: the head's aggregate must be <= NUMBER.", "--max")] = None,
    min_: Annotated[Optional[list[str]], _opt("Budget: the head's aggregate must be >= NUMBER.", "--min")] = None,
    warn_max: Annotated[Optional[list[str]], _opt("Like --max, at level warn.", "--warn-max")] = None,
    warn_min: Annotated[Optional[list[str]], _opt("Like --min, at level warn.", "--warn-min")] = None,
    max_increase_pp: Annotated[Optional[list[str]], _opt(
        "Baseline: head - baseline <= NUMBER percentage points (% metrics).", "--max-increase-pp")] = None,
    max_decrease_pp: Annotated[Optional[list[str]], _opt(
        "Baseline: baseline - head <= NUMBER percentage points (% metrics).", "--max-decrease-pp")] = None,
    max_increase_pct: Annotated[Optional[list[str]], _opt(
        "Baseline: the head may be at most NUMBER percent above the baseline.", "--max-increase-pct")] = None,
    max_decrease_pct: Annotated[Optional[list[str]], _opt(
        "Baseline: the head may be at most NUMBER percent below the baseline.", "--max-decrease-pct")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML file with a \\[gate] or \\[tool.abprof.gate] table. Default: ./abprof.toml, else "
        "./pyproject.toml if it has \\[tool.abprof.gate].", show_default=False)] = None,
    no_config: Annotated[bool, typer.Option("--no-config", help="Ignore abprof.toml and pyproject.toml.")] = False,
    aggregate: Annotated[Optional[str], typer.Option(
        help="How repeats are reduced: median, mean, min or max.", show_default="median")] = None,
    alpha: Annotated[Optional[float], typer.Option(
        help="Significance level of the one-sided Mann-Whitney U test.", show_default="0.05")] = None,
    min_samples: Annotated[Optional[int], typer.Option(
        help="Runs per side needed to test significance; with fewer, the threshold alone decides.",
        show_default="3")] = None,
    require_baseline: Annotated[bool, typer.Option(
        "--require-baseline", help="Exit 3 when no baseline is given.")] = False,
    allow_throttled: Annotated[bool, typer.Option(
        "--allow-throttled", help="A run whose clocks throttled is a warning instead of invalid (exit 4).")] = False,
    allow_incomplete: Annotated[bool, typer.Option(
        "--allow-incomplete", help="A run whose trace is incomplete (metrics.json trace_integrity) is a warning "
        "instead of invalid (exit 4) for the metrics taken from the trace.")] = False,
    clock_warn_pct: Annotated[Optional[float], typer.Option(
        help="Warn when head and baseline mean SM clocks differ by more than this (percent).",
        show_default="3")] = None,
    clock_invalid_pct: Annotated[Optional[float], typer.Option(
        help="Invalid (exit 4) when head and baseline mean SM clocks differ by more than this (percent).",
        show_default="10")] = None,
    json_out: Annotated[Optional[str], typer.Option(
        "--json", metavar="FILE", help="Write the result as JSON to FILE ('-': stdout; the table then goes to stderr).",
        show_default=False)] = None,
    junit: Annotated[Optional[Path], typer.Option(
        "--junit", metavar="FILE", help="Write JUnit XML, one test case per check.", show_default=False)] = None,
    benchmark_json: Annotated[Optional[Path], typer.Option(
        "--benchmark-json", metavar="FILE",
        help="Write github-action-benchmark input (tool: customSmallerIsBetter).", show_default=False)] = None,
    markdown: Annotated[Optional[Path], typer.Option(
        "--markdown", metavar="FILE", help="Also write the Markdown summary to FILE. It is always appended to "
        "$GITHUB_STEP_SUMMARY when that is set.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table; the exit code and files only.")] = False,
) -> None:
    """Check runs against budgets and a baseline, for CI; the exit code is the verdict.

    Exit codes: [bold]0[/] pass (warnings allowed), [bold]1[/] regression, [bold]2[/] usage or config error,
    [bold]3[/] baseline missing when required, [bold]4[/] invalid measurement (metric absent, clocks throttled or
    different from the baseline's, trace or run incomplete, metrics.json that breaks the contract).

    Idle shares compare in percentage points ([cyan]--max-increase-pp gpu_idle_pct=2[/]).

    Throughputs and latencies compare in percent ([cyan]--max-decrease-pct tokens_per_s=5[/]).

    With 3 or more runs per side a change fails only if it is also significant (one-sided Mann-Whitney U).

    With a baseline and no budget at all, the default is gpu_idle_pct +2 pp and tokens_per_s -5%.
    """
    with cli_errors():
        from asyncbatch_prof.gate import find_config, load_config, merge, parse_option, run_gate
        from asyncbatch_prof.gate.spec import GateSpec, validate_settings

        option_checks = []
        for kind, level, values in (
            ("max", "error", max_), ("min", "error", min_), ("max", "warn", warn_max), ("min", "warn", warn_min),
            ("max_increase_pp", "error", max_increase_pp), ("max_decrease_pp", "error", max_decrease_pp),
            ("max_increase_pct", "error", max_increase_pct), ("max_decrease_pct", "error", max_decrease_pct),
        ):
            option_checks += [parse_option(v, kind, level) for v in values or []]
        path = config if config is not None else (None if no_config else find_config(Path.cwd()))
        spec = load_config(path) if path is not None else GateSpec()
        spec = merge(spec, option_checks)
        settings = {"aggregate": aggregate, "alpha": alpha, "min_samples": min_samples,
                    "clock_warn_pct": clock_warn_pct, "clock_invalid_pct": clock_invalid_pct}
        for key, value in settings.items():  # an option given overrides the config file's setting
            if value is not None:
                setattr(spec, key, value)
        if require_baseline:
            spec.require_baseline, spec.require_baseline_by = True, "--require-baseline"
        spec.allow_throttled = spec.allow_throttled or allow_throttled
        spec.allow_incomplete = spec.allow_incomplete or allow_incomplete
        validate_settings(spec, "options")
        result = run_gate(runs, baseline or [], spec)
        _write_outputs(result, json_out, junit, benchmark_json, markdown, quiet)
    raise typer.Exit(code=result.exit_code)


def _write_outputs(result, json_out, junit, benchmark_json, markdown, quiet) -> None:
    import json

    from rich.console import Console

    from asyncbatch_prof.gate import outputs
    from asyncbatch_prof.runfolder import atomic_write_bytes, atomic_write_text

    if junit is not None:
        atomic_write_bytes(junit, outputs.to_junit(result))
    if benchmark_json is not None:
        outputs.write_json_file(outputs.to_benchmark_json(result), benchmark_json)
    if markdown is not None:
        atomic_write_text(markdown, outputs.to_markdown(result))
    outputs.append_step_summary(result)
    doc = outputs.to_json(result)
    if json_out == "-":
        typer.echo(json.dumps(doc, indent=2, allow_nan=False))
    elif json_out is not None:
        outputs.write_json_file(doc, Path(json_out))
    if not quiet:
        outputs.print_table(result, Console(stderr=json_out == "-", soft_wrap=False))
