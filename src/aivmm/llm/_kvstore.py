"""aivmm's own KV cache: preallocated buffers the step runner reads and writes in place.

The decode batch keeps one buffer per layer and key/value on each of two sides; a step reads the
past from one side ([batch, kv_heads, L, head_dim], contiguous) and the runner writes the present
([batch, kv_heads, L+1, head_dim]) into the other, so no step allocates or copies the cache in
Python. Rows of different lengths are right-aligned (left padding masked out by the attention
mask, positions kept per row); the batch is re-packed only when a request joins with a longer
prompt than the batch's length or when requests leave. Pages are touched only as the cache grows
(``np.empty`` reserves address space, not memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aivmm.llm._types import KVLayout


class _Sides:
    """Two sets of flat KV buffers (one per layer and key/value) of ``rows`` x ``ctx`` tokens."""

    def __init__(self, layout: KVLayout, rows: int, ctx: int, register: object = None) -> None:
        self.layout = layout
        n = rows * layout.kv_heads * ctx * layout.head_dim
        dt = np.dtype(layout.dtype)
        self.bufs = [[np.empty(n, dtype=dt) for _ in range(2 * layout.layers)] for _ in range(2)]
        self.ptrs = [[b.ctypes.data for b in side] for side in self.bufs]
        if callable(register):
            for side in self.bufs:
                for b in side:
                    register(b)
        self.cur = 0

    def view(self, side: int, j: int, rows: int, length: int) -> np.ndarray:
        lay = self.layout
        return self.bufs[side][j][: rows * lay.kv_heads * length * lay.head_dim].reshape(
            rows, lay.kv_heads, length, lay.head_dim
        )


class BatchKV:
    """The running decode batch: rows (requests), their lengths, the KV and the step inputs."""

    def __init__(self, layout: KVLayout, max_batch: int, ctx: int, register: object = None) -> None:
        self.layout = layout
        self.max_batch = max_batch
        self.ctx = ctx
        self.kv = _Sides(layout, max_batch, ctx, register)
        self.rows = 0
        self.length = 0  # L: columns of the past, the longest row's length
        self.lens = np.zeros(max_batch, dtype=np.int64)  # tokens in the cache per row = next position
        self.pads = np.zeros(max_batch, dtype=np.int64)
        self.padded = False
        self.ids = np.zeros(max_batch, dtype=np.int64)
        self._cols = np.arange(ctx + 1, dtype=np.int64)
        self._mask2d = np.ones((max_batch, ctx + 1), dtype=np.int64)
        self._maskbuf = np.ones(max_batch * (ctx + 1), dtype=np.int64)

    @property
    def past_ptrs(self) -> list[int]:
        return self.kv.ptrs[self.kv.cur]

    @property
    def present_ptrs(self) -> list[int]:
        return self.kv.ptrs[self.kv.cur ^ 1]

    def step_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids [B,1], positions [B,1] and attention mask [B, L+1] for the next decode step."""
        b, n = self.rows, self.length + 1
        mask = self._maskbuf[: b * n].reshape(b, n)
        if self.padded:
            np.copyto(mask, self._mask2d[:b, :n])
        return self.ids[:b].reshape(b, 1), self.lens[:b].reshape(b, 1), mask

    def advance(self) -> None:
        """The runner wrote the present into the other side: it is now the past."""
        self.kv.cur ^= 1
        self.length += 1
        self.lens[: self.rows] += 1

    def _refresh_mask(self) -> None:
        b = self.rows
        self.pads[:b] = self.length - self.lens[:b]
        self.padded = bool(self.pads[:b].any())
        if self.padded:
            self._mask2d[:b] = self._cols[None, :] >= self.pads[:b, None]
        else:
            self._maskbuf[:] = 1  # only on membership changes; small (max_batch x context int64)

    def add(self, present: Sequence[np.ndarray], length: int, token: int) -> int:
        """Append a row whose KV (per layer/kv, [1, kv_heads, >=length, head_dim] views) holds
        ``length`` tokens and whose next input is ``token``; returns the row index."""
        kv, b, big = self.kv, self.rows, self.length
        if b == 0:
            for j, src in enumerate(present):
                kv.view(kv.cur, j, 1, length)[0] = src[0, :, :length]
            self.length = length
        elif length <= big:
            for j, src in enumerate(present):
                dst = kv.view(kv.cur, j, b + 1, big)[b]
                dst[:, big - length :] = src[0, :, :length]
                dst[:, : big - length] = 0
        else:  # a longer row: re-pack the batch to its length on the other side
            other, shift = kv.cur ^ 1, length - big
            for j, src in enumerate(present):
                new = kv.view(other, j, b + 1, length)
                new[:b, :, shift:] = kv.view(kv.cur, j, b, big)
                new[:b, :, :shift] = 0
                new[b] = src[0, :, :length]
            kv.cur = other
            self.length = length
        self.lens[b] = length
        self.ids[b] = token
        self.rows = b + 1
        self._refresh_mask()
        return b

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in this order); the batch shrinks to the longest kept row."""
        kv, b, big = self.kv, self.rows, self.length
        n = len(rows)
        if n == 0:
            self.rows = self.length = 0
            self.padded = False
            return
        lens = self.lens[list(rows)].copy()
        ids = self.ids[list(rows)].copy()
        new_len = int(lens.max())
        if list(rows) != list(range(n)) or new_len != big:
            other, cut = kv.cur ^ 1, big - new_len
            for j in range(len(kv.bufs[0])):
                old = kv.view(kv.cur, j, b, big)
                new = kv.view(other, j, n, new_len)
                for dst, src in enumerate(rows):
                    new[dst] = old[src, :, cut:]
            kv.cur = other
        self.lens[:n] = lens
        self.ids[:n] = ids
        self.rows = n
        self.length = new_len
        self._refresh_mask()


class PrefillKV:
    """The one-row buffers a new request's prompt is run into (past = a reused prefix)."""

    def __init__(self, layout: KVLayout, ctx: int, register: object = None) -> None:
        self.kv = _Sides(layout, 1, ctx, register)

    def load_prefix(self, blocks: Sequence[np.ndarray]) -> int:
        """Copy cached prefix blocks (each [2*layers, kv_heads, block, head_dim]) into the past side."""
        if not blocks:
            return 0
        bs = blocks[0].shape[2]
        n = bs * len(blocks)
        for j in range(len(self.kv.bufs[0])):
            dst = self.kv.view(0, j, 1, n)[0]
            for i, blk in enumerate(blocks):
                dst[:, i * bs : (i + 1) * bs] = blk[j]
        return n

    def present(self, length: int) -> list[np.ndarray]:
        return [self.kv.view(1, j, 1, length) for j in range(len(self.kv.bufs[1]))]


BUCKET = 32  # the static past length grows and shrinks in steps of this many tokens


class StaticBatchKV:
    """The decode batch with a past of fixed length M (a bucket) between re-layouts.

    Row i keeps its tokens in slots [0, len_i) of a [batch, kv_heads, M, head_dim] past; the rest
    is zero and masked. The graph appends the step's token at slot M of its present; that one slot
    is copied into slot len_i of the past. Inputs, outputs and their shapes stay the same from step
    to step, so the runtime is handed the same bindings (nothing to bind again, and shape-keyed
    plans are reused); a joining row is copied into its slot, a leaving one by the last rows moving
    up, and M changes only when the longest row crosses a bucket.
    """

    def __init__(self, layout: KVLayout, max_batch: int, ctx: int, register: object = None) -> None:
        self.layout = layout
        self.max_batch = max_batch
        self.ctx = ctx
        self.kv = _Sides(layout, max_batch, ctx + 1, register)  # side 0: past, side 1: present
        self.past_ptrs = tuple(self.kv.ptrs[0])
        self.present_ptrs = tuple(self.kv.ptrs[1])
        self.rows = 0
        self.length = BUCKET  # M
        self.lens = np.zeros(max_batch, dtype=np.int64)
        self.ids = np.zeros(max_batch, dtype=np.int64)
        self._maskbuf = np.zeros(max_batch * (ctx + 2), dtype=np.int64)
        self._rows_idx = np.arange(max_batch)
        self._cols = np.arange(ctx + 2, dtype=np.int64)
        self._maxlen = 0
        self._refresh()

    def _refresh(self) -> None:
        """Views for the current (rows, M): the step reuses the same objects until they change."""
        b, m = self.rows, self.length
        self._inputs = (self.ids[:b].reshape(b, 1), self.lens[:b].reshape(b, 1), self._mask())
        self._past_views = self._views(0, m)
        self._present_views = self._views(1, m + 1)
        self._maxlen = int(self.lens[:b].max()) if b else 0

    def _mask(self) -> np.ndarray:
        b, m = self.rows, self.length
        return self._maskbuf[: b * (m + 1)].reshape(b, m + 1)

    def step_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._inputs

    def _views(self, side: int, length: int) -> list[np.ndarray]:
        return [self.kv.view(side, j, self.rows, length) for j in range(len(self.kv.bufs[0]))]

    def advance(self) -> None:
        """Move the step's token from present slot M into each row's next past slot."""
        b, m = self.rows, self.length
        _, pos, mask = self._inputs
        if b == 1:
            n = self._maxlen
            for dst, src in zip(self._past_views, self._present_views, strict=True):
                dst[0, :, n] = src[0, :, m]
            mask[0, n] = 1
            pos[0, 0] = n + 1
        else:
            lens = self.lens[:b]
            idx = self._rows_idx[:b]
            for dst, src in zip(self._past_views, self._present_views, strict=True):
                dst[idx, :, lens] = src[:, :, m]
            mask[idx, lens] = 1
            lens += 1
        self._maxlen += 1
        if self._maxlen >= m:  # the next token would not have a slot
            self._relayout(m + BUCKET)

    def _relayout(self, new_m: int) -> None:
        b, m = self.rows, self.length
        new_m = min(new_m, self.ctx)
        if b and new_m != m:
            for j in range(len(self.kv.bufs[0])):
                old = self.kv.view(0, j, b, m).copy()  # the row stride changes: copy out first
                new = self.kv.view(0, j, b, new_m)
                keep = min(m, new_m)
                new[:, :, :keep] = old[:, :, :keep]
                new[:, :, keep:] = 0
        self.length = new_m
        self._rebuild_mask()
        self._refresh()

    def _rebuild_mask(self) -> None:
        b, m = self.rows, self.length
        if b:
            mask = self._mask()
            cols = self._cols[: m + 1]
            np.less(cols[None, :], self.lens[:b, None], out=mask, casting="unsafe")
            mask[:, m] = 1

    def add(self, present: Sequence[np.ndarray], length: int, token: int) -> int:
        b = self.rows
        need = -(-(length + 1) // BUCKET) * BUCKET
        if b == 0:
            self.length = min(max(need, BUCKET), self.ctx)
        elif need > self.length:
            self._relayout(need)
        m = self.length
        self.rows = b + 1
        for j, src in enumerate(present):
            row = self.kv.view(0, j, b + 1, m)[b]
            row[:, :length] = src[0, :, :length]
            row[:, length:] = 0
        self.lens[b] = length
        self.ids[b] = token
        mask = self._mask()
        mask[b, :length] = 1
        mask[b, length:] = 0
        mask[b, m] = 1
        self._refresh()
        return b

    def keep(self, rows: Sequence[int]) -> None:
        n, m = len(rows), self.length
        if n == 0:
            self.rows = 0
            self.length = BUCKET
            self._refresh()
            return
        if list(rows) != list(range(n)):
            for j in range(len(self.kv.bufs[0])):
                past = self.kv.view(0, j, self.rows, m)  # rows sit at the same offsets whatever the batch
                for dst, src in enumerate(rows):
                    if dst != src:
                        past[dst] = past[src]
            self.lens[:n] = self.lens[list(rows)]
            self.ids[:n] = self.ids[list(rows)]
        self.rows = n
        want = -(-(int(self.lens[:n].max()) + 1) // BUCKET) * BUCKET
        if want + 2 * BUCKET <= m:  # shrink only well below the bucket: re-layouts copy the batch
            self._relayout(want)
        else:
            self._rebuild_mask()
            self._refresh()
