"""The engines ``abprof run`` can drive: the reference engine, or transformers' continuous batching.

Both follow INTERFACES §1 (``generate(requests, on_step=...)``, ``warmup``, ``describe``, ``close``,
``vocab_size``), the small protocol ``capture`` records, so the pipeline treats them alike.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from asyncbatch_prof.errors import AbprofError


class EngineName(str, Enum):
    """Which engine runs the workload."""

    REFERENCE = "reference"
    TRANSFORMERS = "transformers"

    def __str__(self) -> str:  # the value, as a plain str would print
        return self.value


ENGINES = tuple(e.value for e in EngineName)


def engine_config(mode, config: dict[str, Any]) -> Any:
    """The reference engine's EngineConfig for a loop mode and the config fields; bad values become one
    AbprofError line."""
    from reference_engine import EngineConfig

    try:
        return EngineConfig(mode=mode, **config)
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


def build_engine(engine: EngineName | str, mode, config: dict[str, Any], workload: dict[str, Any]) -> tuple[Any, list]:
    """Build the engine named ``engine`` in loop ``mode`` and the workload's requests."""
    try:
        engine = EngineName(engine)
    except ValueError:
        raise AbprofError(f"unknown engine {engine!r} (engines: {', '.join(ENGINES)})") from None
    if engine is EngineName.REFERENCE:
        from reference_engine import LLMEngine

        built = LLMEngine(engine_config(mode, config))
    else:
        from asyncbatch_prof.engines.transformers_cb import TransformersCBEngine

        built = TransformersCBEngine(engine_config(mode, config))
    return built, make_requests(workload, built.vocab_size)


def tokens_digest(records: list) -> str:
    """``tokens_sha256`` of a run's request records (any engine's: ``request_id`` and ``output_token_ids``),
    in the reference engine's canonical encoding, so runs of different engines, loops or TP sizes compare."""
    from reference_engine.records import tokens_sha256

    return tokens_sha256(records)


def engine_has_option(name: str) -> bool:
    """Whether the reference engine's EngineConfig has the field ``name`` (options that arrive with it)."""
    import dataclasses

    from reference_engine import EngineConfig

    return name in {f.name for f in dataclasses.fields(EngineConfig)}
