"""Capture: record a workload on an engine under torch.profiler and NVML, and return it in memory.

``recorder.record`` drives any engine with the small protocol of INTERFACES §1 and returns a
``Capture`` (the engine's request records, the trace's path, NVML samples, the environment); the
profiler (``profiler``), the NVML sampler (``nvml``) and the environment (``environment``) are its parts.
Capture knows no engine by name and imports neither the analysis nor the report.
"""
