"""The README's test command and .ci/run stay one command, and it installs the chromium the browser tests use."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_report_readme_test_command_is_ci_run():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Install and run the tests:\s*```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci_last = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].strip()
    assert block == ci_last
    assert block.startswith("(apt-get update -qq && apt-get install -y -qq chromium) && ")
    assert block.endswith("python -m pytest -q")
