"""The README's "CI gates" section stays true: its TOML loads, the workflow it links parses and its gate command
runs, its shell examples run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from asyncbatch_prof.gate.spec import load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    assert "## CI gates" in text
    return text.split("## CI gates", 1)[1]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


def test_readme_toml_loads(tmp_path):
    (block,) = _blocks("toml")
    path = tmp_path / "abprof.toml"
    path.write_text(block)
    spec = load_config(path)
    assert spec.require_baseline and len(spec.checks) == 5


def test_readme_workflow_gate_command_runs(gate_cli, run_dir, tmp_path):
    # the workflow lives in examples/ (tests/test_ci_recipe.py runs all of it on committed H100 runs); the
    # README's CI section must link it, and its gate step must pass on an unchanged head
    (link,) = set(re.findall(r"\]\((examples/github-actions/[\w.-]+\.yml)\)", _section()))
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((README.parent / link).read_text())
    steps = doc["jobs"]["gate"]["steps"]
    (gate_step,) = [s for s in steps if "abprof gate" in s.get("run", "")]
    argv = shlex.split(gate_step["run"].replace("\\\n", " "))
    assert argv[:2] == ["abprof", "gate"]
    heads = {f"runs/head-{i}": run_dir(f"head-{i}", idle=3.0) for i in (1, 2, 3)}
    bases = {f"ci/baselines/async-{i}": run_dir(f"async-{i}", idle=2.5) for i in (1, 2, 3)}
    paths = {**heads, **bases}
    assert {a for a in argv if "/" in a} == set(paths), argv
    result = gate_cli(*[str(paths.get(a, a)) for a in argv[2:]])
    assert result.exit_code == 0, result.output
    for name in ("gate-junit.xml", "gate.json"):
        assert (tmp_path / name).exists(), name


def test_readme_shell_examples_parse(gate_cli, run_dir):
    (block,) = [b for b in _blocks("bash") if "abprof gate" in b]
    for line in block.replace("\\\n", " ").splitlines():
        if not line.startswith("abprof gate"):
            continue
        argv = shlex.split(line)[2:]
        runs = {a for a in argv if "/" in a}
        mapping = {r: str(run_dir(idle=3.0, tokens_per_s=25000.0, overlap=95.0, ttft_ms_p99=500.0, itl_ms_p50=9.0))
                   for r in runs}
        result = gate_cli(*[mapping.get(a, a) for a in argv])
        assert result.exit_code == 0, (line, result.output)
