"""Text from traces and paths on its way to a terminal: no control characters, no rich markup.

A kernel or phase name is data. Printed raw, ``\\x1b]8;;...`` (OSC) opens a hyperlink and ``\\x1b[2J``
(CSI) clears the screen; printed through rich markup, ``[/bold]`` raises and ``[param|x]`` vanishes.
A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: object) -> str:
    """``str(text)`` with every control character written as a visible ``\\xNN``/``\\uNNNN`` escape."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def markup_safe(text: object) -> str:
    """:func:`printable` text, escaped for rich markup so that it prints literally."""
    from rich.markup import escape

    return escape(printable(text))
