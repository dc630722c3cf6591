"""What ``generate()`` hands back: one record per request, and the run's totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request (times in seconds since ``generate()`` started)."""

    request_id: int
    prompt_len: int
    max_new_tokens: int
    arrival_s: float
    scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    preemptions: int = 0
    rejected_reason: str | None = None
    finish_reason: str | None = None  # "length" | "eos" | "rejected"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class GenerateResult:
    records: list[RequestRecord]  # in request order
    wall_s: float  # measured wall time of generate()
    output_tokens: int
    num_steps: int
    start_epoch_ns: int  # time.time_ns() when generate() started
    # (start, end) of every engine step in seconds since generate() started, from the engine's own clock:
    # always recorded (two clock reads a step), so a step's wall time can be compared with and without a profiler
    step_spans_s: list[tuple[float, float]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0
