"""The reference engine abprof profiles: continuous batching over a paged KV cache, sync or async loop."""

from reference_engine.config import PRESETS, EngineConfig, LoopMode
from reference_engine.engine import LLMEngine
from reference_engine.records import GenerateResult, RequestRecord
from reference_engine.sampler import SamplingParams
from reference_engine.sequence import Request
from reference_engine.workload import WorkloadConfig, load_workload_jsonl, make_workload

__all__ = ["PRESETS", "EngineConfig", "GenerateResult", "LLMEngine", "LoopMode", "Request", "RequestRecord",
           "SamplingParams", "WorkloadConfig", "load_workload_jsonl", "make_workload"]
