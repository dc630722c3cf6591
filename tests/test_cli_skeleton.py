"""The CLI skeleton: help, version, module entry point."""

from __future__ import annotations

import subprocess
import sys

from asyncbatch_prof import __version__


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"abprof {__version__}"


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0, result.output
    for command in ("run", "analyze", "report", "compare", "gate"):
        assert command in result.output


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "asyncbatch_prof", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert __version__ in proc.stdout


def test_help_does_not_import_torch():
    code = "import sys; from asyncbatch_prof.cli import app; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
