"""Fixtures of the capture tests: a fake pynvml (fake_pynvml.py), in this process and in the NVML child."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from asyncbatch_prof.capture import nvml as nvml_mod

FAKE_PYNVML = Path(__file__).with_name("fake_pynvml.py")
_spec = importlib.util.spec_from_file_location("abprof_fake_pynvml", FAKE_PYNVML)
fake_pynvml = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_pynvml)
FakeNvml = fake_pynvml.FakeNvml


def use_fake_in_child(monkeypatch, **config) -> None:
    """Make the NVML child process load the fake with ``config`` (it cannot see monkeypatches)."""
    monkeypatch.setenv(nvml_mod.PYNVML_ENV, str(FAKE_PYNVML))
    monkeypatch.setenv("ABPROF_FAKE_NVML", json.dumps(config))


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a FakeNvml as the sampler's pynvml and return it (keyword args rebuild it)."""
    holder = {"fake": FakeNvml()}
    monkeypatch.setattr(nvml_mod, "_import_pynvml", lambda: holder["fake"])
    use_fake_in_child(monkeypatch)

    def configure(**kwargs):
        holder["fake"] = FakeNvml(**kwargs)
        use_fake_in_child(monkeypatch, **kwargs)
        return holder["fake"]

    holder["fake"].configure = configure
    return holder["fake"]


@pytest.fixture
def no_nvml(monkeypatch):
    """Make NVML absent, as on a machine without the library or a GPU."""
    def broken():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(nvml_mod, "_import_pynvml", broken)
    use_fake_in_child(monkeypatch, absent=True)
