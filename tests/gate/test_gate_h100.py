"""The gate on metrics recorded from real H100 runs of the reference engine (committed fixtures).

The fixtures are metrics.json files of ``abprof run`` on the H100, committed unchanged (see
tests/data/gate/README.md for which runs): an unthrottled sync/async pair and a throttled one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"
SYNC = DATA / "h100-sync" / "metrics.json"
ASYNC = DATA / "h100-async" / "metrics.json"

pytestmark = pytest.mark.skipif(not (SYNC.exists() and ASYNC.exists()), reason="H100 fixtures not recorded yet")


def _gate(gate_cli, head, baseline, tmp_path):
    out = tmp_path / "gate.json"
    result = gate_cli(head, "--baseline", baseline, "--json", out)
    return result, {c["name"]: c for c in json.loads(out.read_text())["checks"]}


def test_async_run_passes_against_the_async_baseline(gate_cli, tmp_path):
    result, checks = _gate(gate_cli, ASYNC, ASYNC, tmp_path)
    assert result.exit_code == 0, result.output
    assert checks["gpu_idle_pct max_increase_pp 2"]["status"] == "pass"


def test_sync_run_fails_against_the_async_baseline(gate_cli, tmp_path):
    # the default budget (gpu_idle_pct +2 pp, tokens_per_s -5%): the sync loop's bubble is back
    result, checks = _gate(gate_cli, SYNC, ASYNC, tmp_path)
    assert result.exit_code == 1, result.output
    idle = checks["gpu_idle_pct max_increase_pp 2"]
    assert idle["status"] == "fail", idle
    assert idle["delta"] > 2.0
    assert checks["clock_throttled not_throttled"]["status"] in ("pass", "skip")


def test_recorded_runs_are_what_they_say(tmp_path):
    sync, async_ = json.loads(SYNC.read_text()), json.loads(ASYNC.read_text())
    assert sync["schema_version"] == async_["schema_version"] == 1
    for doc in (sync, async_):
        assert "gpu_idle_pct" in doc["metrics"] and "tokens_per_s" in doc["metrics"]


THROTTLED = DATA / "h100-throttled-async" / "metrics.json"


@pytest.mark.skipif(not THROTTLED.exists(), reason="throttled H100 fixture not recorded")
def test_throttled_h100_runs_are_invalid_unless_allowed(gate_cli, tmp_path):
    """A real H100 pair whose NVML samples say the clocks throttled: the verdict is 4 (invalid), not a pass."""
    sync = DATA / "h100-throttled-sync" / "metrics.json"
    assert json.loads(THROTTLED.read_text())["metrics"]["clock_throttled"] is True
    result, checks = _gate(gate_cli, THROTTLED, THROTTLED, tmp_path)
    assert result.exit_code == 4, result.output
    assert checks["clock_throttled not_throttled"]["status"] == "invalid"
    out = tmp_path / "allowed.json"
    allowed = gate_cli(sync, "--baseline", THROTTLED, "--allow-throttled", "--json", out)
    assert allowed.exit_code == 1, allowed.output  # allowed: the sync loop's bubble still fails the budget
