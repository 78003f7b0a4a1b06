"""KV accounting in fixed-size blocks, charged to the memory ledger, and the prompt-prefix cache.

A request is admitted when the blocks for its prompt plus ``max_new_tokens`` fit both this
model's KV pool and the device's ledger; it holds them until it finishes or is cancelled. The
prefix cache keeps the KV of full prompt blocks keyed by a hash chain of their tokens (a block's
key covers every token before it), so a prompt that starts like an earlier one skips that part
of the prefill; its blocks are charged to the ledger too and evicted least recently used.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aivmm.memory import Ledger


class BlockPool:
    """Blocks of ``block_size`` tokens, at most ``capacity_tokens`` in use, each charged to the ledger."""

    def __init__(
        self, ledger: Ledger | None, device: str, key: str, bytes_per_token: int, capacity_tokens: int, block_size: int
    ) -> None:
        self.ledger, self.device, self.key = ledger, device, key
        self.bytes_per_token = bytes_per_token
        self.block_size = block_size
        self.capacity_tokens = capacity_tokens - capacity_tokens % block_size
        self.used_tokens = 0
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def tokens_for(self, n: int) -> int:
        return -(-n // self.block_size) * self.block_size

    def try_take(self, rid: int, tokens: int) -> bool:
        tokens = self.tokens_for(tokens)
        with self._lock:
            if self.used_tokens + tokens > self.capacity_tokens:
                return False
            if self.ledger is not None and not self.ledger.try_reserve(
                f"{self.key}/{rid}", self.device, tokens * self.bytes_per_token
            ):
                return False
            self.used_tokens += tokens
            self._held[rid] = tokens
            return True

    def give_back(self, rid: int) -> None:
        with self._lock:
            tokens = self._held.pop(rid, 0)
            if not tokens:
                return
            self.used_tokens -= tokens
            if self.ledger is not None:
                self.ledger.release(f"{self.key}/{rid}")

    def close(self) -> None:
        for rid in list(self._held):
            self.give_back(rid)


class PrefixCache:
    """KV of full prompt blocks ([2*layers, kv_heads, block, head_dim] each), LRU, ledger-charged."""

    def __init__(
        self,
        ledger: Ledger | None,
        device: str,
        key: str,
        block_bytes: int,
        capacity_blocks: int,
        block_size: int,
        stack: Callable[[list[Any]], Any] = np.stack,
    ) -> None:
        self.ledger, self.device, self.key = ledger, device, key
        self._stack = stack  # numpy blocks, or device tensors for a device-resident runner
        self.block_bytes = block_bytes
        self.capacity = capacity_blocks
        self.block_size = block_size
        self._blocks: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self.hit_tokens_total = 0

    @staticmethod
    def _chain(prompt: Sequence[int], n_blocks: int, bs: int) -> list[int]:
        keys, h = [], 0
        for i in range(n_blocks):
            h = hash((h, tuple(prompt[i * bs : (i + 1) * bs])))
            keys.append(h)
        return keys

    def lookup(self, prompt: Sequence[int]) -> list[Any]:
        """The cached blocks that start ``prompt`` (leaving at least one token to run)."""
        if not self.capacity:
            return []
        found = []
        for k in self._chain(prompt, (len(prompt) - 1) // self.block_size, self.block_size):
            blk = self._blocks.get(k)
            if blk is None:
                break
            self._blocks.move_to_end(k)
            found.append(blk)
        self.hit_tokens_total += len(found) * self.block_size
        return found

    def insert(self, prompt: Sequence[int], present: Sequence[Any]) -> None:
        """Store the full blocks of ``prompt`` from its present KV views ([1, kv, >=len, hd] each)."""
        if not self.capacity:
            return
        bs = self.block_size
        for i, k in enumerate(self._chain(prompt, len(prompt) // bs, bs)):
            if k in self._blocks:
                self._blocks.move_to_end(k)
                continue
            while len(self._blocks) >= self.capacity:
                self._evict()
            if self.ledger is not None and not self.ledger.try_reserve(
                f"{self.key}/{k}", self.device, self.block_bytes
            ):
                return  # the device is full: cache nothing rather than push out running work
            self._blocks[k] = self._stack([p[0, :, i * bs : (i + 1) * bs] for p in present])

    def _evict(self) -> None:
        k, _ = self._blocks.popitem(last=False)
        if self.ledger is not None:
            self.ledger.release(f"{self.key}/{k}")

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    def close(self) -> None:
        while self._blocks:
            self._evict()
