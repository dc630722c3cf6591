"""Issue 20: an unknown option (or any usage error) prints one line, exit 2, for every command; the text
helpers keep control characters and rich markup from the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "analyze", "report", "compare", "gate"]


@pytest.mark.parametrize("args", [[c, "--no-such-option"] for c in COMMANDS] + [["--no-such-option"], ["nosuch"],
                                  ["analyze"], ["gate"], ["analyze", "t.json", "--threshold-us", "abc"]])
def test_usage_error_is_one_line_exit_2(cli, args):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("abprof: error:"), result.output
    assert "╭" not in result.output and "Traceback" not in result.output


def test_usage_error_through_the_console_entry_point():
    """The installed script path (``python -m asyncbatch_prof``), not only typer's test runner."""
    proc = subprocess.run([sys.executable, "-m", "asyncbatch_prof", "gate", "--bogus"], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "abprof: error: No such option: --bogus (see 'python -m asyncbatch_prof gate -h')"]


def test_help_and_version_still_exit_0(cli):
    assert cli("--version").exit_code == 0
    assert cli("gate", "-h").exit_code == 0 and "Usage" in cli("gate", "-h").output


def test_printable_escapes_controls_and_markup_safe_escapes_tags():
    from asyncbatch_prof.textsafe import markup_safe, printable

    assert printable("a\x1b[2Jb\x07\x9b\x00\ud800\tok\n") == "a\\x1b[2Jb\\x07\\x9b\\x00\\ud800\tok\n"
    assert printable("plain µs ✓") == "plain µs ✓"
    from rich.text import Text

    for tag in ("[/bold]", "[/y]", "[param|x]", "[link=http://x]y[/link]"):
        assert Text.from_markup(markup_safe(tag)).plain == tag
