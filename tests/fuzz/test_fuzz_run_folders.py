"""Damaged run folders through `abprof report`, `abprof compare` and `abprof gate`.

A run folder in abprof's layout (tests/report/report_synthetic.py: torch-format trace, metrics.json,
run.json, requests.csv, nvml.csv) gets files deleted, cut short, replaced by garbage, CSV cells replaced,
an INCOMPLETE marker or another status. Properties: report and compare exit 0 or 2 (one line), never a
traceback; an incomplete folder is refused (2) by report and compare and is never a pass (0) for the gate.
"""

from __future__ import annotations

import json
import shutil
import sys
from functools import lru_cache
from pathlib import Path

from fuzzing import assert_no_traceback, examples, invoke, scratch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from report_synthetic import write_run  # noqa: E402

FILES = ("run.json", "metrics.json", "trace.json.gz", "requests.csv", "nvml.csv")
CELLS = st.sampled_from(["abc", "", "nan", "inf", "-1", "1e308", "[/bold]", "\x1b[2J", "1 2 x", '"', "0x10"])
DAMAGE = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("cut"), st.sampled_from(FILES), st.integers(0, 10**6)),
    st.tuples(st.just("garbage"), st.sampled_from(FILES), st.binary(max_size=40)),
    st.tuples(st.just("cell"), st.sampled_from(("requests.csv", "nvml.csv")), st.tuples(st.integers(0, 10**4),
                                                                                        st.integers(0, 20), CELLS)),
    st.tuples(st.just("incomplete"), st.just("INCOMPLETE"), st.text(max_size=10)),
    st.tuples(st.just("status"), st.just("run.json"), st.sampled_from(["running", "failed", None, 1, "COMPLETE"])),
)


@lru_cache(maxsize=1)
def _template() -> Path:
    """Two intact run folders of one workload, written once per session (copied for every example)."""
    import atexit
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="abprof-fuzz-template-"))
    atexit.register(shutil.rmtree, base, True)
    write_run(base / "a", num_steps=4, kernels_per_step=5)
    write_run(base / "b", num_steps=4, kernels_per_step=5, seed=1)
    return base


def _damage(run: Path, edits) -> bool:
    """Apply the edits; return whether the folder is now incomplete (marker, or status not "complete")."""
    for kind, name, arg in edits:
        path = run / name
        if kind == "delete":
            path.unlink(missing_ok=True)
        elif kind == "cut" and path.exists():
            data = path.read_bytes()
            path.write_bytes(data[: arg % (len(data) + 1)])
        elif kind == "garbage":
            path.write_bytes(arg)
        elif kind == "cell" and path.exists():
            lines = path.read_text(errors="replace").splitlines()
            if len(lines) > 1:
                row, col, value = arg
                i = 1 + row % (len(lines) - 1)
                cells = lines[i].split(",")
                cells[col % len(cells)] = value
                lines[i] = ",".join(cells)
                path.write_text("\n".join(lines) + "\n")
        elif kind == "incomplete":
            path.write_text(arg)
        elif kind == "status":
            try:
                doc = json.loads((run / "run.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict):
                doc["status"] = arg
                (run / "run.json").write_text(json.dumps(doc))
    if (run / "INCOMPLETE").exists():
        return True
    try:
        return json.loads((run / "run.json").read_text()).get("status") != "complete"
    except (OSError, ValueError, AttributeError):
        return True


@settings(max_examples=examples(12))
@given(st.lists(DAMAGE, min_size=1, max_size=3))
def test_damaged_run_folders_report_compare_gate(edits):
    with scratch() as tmp:
        shutil.copytree(_template(), tmp / "runs")
        a, b = tmp / "runs" / "a", tmp / "runs" / "b"
        incomplete = _damage(b, edits)
        report = invoke("report", b, "--plotly-js", "cdn")
        assert_no_traceback(report, {0, 2})
        compare = invoke("compare", a, b, "--out", tmp / "c.html", "--plotly-js", "cdn")
        assert_no_traceback(compare, {0, 2})
        gate = invoke("gate", b, "-b", a, "--no-config", "--max", "gpu_idle_pct=100")
        assert_no_traceback(gate, {0, 1, 2, 4})
    if incomplete:
        assert report.exit_code == 2 and compare.exit_code == 2, edits
        assert gate.exit_code != 0, edits
