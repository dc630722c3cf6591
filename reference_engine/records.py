"""What ``generate()`` hands back: one record per request, and the run's totals."""

from __future__ import annotations

import hashlib
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
    rank: int = 0  # tensor parallelism: ranks other than 0 hold no records
    # a CPU device side apart from the host (the device process, the worker thread): each launched step's
    # (hand-over start, hand-over end, device work start, device work end), epoch ns (time.time_ns, one clock for
    # the engine's process and its device process); empty on CUDA, whose device work the profiler records
    # itself, and for inline device work, which is the engine thread's own
    device_spans_ns: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def tokens_sha256(self) -> str | None:
        """The digest of the generated tokens (``tokens_sha256``), or None on a rank other than 0."""
        return tokens_sha256(self.records) if self.rank == 0 else None

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0


def tokens_sha256(records: list[RequestRecord]) -> str:
    """SHA-256 (hex) of the requests' output token ids, so runs can be checked for identical output.

    Canonical encoding: for each request in ascending ``request_id``, the ASCII line
    ``"<request_id>:<id>,<id>,...\n"`` (decimal, no spaces; a request with no output gives ``"<request_id>:\n"``);
    the digest is over the concatenation of the lines.
    """
    digest = hashlib.sha256()
    for rec in sorted(records, key=lambda r: r.request_id):
        digest.update(f"{rec.request_id}:{','.join(map(str, rec.output_token_ids))}\n".encode("ascii"))
    return digest.hexdigest()
