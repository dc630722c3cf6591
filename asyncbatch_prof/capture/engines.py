"""The engines ``abprof run`` can drive: the reference engine, or transformers' continuous batching.

Both follow INTERFACES §1 (``generate(requests, on_step=...)``, ``warmup``, ``describe``, ``close``,
``vocab_size``), so the runner treats them alike.
"""

from __future__ import annotations

from typing import Any

from asyncbatch_prof.errors import AbprofError


def engine_config(spec) -> Any:
    """The reference engine's EngineConfig for a RunSpec; bad values become one AbprofError line."""
    from reference_engine import EngineConfig

    try:
        return EngineConfig(mode=spec.mode, **spec.engine_config)
    except (TypeError, ValueError) as exc:
        raise AbprofError(str(exc)) from None


def workload_config(workload: dict[str, Any]) -> Any:
    """The WorkloadConfig for a workload dict; bad values become one AbprofError line."""
    from reference_engine import WorkloadConfig

    try:
        return WorkloadConfig(**workload)
    except (TypeError, ValueError) as exc:
        raise AbprofError(str(exc)) from None


def make_requests(workload: dict[str, Any], vocab_size: int) -> list:
    """The workload's requests (same seed, same requests, whichever engine runs them)."""
    from reference_engine import make_workload

    try:
        return make_workload(workload_config(workload), vocab_size=vocab_size)
    except (OSError, ValueError, KeyError) as exc:
        raise AbprofError(f"workload: {exc}") from None


def build_engine(spec) -> tuple[Any, list]:
    """Build the engine named by ``spec.engine`` and its requests."""
    if spec.engine == "reference":
        from reference_engine import LLMEngine

        engine = LLMEngine(engine_config(spec))
    elif spec.engine == "transformers":
        from asyncbatch_prof.capture.transformers_engine import TransformersCBEngine

        engine = TransformersCBEngine(engine_config(spec))
    else:
        raise AbprofError(f"unknown engine {spec.engine!r} (engines: reference, transformers)")
    return engine, make_requests(spec.workload, engine.vocab_size)
