"""The scheduler for a device-resident runner (PyTorch): the same continuous batching, admission,
ledger accounting and prefix reuse as ``Scheduler``, with the KV, the step inputs and the logits on
the model's device.

What differs is only where the data lives: a prefill returns its present KV as device tensors
(handed to the batch and the prefix cache without a host copy), a decode step leaves the greedy
ids on the device, and one list of ids crosses to the host per step; a sampled row copies its own
logits row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aivmm.llm._scheduler import Request, Scheduler


class DeviceScheduler(Scheduler):
    def __init__(self, *, row_tokens: int, **kw: Any) -> None:
        self._row_tokens = row_tokens
        super().__init__(**kw)

    def _make_stores(self, max_batch: int, context: int) -> None:
        self.row_tokens = min(context, self._row_tokens)
        self.batch = self.runner.new_batch(max_batch, self.row_tokens)

    def _pick(self, req: Request, logits: Any) -> tuple[int, float | None, Any]:
        if req.sampler.plain:
            return self.runner.greedy(logits), None, None
        return req.sampler.pick(self.runner.host_row(logits))

    def _join(self, req: Request, present: Sequence[Any], logits: Any) -> None:
        """The prompt's KV is in ``present`` ([1, kv, len, hd] each), its last logits in ``logits``."""
        self.prefix.insert(req.prompt, present)
        tok, lp, tops = self._pick(req, logits)
        if not self._accept(req, tok, lp, tops):
            self.batch.add(present, len(req.prompt), tok)
            self.rows.append(req)
            self._membership_changed()

    def _past(self, blocks: list[Any]) -> tuple[list[Any] | None, int]:
        if not blocks:
            return None, 0
        return self.runner.join_blocks(blocks), len(blocks) * self.prefix.block_size

    def _prefill(self, req: Request, blocks: list[Any]) -> None:
        past, k = self._past(blocks)
        present, logits = self.runner.prefill([req.prompt[k:]], past, k)
        self._join(req, present, logits[0])

    def _prefill_batch(self, reqs: list[Request]) -> None:
        present, logits = self.runner.prefill([r.prompt for r in reqs], None, 0)
        p = max(len(r.prompt) for r in reqs)
        for i, r in enumerate(reqs):
            off = p - len(r.prompt)
            self._join(r, [x[i : i + 1, :, off:] for x in present], logits[i])

    def _start_chunks(self, req: Request, blocks: list[Any]) -> None:
        past, k = self._past(blocks)
        self._chunk = _DeviceChunk(req, past, k)  # type: ignore[assignment]

    def _run_chunk(self, c: Any, k: int, n: int) -> None:
        c.past, c.logits = self.runner.prefill([c.req.prompt[k : k + n]], c.past, k)

    def _chunk_prefilled(self, c: Any, n: int) -> None:
        self._join(c.req, c.past, c.logits[0])

    def _decode(self) -> None:
        batch, runner = self.batch, self.runner
        runner.decode(batch)
        toks = runner.host_ids(batch)  # the step's one device -> host copy (and its synchronisation)
        batch.advanced()
        rows = self.rows
        if self._all_fast:
            done = self._take_plain(rows, toks)
        else:
            done = []
            for i, r in enumerate(rows):
                if r.sampler.plain:
                    tok, lp, tops = toks[i], None, None
                else:
                    tok, lp, tops = r.sampler.pick(runner.row_logits(batch, i))
                    if tok != toks[i]:
                        batch.set_id(i, tok)
                if self._accept(r, tok, lp, tops):
                    done.append(i)
        if done:
            self._drop(done)


class _DeviceChunk:
    """A prompt prefilled in chunks: how many of its tokens are done and their KV (device tensors)."""

    __slots__ = ("done", "logits", "past", "req")

    def __init__(self, req: Request, past: list[Any] | None, done: int) -> None:
        self.req = req
        self.past = past
        self.done = done
        self.logits: Any = None
