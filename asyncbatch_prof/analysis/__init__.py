"""Trace → numbers: the metric contract computed from torch.profiler traces (no I/O beyond loading)."""
