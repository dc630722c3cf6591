"""The NVML sampler's child process, and the parent's link to it.

NVML polling in a thread of the engine's process competes with the engine loop for the GIL (+3.3% per
step in the host-bound sync loop on the H200); in a child process it shares nothing but a CPU core.

Parent → child (stdin, one JSON object a line): ``{"mark": label, "epoch_us": t}`` or ``{"stop": true}``.
Child → parent (stdout, one line each): the hello once NVML is open (``available``, ``reason``,
``gpu_name``, ``driver``, ``gpm_supported``, ``unsupported``), and at stop the results (``samples`` as
``[epoch_us, series, value]``, ``marks`` with the energy counter read when each mark arrived,
``unsupported``, ``gpm_supported``, ``error``). The child exits when its stdin closes, so it ends with its
parent even when the parent is killed; it ignores Ctrl-C (the parent decides when to stop).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELLO_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class _Lines:
    """Whole lines from a pipe's file descriptor, with a deadline (select + os.read, no buffered reader that
    would hide a second line from select)."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def read(self, timeout_s: float | None) -> bytes | None:
        """The next line without its newline; b"" at end of file; None when ``timeout_s`` (s) passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return b""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


class ChildLink:
    """The parent's end: starts the child, sends marks, and takes the samples back at stop."""

    def __init__(self, proc: subprocess.Popen, stderr):
        self.proc, self._stderr, self._lines = proc, stderr, _Lines(proc.stdout.fileno())

    @classmethod
    def start(cls, device_index: int, interval_s: float, buffer_poll_s: float,
              timeout_s: float = HELLO_TIMEOUT_S) -> tuple["ChildLink", dict]:
        """Start the child and wait for its hello (raises when it does not come within ``timeout_s`` s)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncbatch_prof.capture.nvml_child", str(device_index), repr(interval_s),
             repr(buffer_poll_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
        link = cls(proc, stderr)
        line = link._lines.read(timeout_s)
        if not line:
            link.close(kill=True)
            why = "no answer in {:.0f} s".format(timeout_s) if line is None else "it ended at once"
            raise RuntimeError(f"{why}{link.stderr_tail()}")
        return link, json.loads(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: dict) -> None:
        """One command to the child; a child that is gone is noticed at stop."""
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict | None:
        """Ask for the results and end the child; None when it died or did not answer in ``timeout_s`` s."""
        self.send({"stop": True})
        line = self._lines.read(timeout_s)
        self.close(kill=not line)
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def close(self, kill: bool = False) -> None:
        """Close the pipes (the child exits on end of stdin) and reap it."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return f": {lines[-1]}" if lines else ""


# ---- the child ---------------------------------------------------------------------------------------
def _write(message: dict) -> None:
    data = memoryview(json.dumps(message).encode() + b"\n")
    while data:
        data = data[os.write(1, data):]


def serve(device_index: int, interval_s: float, buffer_poll_s: float) -> int:
    """The child's loop: open NVML, say hello, poll until stop (results sent) or end of stdin (exit 0)."""
    from asyncbatch_prof.capture.nvml import NvmlSampler

    sampler = NvmlSampler(device_index=device_index, interval_s=interval_s, buffer_poll_s=buffer_poll_s,
                          process=False)
    opened = sampler.open()
    _write({"available": sampler.available, "reason": sampler.reason, "gpu_name": sampler.gpu_name,
            "driver": sampler.driver, "gpm_supported": sampler.gpm_supported, "unsupported": sampler.unsupported})
    if not opened:
        return 0
    lines, next_point, next_buffer = _Lines(0), 0.0, 0.0
    while True:
        now = time.monotonic()
        if sampler.error is None and now >= next_point:
            try:
                sampler._poll_points()
                if now >= next_buffer:
                    sampler._poll_buffers()
                    next_buffer = now + buffer_poll_s
            except Exception as exc:  # keep serving marks and stop; say what broke
                sampler.error = f"NVML sampling stopped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            next_point = now + interval_s
        line = lines.read(max(0.0, next_point - time.monotonic()))
        if line is None:
            continue
        if line == b"":  # the parent is gone
            sampler.close()
            return 0
        message = json.loads(line)
        if "mark" in message:
            sampler.mark(message["mark"])
            sampler.marks[message["mark"]]["epoch_us"] = message["epoch_us"]
        elif message.get("stop"):
            sampler.close()
            _write({"samples": sampler.snapshot(), "marks": sampler.marks, "unsupported": sampler.unsupported,
                    "gpm_supported": sampler.gpm_supported, "error": sampler.error})
            return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return serve(int(argv[0]), float(argv[1]), float(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
