"""Shared fixtures: a CLI runner with stable output, and the paths of shared test data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = ROOT.parent / "shared" / "traces"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _stable_terminal(monkeypatch):
    """Wide, colourless terminal so assertions on CLI output do not depend on the runner."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")


@pytest.fixture
def cli():
    """Invoke ``abprof`` in-process: ``cli("analyze", path)`` returns typer's Result."""
    from typer.testing import CliRunner

    from asyncbatch_prof.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` where there is no CUDA device."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install, other tests will say so
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
