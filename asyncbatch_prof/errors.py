"""The one exception type for errors a user can act on (a leaf module: it imports nothing of ours).

The CLI turns it into one line on stderr and ``exit_code`` (2: bad input or usage). Library code
raises it (or a subclass) for bad input instead of letting a traceback reach the user.
"""

from __future__ import annotations


class AbprofError(Exception):
    """An error the user can act on; ``exit_code`` is the process exit code."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
