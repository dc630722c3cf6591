"""Paged KV cache bookkeeping: fixed-size blocks, a free list, one block table per sequence (no torch)."""

from __future__ import annotations

from reference_engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Extra blocks ``seq`` needs so that its first ``num_tokens`` positions have a slot."""
        return max(0, self.blocks_for(num_tokens) - len(seq.block_table))

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self.free_blocks)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        need = self.blocks_needed(seq, num_tokens)
        if need > len(self.free_blocks):
            raise RuntimeError("out of KV cache blocks (call can_grow first)")
        if need:
            free = self.free_blocks
            seq.block_table.extend(free[-need:][::-1])
            del free[-need:]

    def free(self, seq: Sequence) -> None:
        """Give the blocks back. Rebinds ``seq.block_table`` (a scheduled batch keeps the old list)."""
        self.free_blocks.extend(reversed(seq.block_table))
        seq.block_table = []
