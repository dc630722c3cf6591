"""Capture: run a workload on an engine under torch.profiler and NVML, and write the run folder."""
