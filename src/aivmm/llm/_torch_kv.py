"""The decode batch's KV on the model's device, for the PyTorch runner (imported by it only).

One preallocated buffer per layer and key/value, [max_batch, kv_heads, row_tokens, head_dim] in the
model's dtype, zeroed once. Row i keeps its tokens in slots [0, len_i); a decode step reads the
window [rows, kv_heads, M, head_dim] (M a bucket of BUCKET tokens) and writes each row's new key and
value in place at slot len_i (``scatter_``, inside the model's attention through ``SlotCache``). The
step's inputs (ids, positions = len_i, an additive mask that opens slots [0, len_i]) and its logits
are device tensors of fixed storage too, so a step allocates nothing outside the model, the next
ids are chosen on the device, and a CUDA graph captured for (rows bucket, M) replays on the same
memory. Nothing is copied when M grows or shrinks (it is a narrower or wider view); a joining row
is copied into its row, a leaving one by the later rows moving up.

Hand-written because transformers' StaticCache writes every row at the same ``cache_position``:
rows of a continuous batch hold different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import transformers

from aivmm.errors import OutOfMemoryError
from aivmm.llm._kvstore import BUCKET
from aivmm.llm._types import KVLayout


class DeviceBatchKV:
    """The running decode batch: rows, their lengths (host mirror) and the device-side state."""

    def __init__(self, layout: KVLayout, max_batch: int, row_tokens: int, device: Any, dtype: Any) -> None:
        self.layout = layout
        self.max_batch = max_batch
        self.row_tokens = row_tokens  # W: tokens one row can hold
        shape = (max_batch, layout.kv_heads, row_tokens, layout.head_dim)
        # zeroed once: a masked slot still enters attention's weighted sum with weight 0, and 0 * NaN
        # of uninitialised memory would be NaN; afterwards only model outputs are written here
        self.kv = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * layout.layers)]
        self.ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.neg = torch.finfo(dtype).min
        self.mask = torch.full((max_batch, 1, 1, row_tokens), self.neg, dtype=dtype, device=device)
        self.mask[:, :, :, 0] = 0  # rows beyond the batch (a graph's padding) attend to something finite
        self.logits = torch.zeros(max_batch, layout.vocab_size, dtype=torch.float32, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
        self.rows = 0
        self.length = min(BUCKET, row_tokens)  # M
        self.lens = np.zeros(max_batch, dtype=np.int64)  # host mirror of pos[:rows]
        self._maxlen = 0
        self.graphs: dict[tuple[int, int], Any] = {}  # (rows bucket, M) -> captured step
        self.nbytes = sum(t.numel() * t.element_size() for t in self.kv)

    def _bucket(self, n: int) -> int:
        return min(-(-n // BUCKET) * BUCKET, self.row_tokens)

    def add(self, present: Sequence[Any], length: int, token: int) -> int:
        """Append a row whose KV (per layer/kv, [1, kv_heads, >=length, head_dim]) holds ``length``
        tokens and whose next input is ``token``; returns the row index."""
        b = self.rows
        if b >= self.max_batch:
            raise OutOfMemoryError(f"the decode batch holds {self.max_batch} rows")
        if length + 1 > self.row_tokens:
            raise OutOfMemoryError(f"a row of the decode batch holds {self.row_tokens} tokens, not {length + 1}")
        # one copy per layer and key/value; slots from length on keep what a former row (or a graph's
        # padding row) wrote there: finite values, masked until this row writes them
        for buf, src in zip(self.kv, present, strict=True):
            buf[b, :, :length] = src[0, :, :length]
        self.ids[b] = token
        self.pos[b] = length
        self.mask[b, 0, 0, : length + 1] = 0
        self.mask[b, 0, 0, length + 1 :] = self.neg
        self.lens[b] = length
        self.rows = b + 1
        self._maxlen = max(self._maxlen if b else 0, length)
        self.length = max(self.length if b else 0, self._bucket(length + 1))
        return b

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in this order); the window shrinks well below the longest kept row."""
        n = len(rows)
        if n and list(rows) != list(range(n)):
            idx = torch.tensor(list(rows), dtype=torch.long, device=self.ids.device)
            for t in (*self.kv, self.ids, self.pos, self.mask):
                t[:n] = t[idx]
            self.lens[:n] = self.lens[list(rows)]
        self.rows = n
        if n == 0:
            self._maxlen = 0
            self.length = min(BUCKET, self.row_tokens)
            return
        self._maxlen = int(self.lens[:n].max())
        want = self._bucket(self._maxlen + 1)
        if want + 2 * BUCKET <= self.length:  # hysteresis: fewer distinct windows, fewer graphs
            self.length = want

    def advanced(self) -> None:
        """The step wrote one token per row and moved the device-side state; follow on the host."""
        b = self.rows
        self.lens[:b] += 1
        self._maxlen += 1
        if self._maxlen + 1 > self.length:  # the next token would not have a slot in the window
            self.length = self._bucket(self._maxlen + 1)

    def set_id(self, row: int, token: int) -> None:
        """A sampled row's next input (the step wrote the greedy choice)."""
        self.ids[row] = token


class SlotCache(transformers.Cache):
    """What the model's attention layers see as the cache in a decode step: ``update`` writes each
    row's new key/value at its own slot of the window and returns the window."""

    def __init__(self, store: DeviceBatchKV, rows: int, m: int) -> None:
        super().__init__(layers=[])
        lay = store.layout
        self._win = [buf[:rows, :, :m] for buf in store.kv]
        # a real row's slot is inside the window; a rows bucket's padding row may hold a departed
        # longer row's position: it writes its own row's last window slot instead of out of bounds
        slot = store.pos[:rows].clamp(max=m - 1)
        self._idx = slot.view(rows, 1, 1, 1).expand(rows, lay.kv_heads, 1, lay.head_dim)
        self._m = m

    def update(
        self, key_states: Any, value_states: Any, layer_idx: int, cache_kwargs: dict[str, Any] | None = None
    ) -> tuple[Any, Any]:
        k, v = self._win[2 * layer_idx], self._win[2 * layer_idx + 1]
        k.scatter_(2, self._idx, key_states)
        v.scatter_(2, self._idx, value_states)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._m

    def get_mask_sizes(self, cache_position: Any, layer_idx: int) -> tuple[int, int]:
        return self._m, 0
