"""run.json's environment and the one-line reasons a failed run leaves behind."""

from __future__ import annotations

import subprocess

from asyncbatch_prof.capture.environment import environment, git_commit
from asyncbatch_prof.pipeline.runner import fail_reason


def test_capture_environment_versions(tmp_path):
    env = environment()
    assert env["torch"] and env["python"] and env["abprof"] and env["transformers"]
    assert env["gpu"] is None and env["gpu_count"] == 0  # this suite runs on the CPU
    assert git_commit(tmp_path) is None  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(tmp_path) is None  # a checkout without commits has no commit to name


def test_capture_fail_reasons():
    class OutOfMemoryError(RuntimeError):
        pass

    assert fail_reason(KeyboardInterrupt()) == "interrupted (Ctrl-C) before the run finished"
    assert fail_reason(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")) == (
        "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert fail_reason(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert fail_reason(RuntimeError()) == "RuntimeError"
