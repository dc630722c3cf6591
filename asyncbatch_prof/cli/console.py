"""What ``abprof run`` shows in the terminal: a progress bar fed by the engine's steps, and the summary table."""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from rich.table import Table

from asyncbatch_prof.analysis.contract import format_value, lookup
from asyncbatch_prof.analysis.repeats import format_spread

SUMMARY_ROWS = (
    ("tokens_per_s", "output tokens/s"), ("requests_per_s", "requests/s"),
    ("ttft_ms_p50", "TTFT p50"), ("ttft_ms_p99", "TTFT p99"),
    ("itl_ms_p50", "ITL p50"), ("itl_ms_p99", "ITL p99"),
    ("gpu_idle_pct", "GPU idle (trace)"), ("host_bound_pct", "host-bound idle"),
    ("overlap_pct", "CPU/GPU overlap"), ("sync_wait_pct", "sync wait"),
    ("nvml_util_pct", "NVML util (a kernel ran)"), ("joules_per_token", "energy per token"),
    ("clock_throttled", "clocks throttled"),
)
# a CPU run's device is the engine's device process (or thread): the same metrics, named for it
CPU_TITLES = {"gpu_idle_pct": "device idle (trace)", "overlap_pct": "host/device overlap",
              "nvml_util_pct": "NVML util (no GPU)"}


class _StepColumn(ProgressColumn):
    """Shows the step counter that ``on_step`` bumps, read when rich redraws (not on every step)."""

    def __init__(self, owner: "StepProgress"):
        super().__init__()
        self.owner = owner

    def render(self, task) -> Text:
        return Text(f"step {self.owner.steps}")


class StepProgress:
    """A rich progress bar fed by the engine's ``on_step`` (one tick per engine step).

    ``on_step`` runs on the engine's thread inside the measured window, so it only bumps a counter;
    rich's own refresh thread draws it a few times a second.
    """

    def __init__(self, console: Console, label: str):
        self.console = console
        self.label = label
        self.steps = 0
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _StepColumn(self),
                                 TimeElapsedColumn(), console=console, transient=True, refresh_per_second=4)
        self.task = None

    def __enter__(self) -> "StepProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=None)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def phase(self, text: str) -> None:
        """Show what the run is doing now; the step count restarts for each pass over the workload."""
        self.steps = 0
        self.progress.update(self.task, description=f"{self.label}: {text}")

    def on_step(self, step_index: int) -> None:
        """Engine ``on_step`` callback: one more step done (a plain store, cheap inside the measurement)."""
        self.steps = step_index + 1


def summary_table(labels: Sequence[str], docs: Sequence[dict[str, Any]]) -> tuple[Table, list[str]]:
    """The summary table (one column per run) and the notes saying why a dash is a dash."""
    table = Table(title="abprof run summary", show_lines=False)
    table.add_column("metric")
    for label in labels:
        table.add_column(label, justify="right")
    reasons: dict[str, set[str]] = {}
    cpu = bool(docs) and all(doc.get("run", {}).get("device") == "cpu" for doc in docs)
    for metric, title in SUMMARY_ROWS:
        title = CPU_TITLES.get(metric, title) if cpu else title
        cells = []
        for doc in docs:
            value, reason = lookup(doc, metric)
            cells.append(format_spread(doc, metric))  # with repeats: median (min-max, n)
            if value is None:
                reasons.setdefault(reason, set()).add(metric)
        table.add_row(title, *cells)
    overheads = [doc.get("profiler_overhead") for doc in docs]
    if any(overheads):
        table.add_row("tokens/s unprofiled", *[format_value("tokens_per_s", o.get("unprofiled_tokens_per_s")) if o else "—"
                                              for o in overheads])
        table.add_row("profiler overhead %", *[f"{o['overhead_pct']:.1f}" if o else "—" for o in overheads])
        table.add_row("  per window step %", *[f"{o['window_step_overhead_pct']:.1f}"
                                               if o and o.get("window_step_overhead_pct") is not None else "—"
                                               for o in overheads])
    notes = [f"— {', '.join(sorted(names))}: {reason}" for reason, names in reasons.items()]
    return table, notes


def print_summary(console: Console, labels: Sequence[str], docs: Sequence[dict[str, Any]]) -> None:
    """Print the summary table and its notes."""
    table, notes = summary_table(labels, docs)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)
