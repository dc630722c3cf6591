"""examples/github-actions/abprof-gate.yml works as copied: valid YAML, and every abprof command in it runs,
against committed run folders, with the exit code the README documents for the situation.

The GPU runs (`abprof run` on the self-hosted runner) cannot happen here: each one's `--out` folder is filled
with a committed H100 run folder (tests/data/gate) instead, after checking that its options are real.
The gate commands run as written, through the real CLI in a subprocess.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "github-actions" / "abprof-gate.yml"
FIXTURES = ROOT / "tests" / "data" / "gate"


def _commands(job: str) -> list[list[str]]:
    """The abprof command lines of one job's run steps, continuation lines joined and `for i in 1 2 3` unrolled."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    out = []
    for step in doc["jobs"][job]["steps"]:
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            loop = re.match(r"\s*for (\w+) in ([\w ]+); do (.*?); done", line)
            if loop and "abprof" in loop.group(3):
                var, values, body = loop.groups()
                out += [shlex.split(body.replace(f"${var}", v)) for v in values.split()]
            elif line.strip().startswith("abprof"):
                out.append(shlex.split(line))
    return out


def _abprof(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asyncbatch_prof", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "100", **(env or {})}, timeout=120)


def _option_names(cwd: Path) -> set[str]:
    help_text = _abprof(["run", "--help"], cwd).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))


def _stand_in_runs(commands, cwd: Path, fixture: str) -> None:
    known = _option_names(cwd)
    for argv in commands:
        if argv[:2] != ["abprof", "run"]:
            continue
        assert {a for a in argv if a.startswith("--")} <= known, argv
        shutil.copytree(FIXTURES / fixture, cwd / argv[argv.index("--out") + 1])


def _baselines(cwd: Path, fixture: str = "h100-async") -> None:
    for i in (1, 2, 3):
        shutil.copytree(FIXTURES / fixture, cwd / "ci" / "baselines" / f"async-{i}")


def _gate_commands(job: str):
    return [argv for argv in _commands(job) if argv[:2] == ["abprof", "gate"]]


def test_workflow_is_valid_and_has_both_jobs():
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert set(doc["jobs"]) == {"gate", "baseline"}
    for job in doc["jobs"].values():
        assert all("uses" in s or "run" in s for s in job["steps"])
    assert _gate_commands("gate") and _gate_commands("baseline")


@pytest.mark.parametrize("head, expected", [("h100-async", 0), ("h100-sync", 1), ("h100-throttled-async", 4)])
def test_gate_job_exit_codes(tmp_path, head, expected):
    # an unchanged engine passes (0); the sync loop's bubble back is a regression (1); throttled clocks are
    # not evidence (4)
    _stand_in_runs(_commands("gate"), tmp_path, head)
    _baselines(tmp_path)
    summary = tmp_path / "summary.md"
    (gate,) = _gate_commands("gate")
    result = _abprof(gate[1:], tmp_path, {"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == expected, result.stdout + result.stderr
    assert (tmp_path / "gate-junit.xml").exists() and (tmp_path / "gate.json").exists()
    assert "gpu_idle_pct" in summary.read_text()  # the job summary got the table


def test_gate_job_without_a_baseline_exits_3(tmp_path):
    _stand_in_runs(_commands("gate"), tmp_path, "h100-async")
    (gate,) = _gate_commands("gate")
    result = _abprof(gate[1:], tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr


@pytest.mark.parametrize("runs, expected", [("h100-async", 0), ("h100-throttled-async", 4)])
def test_baseline_job_refuses_bad_evidence(tmp_path, runs, expected):
    _stand_in_runs(_commands("baseline"), tmp_path, runs)
    (check,) = _gate_commands("baseline")
    result = _abprof(check[1:], tmp_path)
    assert result.returncode == expected, result.stdout + result.stderr
