"""Imports point down only: every ``import`` in asyncbatch_prof/ and reference_engine/ (function-level ones
included) is checked against the allowed layer order, so an upward import fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room → the rooms of ours it may import. "asyncbatch_prof" is the package root (``__version__``).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "textsafe": set(),  # printing names literally: a leaf like errors
    "analysis": {"errors"},
    "runfolder": {"errors", "analysis"},  # validates a metrics.json it loads against analysis.contract
    "capture": {"errors", "asyncbatch_prof"},
    "engines": {"errors", "capture", "reference_engine"},
    "report": {"errors", "textsafe", "analysis", "runfolder", "asyncbatch_prof"},
    "gate": {"errors", "textsafe", "analysis", "runfolder", "asyncbatch_prof"},
    "pipeline": {"errors", "textsafe", "analysis", "runfolder", "capture", "engines", "report", "asyncbatch_prof"},
    "cli": {"errors", "textsafe", "analysis", "runfolder", "capture", "engines", "report", "gate", "pipeline",
            "asyncbatch_prof"},
    "asyncbatch_prof": {"analysis"},  # the root's lazy ``analyze`` for notebooks
    "__main__": {"cli"},
    "reference_engine": set(),
}


def _room(module: str) -> str | None:
    """The room of a dotted module name of ours, None for anything else."""
    parts = module.split(".")
    if parts[0] == "reference_engine":
        return "reference_engine"
    if parts[0] != "asyncbatch_prof":
        return None
    return parts[1] if len(parts) > 1 else "asyncbatch_prof"


def _module_of(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the file, with ``from x import y`` also as ``x.y`` (a module
    imported from a package, e.g. ``from asyncbatch_prof import runfolder``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "asyncbatch_prof":
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(files, root: Path = ROOT) -> list[str]:
    """Every import of ours that the layer order does not allow, as ``path:line: room -> room (module)``."""
    bad = []
    for path in files:
        here = _room(_module_of(path, root))
        for line, module in _imports(path):
            there = _room(module)
            if there is None or there == here:
                continue
            if module in ("asyncbatch_prof.__version__", "asyncbatch_prof.analyze"):
                there = "asyncbatch_prof"
            if there not in ALLOWED[here]:
                bad.append(f"{path.relative_to(root)}:{line}: {here} -> {there} ({module})")
    return bad


def _sources() -> list[Path]:
    return sorted([*(ROOT / "asyncbatch_prof").rglob("*.py"), *(ROOT / "reference_engine").rglob("*.py")])


def test_imports_point_down_only():
    assert violations(_sources()) == []


def test_every_room_is_known():
    rooms = {_room(_module_of(p)) for p in _sources()}
    assert rooms <= set(ALLOWED), rooms - set(ALLOWED)


@pytest.mark.parametrize("room, source, expected", [
    ("analysis", "from asyncbatch_prof import __version__\n", "analysis -> asyncbatch_prof"),
    ("analysis", "def f():\n    from asyncbatch_prof.runfolder import atomic_write_json\n", "analysis -> runfolder"),
    ("capture", "from asyncbatch_prof.report import write_report\n", "capture -> report"),
    ("capture", "import reference_engine\n", "capture -> reference_engine"),
    ("report", "from asyncbatch_prof.pipeline import runner\n", "report -> pipeline"),
    ("reference_engine", "from asyncbatch_prof.capture import profiler\n", "reference_engine -> capture"),
])
def test_an_upward_import_is_caught(tmp_path, room, source, expected):
    package = "reference_engine" if room == "reference_engine" else f"asyncbatch_prof/{room}"
    path = tmp_path / package / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = violations([path], root=tmp_path)
    assert len(found) == 1 and expected in found[0], found


def test_run_mode_values_are_the_engine_loop_modes():
    """The CLI's RunMode cannot import the engine's LoopMode (torch comes with it); the values agree."""
    from asyncbatch_prof.pipeline.options import RunMode
    from reference_engine.config import LoopMode

    assert {m.value for m in RunMode} == {m.value for m in LoopMode} | {"both"}
    assert all(LoopMode(loop) for m in RunMode for loop in m.loops)
