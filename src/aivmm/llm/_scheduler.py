"""Continuous batching: one scheduler thread per model runs prefills and shared decode steps.

Requests arrive from any thread or event loop; between two decode steps the scheduler admits
waiting requests whose KV blocks fit (prefill at batch 1, then the row joins the decode batch)
and drops the rows that finished or were cancelled. Every row keeps its own sampler, stop rules
and text state. The hot loop does per step: one runner call on preallocated buffers, one argmax
over the batch for greedy rows, and a short per-row bookkeeping loop; events are built only for
streaming requests and text is decoded per token only when streaming or stop strings need it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from aivmm.errors import AivmmError, ExecutionError, ModelClosedError, OutOfMemoryError, OverloadedError
from aivmm.llm._blocks import BlockPool, PrefixCache
from aivmm.llm._kvstore import BatchKV, PrefillKV, StaticBatchKV, _Sides
from aivmm.llm._sampling import Sampler
from aivmm.llm._types import FinishReason, Generation, KVLayout, LLMStats, TokenEvent

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class Request:
    """One generation in flight: its prompt, rules, the tokens so far and where results go."""

    __slots__ = (
        "admitted",
        "cancelled",
        "decoder",
        "done",
        "emitted",
        "fast",
        "lps",
        "max_new",
        "max_stop",
        "need_text",
        "on_done",
        "on_event",
        "prompt",
        "rid",
        "sampler",
        "stop_ids",
        "stops",
        "t0",
        "t_first",
        "text",
        "tokens",
        "top_lps",
    )

    def __init__(
        self,
        prompt: list[int],
        sampler: Sampler,
        max_new: int,
        stop_ids: frozenset[int],
        stops: tuple[str, ...],
        on_event: Callable[[Any], None] | None,
        on_done: Callable[[Any], None],
        decoder: Any,
    ) -> None:
        self.rid = next(_ids)
        self.admitted = False  # holds KV blocks and is prefilling or decoding: counted as running
        self.prompt = prompt
        self.sampler = sampler
        self.max_new = max_new
        self.stop_ids = stop_ids
        self.stops = stops
        self.max_stop = max((len(s) for s in stops), default=0)
        self.on_event = on_event  # streaming: called with each TokenEvent (and an exception on failure)
        self.on_done = on_done  # called once with the Generation or the exception
        self.decoder = decoder  # a tokenizers DecodeStream when text is needed per token, else None
        self.need_text = decoder is not None
        self.fast = sampler.plain and decoder is None and on_event is None
        self.tokens: list[int] = []
        self.lps: list[float] | None = [] if sampler.logprobs is not None else None
        self.top_lps: list[tuple[tuple[int, float], ...]] | None = [] if sampler.logprobs else None
        self.text = ""
        self.emitted = 0
        self.t0 = time.perf_counter()
        self.t_first = 0.0
        self.cancelled = False
        self.done = False


class Scheduler:
    def __init__(
        self,
        *,
        name: str,
        runner: Any,
        layout: KVLayout,
        max_batch: int,
        context: int,
        pool: BlockPool,
        prefix: PrefixCache,
        max_waiting: int,
        tokenizer: Any,
        decode_text: Callable[[list[int]], str] | None,
        prefill_chunk: int | None = None,
    ) -> None:
        self.name = name
        # a prompt longer than this prefills in chunks of it, one per decode step of the running rows
        self.prefill_chunk = prefill_chunk
        self.runner = runner
        self.layout = layout
        self.vocab = layout.vocab_size
        self.context = context
        self.pool = pool
        self.prefix = prefix
        self.max_waiting = max_waiting
        self._tokenizer = tokenizer
        self._decode_text = decode_text
        self.row_tokens = context  # the most tokens one request's row can hold
        self._make_stores(max_batch, context)
        self._ones = np.ones(context + 1, dtype=np.int64)
        self._arange = np.arange(context + 1, dtype=np.int64)
        self.rows: list[Request] = []
        self._group: _GroupPrefill | None = None
        self._chunk: _ChunkedPrefill | None = None  # the one prompt being prefilled in chunks
        self._chunk_kv: PrefillKV | None = None  # its buffers, kept for the next long prompt
        self.prefill_chunks_total = 0
        self._all_fast = True
        self.waiting: collections.deque[Request] = collections.deque()
        self._incoming: list[Request] = []
        self._cv = threading.Condition()
        self._stopping = False
        self.tokens_total = 0
        # counted at admission, not from self.rows: a request's first token reaches its client during
        # prefill, before its row joins the decode batch
        self._running = 0
        self.requests_total = 0
        self._thread = threading.Thread(target=self._loop, name=f"aivmm-llm-{name}", daemon=True)
        self._thread.start()

    def _make_stores(self, max_batch: int, context: int) -> None:
        """The decode batch, the prefill buffers and the logits the runner writes (host memory)."""
        layout, runner = self.layout, self.runner
        register = getattr(runner, "register", None)
        # a static past (same bindings every step) needs the mask to hide unused slots
        static = layout.attention_mask is not None
        self.batch: Any = (StaticBatchKV if static else BatchKV)(layout, max_batch, context, register)
        self.pre = PrefillKV(layout, context, register)
        ldt = runner.logits_dtype
        self._logits = np.empty(max_batch * self.vocab, dtype=ldt)
        self._prefill_logits = np.empty(context * self.vocab, dtype=ldt)

    # -- called from user threads --------------------------------------------------------------
    @property
    def load(self) -> int:
        """Requests admitted or waiting (read without the lock: a hint for choosing a scheduler)."""
        return self._running + len(self.waiting) + len(self._incoming)

    def submit(self, req: Request) -> None:
        with self._cv:
            if self._stopping:
                raise ModelClosedError(f"model {self.name!r} was closed")
            if len(self.waiting) + len(self._incoming) >= self.max_waiting:
                raise OverloadedError(
                    f"model {self.name!r}: {self.max_waiting} requests already wait for a decode slot; retry later"
                )
            self._incoming.append(req)
            self.requests_total += 1
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Stop ``req`` now: its KV blocks go back at once, its row leaves at the next step."""
        if req.done:
            return
        req.cancelled = True
        self.pool.give_back(req.rid)
        with self._cv:
            self._cv.notify()

    def stats(self) -> LLMStats:
        with self._cv:
            waiting = len(self.waiting) + len(self._incoming)
        used = self.pool.used_tokens
        return LLMStats(
            running=self._running,
            waiting=waiting,
            kv_tokens_used=used,
            kv_tokens_capacity=self.pool.capacity_tokens,
            kv_bytes_used=used * self.pool.bytes_per_token,
            tokens_generated_total=self.tokens_total,
            requests_total=self.requests_total,
            prefix_hit_tokens_total=self.prefix.hit_tokens_total,
        )

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout_s)
        self.pool.close()
        self.prefix.close()

    # -- the scheduler thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (
                    self._stopping or self._incoming or self.rows or self._chunk is not None or self._admissible()
                ):
                    self._cv.wait(1.0)
                if self._stopping:
                    break
                self.waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                self._iteration()
            except Exception as exc:  # a failed step fails the requests in it, never the scheduler
                log.exception("model %r: generation step failed", self.name)
                err = exc if isinstance(exc, AivmmError) else ExecutionError(f"generation step failed: {exc}")
                for r in self.rows:
                    self._fail(r, err)
                self.rows = []
                self.batch.keep([])
                self._membership_changed()
        closed = ModelClosedError(f"model {self.name!r} was closed")
        with self._cv:
            left = [*self.rows, *self.waiting, *self._incoming, *([self._chunk.req] if self._chunk else [])]
            self._incoming.clear()
        self._chunk = None
        self.waiting.clear()
        self.rows = []
        for r in left:
            self._fail(r, closed)

    def _admissible(self) -> bool:
        return bool(self.waiting)

    def _iteration(self) -> None:
        rows = self.rows
        if any(r.cancelled for r in rows):
            self._drop([i for i, r in enumerate(rows) if r.cancelled])
        self._admit()
        if self._chunk is not None:
            self._prefill_next_chunk()
        if self.rows:
            self._decode()

    def _admit(self) -> None:
        ready: list[Request] = []
        try:
            self._take_ready(ready)
        finally:
            if ready:
                try:
                    self._prefill_group(ready)
                except Exception as exc:  # the loop fails self.rows; fail the admitted ones not yet in it
                    err = exc if isinstance(exc, AivmmError) else ExecutionError(f"prefill failed: {exc}")
                    if self._chunk is not None and self._chunk.req in ready:
                        self._chunk = None
                    for r in ready:
                        if r not in self.rows:
                            self._fail(r, err)
                    raise

    def _take_ready(self, ready: list[Request]) -> None:
        waiting, batch = self.waiting, self.batch
        chunk = self.prefill_chunk
        while waiting and len(self.rows) + len(ready) + (self._chunk is not None) < batch.max_batch:
            req = waiting[0]
            if req.cancelled:
                waiting.popleft()
                self._finish(req, FinishReason.CANCELLED)
                continue
            if (
                chunk is not None
                and len(req.prompt) > chunk
                and (self._chunk is not None or any(len(r.prompt) > chunk for r in ready))
            ):
                return  # one prompt prefills in chunks at a time; the next long one waits its turn
            need = min(len(req.prompt) + req.max_new, self.context)
            if need > self.pool.capacity_tokens or need > self.row_tokens:
                waiting.popleft()
                held = (
                    f"the KV pool holds {self.pool.capacity_tokens}"
                    if need > self.pool.capacity_tokens
                    else f"a row of the decode batch holds {self.row_tokens} (kv_cache_tokens / max_batch_size)"
                )
                self._fail(
                    req,
                    OutOfMemoryError(
                        f"model {self.name!r}: the request needs {need} KV tokens "
                        f"({need * self.pool.bytes_per_token} B) but {held}"
                    ),
                )
                continue
            if not self.pool.try_take(req.rid, need):
                if not self.rows and not ready:  # nothing of ours will free blocks: the device itself is full
                    waiting.popleft()
                    self._fail(
                        req,
                        OutOfMemoryError(
                            f"model {self.name!r}: no room on {self.pool.device} for {need} KV tokens "
                            f"({need * self.pool.bytes_per_token} B) and no request of this model to wait for"
                        ),
                    )
                    continue
                return  # wait for running requests to give blocks back
            waiting.popleft()
            if req.cancelled:
                self.pool.give_back(req.rid)
                self._finish(req, FinishReason.CANCELLED)
                continue
            req.admitted = True
            self._running += 1
            ready.append(req)

    def _prefill_group(self, reqs: list[Request]) -> None:
        """Prompts admitted together run as one padded prefill; a reused prefix runs on its own."""
        plain = []
        chunk = self.prefill_chunk
        for req in reqs:
            blocks = self.prefix.lookup(req.prompt)
            if chunk is not None and len(req.prompt) - len(blocks) * self.prefix.block_size > chunk:
                self._start_chunks(req, blocks)
            elif blocks or len(reqs) == 1:
                self._prefill(req, blocks)
            else:
                plain.append(req)
        if len(plain) == 1:
            self._prefill(plain[0], [])
        elif plain:
            self._prefill_batch(plain)

    def _prefill_batch(self, reqs: list[Request]) -> None:
        k = len(reqs)
        p = max(len(r.prompt) for r in reqs)
        if self._group is None:
            self._group = _GroupPrefill(
                self.layout,
                self.batch.max_batch,
                self.context,
                getattr(self.runner, "register", None),
                self.runner.logits_dtype,
            )
        g = self._group
        ids = np.zeros((k, p), dtype=np.int64)
        pos = np.zeros((k, p), dtype=np.int64)
        mask = np.zeros((k, p), dtype=np.int64)
        for i, r in enumerate(reqs):
            n = len(r.prompt)
            ids[i, p - n :] = r.prompt  # left padding, masked out
            pos[i, p - n :] = self._arange[:n]
            mask[i, p - n :] = 1
        self.runner.run(k, 0, p, ids, pos, mask, g.kv.ptrs[0], g.kv.ptrs[1], g.logits)
        present = [g.kv.view(1, j, k, p) for j in range(len(g.kv.bufs[1]))]
        logits = g.logits[: k * p * self.vocab].reshape(k, p, self.vocab)
        for i, r in enumerate(reqs):
            off = p - len(r.prompt)
            mine = [x[i : i + 1, :, off:] for x in present]
            self.prefix.insert(r.prompt, mine)
            tok, lp, tops = r.sampler.pick(logits[i, p - 1])
            if not self._accept(r, tok, lp, tops):
                self.batch.add(mine, len(r.prompt), tok)
                self.rows.append(r)
        self._membership_changed()

    def _prefill(self, req: Request, blocks: list[np.ndarray]) -> None:
        prompt = req.prompt
        p = len(prompt)
        pre = self.pre
        k = pre.load_prefix(blocks)
        n = p - k
        ids = np.asarray(prompt[k:], dtype=np.int64).reshape(1, n)
        pos = self._arange[k:p].reshape(1, n)
        mask = self._ones[:p].reshape(1, p)
        self.runner.run(1, k, n, ids, pos, mask, pre.kv.ptrs[0], pre.kv.ptrs[1], self._prefill_logits)
        self._prefilled(req, pre.present(p), n)

    def _prefilled(self, req: Request, present: list[np.ndarray], n: int) -> None:
        """The prompt's KV is in ``present`` and its last ``n`` logits rows in the prefill buffer."""
        self.prefix.insert(req.prompt, present)
        row = self._prefill_logits[(n - 1) * self.vocab : n * self.vocab]
        tok, lp, tops = req.sampler.pick(row)
        if not self._accept(req, tok, lp, tops):
            self.batch.add(present, len(req.prompt), tok)
            self.rows.append(req)
            self._membership_changed()

    def _start_chunks(self, req: Request, blocks: list[np.ndarray]) -> None:
        if self._chunk_kv is None:
            self._chunk_kv = PrefillKV(self.layout, self.context, getattr(self.runner, "register", None))
        self._chunk = _ChunkedPrefill(req, self._chunk_kv.kv, self._chunk_kv.load_prefix(blocks))

    def _prefill_next_chunk(self) -> None:
        """Run the next chunk of the prompt being prefilled in chunks."""
        c = self._chunk
        assert c is not None and self.prefill_chunk is not None
        req = c.req
        if req.cancelled:
            self._chunk = None
            self._finish(req, FinishReason.CANCELLED)
            return
        k, p = c.done, len(req.prompt)
        n = min(self.prefill_chunk, p - k)
        try:
            self._run_chunk(c, k, n)
        except Exception as exc:
            self._chunk = None
            self._fail(req, exc if isinstance(exc, AivmmError) else ExecutionError(f"prefill failed: {exc}"))
            raise
        self.prefill_chunks_total += 1
        c.done = k + n
        if c.done < p:
            return
        self._chunk = None
        self._chunk_prefilled(c, n)

    def _run_chunk(self, c: Any, k: int, n: int) -> None:
        """Tokens [k, k + n) of the chunked prompt after its first k (the KV ping-pongs between sides)."""
        ids = np.asarray(c.req.prompt[k : k + n], dtype=np.int64).reshape(1, n)
        pos = self._arange[k : k + n].reshape(1, n)
        mask = self._ones[: k + n].reshape(1, k + n)
        sides = c.sides
        self.runner.run(1, k, n, ids, pos, mask, sides.ptrs[c.side], sides.ptrs[c.side ^ 1], self._prefill_logits)
        c.side ^= 1

    def _chunk_prefilled(self, c: Any, n: int) -> None:
        sides, p = c.sides, len(c.req.prompt)
        self._prefilled(c.req, [sides.view(c.side, j, 1, p) for j in range(len(sides.bufs[0]))], n)

    def _decode(self) -> None:
        batch = self.batch
        b = batch.rows
        ids, pos, mask = batch.step_inputs()
        self.runner.run(b, batch.length, 1, ids, pos, mask, batch.past_ptrs, batch.present_ptrs, self._logits)
        batch.advance()
        logits = self._logits[: b * self.vocab].reshape(b, self.vocab)
        rows = self.rows
        done: list[int] = []
        if self._all_fast:
            # every row is greedy, untexted, unstreamed (generate() without stops): one argmax, one
            # vector store of the next inputs, and a minimal per-row check
            toks = logits.argmax(axis=1)
            batch.ids[:b] = toks
            done = self._take_plain(rows, toks.tolist())
        else:
            greedy = logits.argmax(axis=1) if any(r.sampler.plain for r in rows) else None
            next_ids = batch.ids
            for i, r in enumerate(rows):
                if r.sampler.plain:
                    tok, lp, tops = int(greedy[i]), None, None  # type: ignore[index]
                else:
                    tok, lp, tops = r.sampler.pick(logits[i])
                if self._accept(r, tok, lp, tops):
                    done.append(i)
                else:
                    next_ids[i] = tok
        if done:
            self._drop(done)

    def _take_plain(self, rows: list[Request], toks: list[int]) -> list[int]:
        """Every row greedy, untexted, unstreamed: record its token, a minimal check; the finished rows."""
        done = []
        self.tokens_total += len(rows)
        for i, (r, tok) in enumerate(zip(rows, toks, strict=True)):
            tokens = r.tokens
            tokens.append(tok)
            if tok in r.stop_ids or len(tokens) >= r.max_new or r.cancelled:
                done.append(i)
                reason = (
                    FinishReason.CANCELLED
                    if r.cancelled
                    else FinishReason.STOP
                    if tok in r.stop_ids
                    else FinishReason.LENGTH
                )
                self._finish(r, reason)
        return done

    def _membership_changed(self) -> None:
        self._all_fast = all(r.fast for r in self.rows)

    def _drop(self, gone: list[int]) -> None:
        drop = set(gone)
        keep = [i for i in range(len(self.rows)) if i not in drop]
        for i in gone:
            r = self.rows[i]
            if not r.done:
                self._finish(r, FinishReason.CANCELLED)
        self.batch.keep(keep)
        self.rows = [self.rows[i] for i in keep]
        self._membership_changed()

    def _accept(self, r: Request, tok: int, lp: float | None, tops: Any) -> bool:
        """Record one generated token; True when the request is finished."""
        if r.cancelled:
            self._finish(r, FinishReason.CANCELLED)
            return True
        tokens = r.tokens
        tokens.append(tok)
        self.tokens_total += 1
        if not r.t_first:
            r.t_first = time.perf_counter()
        sampler = r.sampler
        if sampler.penalty != 1.0:
            sampler.observe(tok)
        if r.lps is not None:
            r.lps.append(lp)  # type: ignore[arg-type]
            if r.top_lps is not None:
                r.top_lps.append(tops)
        finish = None
        if tok in r.stop_ids:
            finish = FinishReason.STOP
        elif len(tokens) >= r.max_new:
            finish = FinishReason.LENGTH
        if r.need_text:
            delta, stopped = self._text(r, tok, finish is FinishReason.STOP)
            if stopped:
                finish = FinishReason.STOP
            if r.on_event is not None:
                r.on_event(TokenEvent(tok, len(tokens) - 1, delta, lp, tops, finish))
        if finish is not None:
            self._finish(r, finish)
            return True
        return False

    def _text(self, r: Request, tok: int, eos: bool) -> tuple[str, bool]:
        piece = "" if eos else (r.decoder.step(self._tokenizer, tok) or "")
        stopped = False
        if piece:
            r.text += piece
            if r.stops:
                start = max(0, len(r.text) - len(piece) - r.max_stop + 1)
                hits = [i for i in (r.text.find(s, start) for s in r.stops) if i >= 0]
                if hits:
                    r.text = r.text[: min(hits)]
                    stopped = True
        upto = len(r.text)
        if r.stops and not stopped and not eos and len(r.tokens) < r.max_new:
            upto -= _holdback(r.text, r.stops)
        if upto <= r.emitted:
            return "", stopped
        delta = r.text[r.emitted : upto]
        r.emitted = upto
        return delta, stopped

    def _finish(self, r: Request, reason: FinishReason) -> None:
        if r.done:
            return
        r.done = True
        if r.admitted:
            self._running -= 1
        self.pool.give_back(r.rid)
        now = time.perf_counter()
        text = r.text if r.need_text or self._decode_text is None else self._decode_text(r.tokens)
        gen = Generation(
            token_ids=tuple(r.tokens),
            text=text,
            finish_reason=reason,
            prompt_tokens=len(r.prompt),
            completion_tokens=len(r.tokens),
            logprobs=tuple(r.lps) if r.lps is not None else None,
            top_logprobs=tuple(r.top_lps) if r.top_lps is not None else None,
            ttft_s=(r.t_first - r.t0) if r.t_first else now - r.t0,
            total_s=now - r.t0,
        )
        if reason is FinishReason.CANCELLED and r.on_event is not None:
            r.on_event(TokenEvent(-1, len(r.tokens), "", None, None, reason))
        r.on_done(gen)

    def _fail(self, r: Request, err: BaseException) -> None:
        if r.done:
            return
        r.done = True
        if r.admitted:
            self._running -= 1
        self.pool.give_back(r.rid)
        if r.on_event is not None:
            r.on_event(err)
        r.on_done(err)


class _ChunkedPrefill:
    """A prompt prefilled in chunks: how many of its tokens are in the KV and which side holds them."""

    __slots__ = ("done", "req", "side", "sides")

    def __init__(self, req: Request, sides: _Sides, done: int) -> None:
        self.req = req
        self.sides = sides
        self.done = done
        self.side = 0  # load_prefix wrote the reused prefix (if any) into side 0


class _GroupPrefill:
    """Buffers for prompts prefilled together: KV of up to ``rows`` prompts and their logits."""

    def __init__(self, layout: KVLayout, rows: int, ctx: int, register: Any, logits_dtype: Any) -> None:
        self.kv = _Sides(layout, rows, ctx, register)
        self.logits = np.empty(rows * ctx * layout.vocab_size, dtype=logits_dtype)


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string (kept back from the stream)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
