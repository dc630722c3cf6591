"""Requests as the engine sees them (no torch here).

A ``Sequence`` holds the prompt and output tokens of one request and how many of them already have
K/V in the cache (``num_computed``). When the scheduler puts a sequence's last token into a step,
the token that step will sample is counted at once (``num_tokens`` grows by one) although its value
is not known yet: it is stored as a *placeholder* ``-(row + 1)``, where ``row`` is the sequence's row
in that step's sampled tokens. The async loop schedules the next step before the tokens come back,
so its inputs may contain placeholders; the device fills them from the previous step's sampled
tokens (``ModelRunner``). ``Scheduler.update`` later writes the real value over the placeholder.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reference_engine.records import RequestRecord


@dataclass(slots=True)
class Request:
    """One request of a workload: prompt token ids, how many tokens to generate, and when it arrives."""

    request_id: int
    prompt_token_ids: list[int]
    max_new_tokens: int
    arrival_s: float = 0.0

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


class Status(enum.Enum):
    WAITING = "waiting"  # arrived, not holding blocks (new or preempted)
    RUNNING = "running"  # holds blocks, scheduled every step it fits
    DRAINING = "draining"  # every token scheduled; waiting for the last sampled values to come back
    FINISHED = "finished"


class Sequence:
    __slots__ = ("request", "record", "token_ids", "prompt_len", "num_computed", "num_known_outputs",
                 "num_scheduled_outputs", "status", "block_table")

    def __init__(self, request: Request, record: RequestRecord):
        self.request = request
        self.record = record
        self.token_ids: list[int] = list(request.prompt_token_ids)  # prompt + outputs (placeholders < 0)
        self.prompt_len = len(request.prompt_token_ids)
        self.num_computed = 0  # tokens whose K/V are in the cache (or in a step already launched)
        self.num_known_outputs = 0  # sampled tokens whose value the host knows
        self.num_scheduled_outputs = 0  # sampled tokens, known or pending
        self.status = Status.WAITING
        self.block_table: list[int] = []

    @property
    def request_id(self) -> int:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def max_new_tokens(self) -> int:
        return self.request.max_new_tokens

    @property
    def all_scheduled(self) -> bool:
        """Every output token has been (or is being) sampled: nothing more to compute."""
        return self.num_scheduled_outputs >= self.request.max_new_tokens

    def __repr__(self) -> str:
        return (f"Sequence(id={self.request_id}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed}, outputs={self.num_known_outputs}/{self.num_scheduled_outputs}, "
                f"blocks={len(self.block_table)})")
