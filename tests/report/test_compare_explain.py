"""`abprof compare` explains: the --json schema, the verdict above the table, the waterfall, and direction
labels that never contradict the verdict. Run folders here are analyzed for real (no stand-in analysis)."""

from __future__ import annotations

import json

from report_synthetic import METRICS, write_run

from asyncbatch_prof.report.compare import WINDOW_SHARES, delta


def _check_node(node):
    assert set(node) >= {"name", "kind", "delta_ms"} and isinstance(node["delta_ms"], float)
    kids = node.get("children") or []
    assert [abs(k["delta_ms"]) for k in kids] == sorted((abs(k["delta_ms"]) for k in kids), reverse=True)
    for kid in kids:
        _check_node(kid)


def _pair(tmp_path):
    # B launches three times the kernels per step: a longer step, with a lower idle share in its metrics.json
    a, _ = write_run(tmp_path / "pair" / "a", kernels_per_step=10, mode="sync")
    lower_idle = dict(METRICS, gpu_idle_pct={"step": 1.8, "kernel": 1.5}, host_bound_pct={"step": 0.5, "kernel": 0.4})
    b, _ = write_run(tmp_path / "pair" / "b", kernels_per_step=30, mode="async", metrics=lower_idle, seed=1)
    return a, b


def test_compare_json_schema_and_sum(cli, tmp_path):
    a, b = _pair(tmp_path)
    result = cli("compare", a, b, "--json", "--out", tmp_path / "cmp.html")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ex = doc["explanation"]
    assert ex["unit"] == "step" and ex["total_delta_ms"] > 0 and ex["verdict"].startswith("b is ")
    comps = ex["components"]
    for comp in comps:
        _check_node(comp)
    assert [abs(c["delta_ms"]) for c in comps] == sorted((abs(c["delta_ms"]) for c in comps), reverse=True)
    assert abs(sum(c["delta_ms"] for c in comps) - ex["total_delta_ms"]) <= 0.01 * abs(ex["total_delta_ms"])
    gpu = next(c for c in comps if c["kind"] == "gpu_busy")
    assert abs(sum(k["delta_ms"] for k in gpu["children"]) - gpu["delta_ms"]) <= 1e-9 + 1e-9 * abs(gpu["delta_ms"])
    # slower per step: no window share may be called better
    shares = [d for d in doc["deltas"] if d["metric"] in WINDOW_SHARES]
    assert shares and all(d["direction"] != "better" for d in shares)
    assert any(d["direction"] == "neutral" and "of a longer step" in d["change"] for d in shares)
    assert ex["hardware"]["a"]["nvml_util_pct"] == METRICS["nvml_util_pct"]
    html = (tmp_path / "cmp.html").read_text()
    assert 'data-figure="waterfall"' in html and '"type":"waterfall"' in html


def test_compare_terminal_verdict_above_table(cli, tmp_path):
    a, b = _pair(tmp_path)
    result = cli("compare", a, b, "--out", tmp_path / "cmp.html")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    verdict = next(i for i, line in enumerate(lines) if "slower per step" in line)
    table = next(i for i, line in enumerate(lines) if "GPU idle (step window)" in line)
    assert verdict < table
    assert "(better)" not in lines[table]


def test_window_share_labels_follow_the_verdict():
    d = delta("gpu_idle_pct.step", "GPU idle", 24.0, 2.0, slower=True)
    assert d.direction == "neutral"
    assert delta("gpu_idle_pct.step", "GPU idle", 24.0, 2.0, slower=False).direction == "better"
    assert delta("gpu_idle_pct.step", "GPU idle", 2.0, 24.0, slower=False).direction == "neutral"
    assert delta("tokens_per_s", "tok/s", 800.0, 260.0, slower=True).direction == "worse"
