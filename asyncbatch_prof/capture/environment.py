"""What the run ran on, for run.json: GPU, driver, CUDA, library versions, abprof version, git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git checkout abprof runs from (with ``-dirty`` when it has changes), or None."""
    where = Path(path or Path(__file__).resolve().parent)
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=5)
        commit = proc.stdout.strip()
        if proc.returncode != 0 or not all(c in "0123456789abcdef" for c in commit) or not commit:
            return None  # not a checkout, or one without commits
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment(driver: str | None = None) -> dict[str, Any]:
    """run.json's ``environment``: versions as strings, None where a thing is not there (no GPU: gpu None)."""
    import torch

    from asyncbatch_prof import __version__

    has_cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if has_cuda else None,
        "gpu_count": torch.cuda.device_count() if has_cuda else 0,
        "driver": driver,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "abprof": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "git_commit": git_commit(),
    }
    if has_cuda:
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 2)
        env["compute_capability"] = f"{props.major}.{props.minor}"
    if driver is None and has_cuda:
        env["driver"] = _driver_from_nvml()
    return env


def _driver_from_nvml() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            value = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:
        return None
