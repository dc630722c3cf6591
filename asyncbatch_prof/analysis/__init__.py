"""Trace → numbers: the metric contract computed from torch.profiler traces (no I/O beyond loading).

``analyze(path)`` returns a :class:`TraceAnalysis`; unreadable input raises :class:`TraceError`.
"""

from asyncbatch_prof.analysis.errors import TraceError
from asyncbatch_prof.analysis.result import TraceAnalysis, analyze

__all__ = ["TraceAnalysis", "TraceError", "analyze"]
