"""Every `abprof ...` command in README.md's bash blocks runs, through the real CLI, with the exit code the README
documents (0 unless EXPECTED_EXIT says otherwise), so a README example that stops working fails CI.

Commands are taken from each ```bash block (continuation lines joined, comments dropped, `a && b` split, a
`| jq FILTER` kept and applied to the output). They run in one workspace where the README's paths exist:
- `abprof run` examples run for real on the CPU (`tiny` preset), with a small workload appended when the command
  gives none; their run folders stand in for the `runs/...` folders that `report` and `compare` examples name;
- `trace.json.gz` is a committed trace (transformers' continuous batching, 90 KB);
- every folder a `gate` example names is a copy of the committed H100 async run (tests/data/gate).
Commands that need a GPU or a long run are in SKIPPED, each with its reason; a new README example is run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA = ROOT / "tests" / "data"
TRACE = DATA / "traces" / "transformers-cb-sync-slice.json.gz"
GATE_RUN = DATA / "gate" / "h100-async"

SKIPPED = {
    "abprof run --mode both --measure-overhead":
        "a long run: each mode also runs the whole workload without the profiler; its figure is for the GPU",
    "abprof run --engine transformers --mode sync":
        "transformers' continuous batching: a GPU example (the H100 headline rows), not run on the CPU here",
}
EXPECTED_EXIT: dict[str, int] = {}  # command -> exit code, where the README documents one other than 0

SMALL_WORKLOAD = ["--requests", "4", "--prompt-len", "fixed:16", "--output-len", "fixed:8"]
WORKLOAD_OPTIONS = {"--requests", "--prompt-len", "--output-len", "--workload-jsonl"}


def readme_commands() -> list[tuple[list[str], str | None]]:
    """(argv, jq filter or None) of every abprof command in the README's bash blocks, in order, once each."""
    commands, seen = [], set()
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&", line):
                pipe = None
                if "|" in part:
                    part, pipe = part.split("|", 1)
                    pipe = shlex.join(shlex.split(pipe, comments=True))
                argv = shlex.split(part, comments=True)
                if argv[:1] != ["abprof"] or " ".join(argv) in seen:
                    continue
                seen.add(" ".join(argv))
                commands.append((argv, pipe))
    return commands


def _abprof(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "asyncbatch_prof", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _real_runs(workspace: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run the README's abprof run examples (not skipped) in the workspace; their results by command."""
    results = {}
    for argv, _ in readme_commands():
        if argv[:2] != ["abprof", "run"] or " ".join(argv) in SKIPPED:
            continue
        small = [] if WORKLOAD_OPTIONS & set(argv) else SMALL_WORKLOAD
        results[" ".join(argv)] = _abprof(argv + small, workspace)
    return results


def _complete_runs(workspace: Path) -> list[Path]:
    return sorted(p.parent for p in workspace.rglob("run.json")
                  if json.loads(p.read_text()).get("status") == "complete" and (p.parent / "trace.json.gz").exists())


def _stand_in(workspace: Path, name: str, runs: list[Path], source: Path | None = None) -> None:
    """Make the README's path `name` exist: a copy of `source`, or of the real run whose mode its name says."""
    target = workspace / name
    if target.exists():
        return
    if source is None:
        mode = "sync" if name.rstrip("/").endswith("/sync") else "async"
        source = next((r for r in runs if json.loads((r / "run.json").read_text()).get("mode") == mode), runs[0])
    shutil.copytree(source, target)


def _folder_arguments(argv: list[str]) -> list[str]:
    """The arguments of a gate, report or compare example that name run folders (relative paths, not options)."""
    args = [a for a in argv[2:] if not a.startswith("-") and "/" in a and not a.endswith("/")]
    if argv[1] != "gate":  # report RUN ..., compare A B ...: the folders come first; --out's value is not one
        args = [a for a in argv[2:4] if a in args]
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    shutil.copy(TRACE, root / "trace.json.gz")
    runs = _real_runs(root)
    complete = _complete_runs(root)
    for argv, _ in readme_commands():
        if argv[1] == "gate":
            for name in _folder_arguments(argv):
                _stand_in(root, name, complete, GATE_RUN)
        elif argv[1] in ("report", "compare") and complete:
            for name in _folder_arguments(argv):
                _stand_in(root, name, complete)
    return root, runs


def _jq(filter_: str, text: str):
    """Apply `jq FILTER` (jq itself where installed, else a `.a.b` path walk) and return the value."""
    argv = shlex.split(filter_)
    assert argv[0] == "jq" and len(argv) == 2, filter_
    if shutil.which("jq"):
        out = subprocess.run(["jq", "-c", argv[1]], input=text, capture_output=True, text=True, check=True).stdout
        return json.loads(out)
    value = json.loads(text)
    for key in filter(None, argv[1].split(".")):
        value = value[key]
    return value


@pytest.mark.parametrize("argv, pipe", readme_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_readme_example_runs(workspace, argv, pipe):
    command = " ".join(argv)
    if command in SKIPPED:
        pytest.skip(SKIPPED[command])
    root, runs = workspace
    result = runs[command] if command in runs else _abprof(argv, root)
    expected = EXPECTED_EXIT.get(command, 0)
    assert result.returncode == expected, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    if pipe is not None:
        value = _jq(pipe, result.stdout)
        # the README's jq examples are for scripts: they must give a number, not an object or null
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (pipe, value)


def test_readme_commands_found():
    # the extraction itself: a README rewrite that hides the examples from this test must fail here
    commands = [" ".join(argv) for argv, _ in readme_commands()]
    verbs = {c.split()[1] for c in commands}
    assert {"run", "analyze", "report", "compare", "gate"} <= verbs, commands
    assert set(SKIPPED) <= set(commands), "SKIPPED names a command the README no longer has"
    assert set(EXPECTED_EXIT) <= set(commands)


def test_readme_runs_made_complete_run_folders(workspace):
    root, runs = workspace
    assert runs, "the README shows no abprof run example that runs here"
    assert len(_complete_runs(root)) >= len(runs)
