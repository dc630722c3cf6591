"""abprof: profile LLM continuous-batching engines and explain why the GPU is idle.

The notebook entry point is :func:`analyze`; the command line is ``abprof`` (``python -m asyncbatch_prof``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from asyncbatch_prof.analysis import TraceAnalysis


def analyze(path, **options) -> "TraceAnalysis":
    """Analyze a torch.profiler trace (``.json`` or ``.json.gz``); see :func:`asyncbatch_prof.analysis.analyze`.

    Imported lazily so that ``import asyncbatch_prof`` stays cheap.
    """
    from asyncbatch_prof.analysis import analyze as _analyze

    options.setdefault("tool_version", __version__)
    return _analyze(path, **options)


__all__ = ["__version__", "analyze"]
