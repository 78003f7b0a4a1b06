"""DeployedLLM: a decoder placed by the generation planner, generating through the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aivmm.errors import ConfigError, ContextLengthError, FallbackError, InputError, OutOfMemoryError
from aivmm.llm._blocks import BlockPool, PrefixCache
from aivmm.llm._device_scheduler import DeviceScheduler
from aivmm.llm._layout import model_file, require
from aivmm.llm._plan import DEFAULT_BACKENDS, GenerationPlan, SplitOptions, plan_generation
from aivmm.llm._sampling import Sampler
from aivmm.llm._scheduler import Request, Scheduler
from aivmm.llm._text import GenerationDefaults, TextCodec
from aivmm.llm._types import Generation, KVLayout, LLMInfo, LLMStats, SamplingParams, TokenEvent
from aivmm.options import DeployOptions
from aivmm.vmm import DeployedModel

if TYPE_CHECKING:
    from aivmm.vmm import VMM

# deploy(batching={...}) options an LLM understands
OPTIONS = {
    "max_batch_size": 16,  # rows of the decode batch
    "max_waiting": 256,  # requests admitted but not yet running; more get OverloadedError
    "kv_cache_tokens": None,  # KV pool size; None: max_batch_size x context (capped by the ledger)
    "block_size": 16,  # tokens per KV block (accounting and prefix reuse)
    "prefix_cache_blocks": 256,  # 0 disables prefix reuse
    "prefill_chunk_tokens": 256,  # a longer prompt prefills in chunks between decode steps; None: whole
    "fixed_shape_sessions": 32,  # decode sessions specialised to a recurring shape (small models); 0: none
    "decode_cores": None,  # cores a decode step may split its rows over; None: the CPUs this process may use
    "split_decode_rows": None,  # steps of >= N rows run as row groups, one per core; None: measured; 0: never
    "cuda_graphs": None,  # PyTorch on CUDA: replay captured decode steps; None: on where the model runs on CUDA
    "decode_schedulers": None,  # scheduler threads sharing the rows, each its own runner; None: measured; 1: one
}
# Fixed-shape sessions pay off where the graph's shape arithmetic is a large part of a step (small
# decoders); each one holds its own pre-packed copy of the weights, so bigger models do without and
# the sessions of one model together hold at most FIXED_SHAPE_BUDGET. 32 covers a 1-, 4- and 16-row
# load over five past buckets (with 8 the first shapes to recur kept the sessions and a 16-row load
# after a 1-row one ran symbolic: 16 streams / 1 fell from 6.96x to 2.32x on the tiny Llama).
FIXED_SHAPE_MAX_WEIGHTS = 64 << 20
FIXED_SHAPE_BUDGET = 512 << 20


class _Handle:
    """What DeployedModel.execute calls: one plain forward pass on the generation runner."""

    def __init__(self, runner: Any, stats: Any) -> None:
        self._runner = runner
        self._stats = stats
        self._lock = threading.Lock()
        self.unloaded = False

    @property
    def state(self) -> Any:
        from aivmm.runtime import ModelState

        return ModelState.UNLOADED if self.unloaded else ModelState.READY

    def infer(self, feeds: dict[str, Any], **_: Any) -> dict[str, Any]:
        with self._lock:
            return self._runner.execute(feeds)

    async def infer_async(self, feeds: dict[str, Any], **_: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.infer, feeds)

    def stats(self) -> dict[str, Any]:
        return dataclasses.asdict(self._stats())


class DeployedLLM(DeployedModel):
    """A decoder with a KV cache: ``generate`` / ``stream`` (and async versions) share decode steps."""

    def __init__(
        self,
        vmm: VMM,
        name: str,
        spec: Any,
        plan: Any,
        generation_plan: GenerationPlan,
        runner: Any,
        layout: KVLayout,
        folder: pathlib.Path,
        options: Mapping[str, Any],
        device: str,
    ) -> None:
        self.codec = TextCodec(folder) if (folder / "tokenizer.json").is_file() else None
        self.defaults = GenerationDefaults.load(folder)
        self.layout = layout
        self.generation_plan = generation_plan
        self._device = device
        self._runner = runner
        ledger = vmm.engine.ledger
        ctx = layout.context_length
        bpt = layout.bytes_per_token
        max_batch = int(options["max_batch_size"])
        if layout.attention_mask is None:  # rows of different lengths could not be masked: no sharing
            max_batch = 1
        bs = int(options["block_size"])
        cap = options["kv_cache_tokens"]
        cap = max_batch * ctx if cap is None else int(cap)
        cap = min(cap, max(0, ledger.free(device) // 2) // bpt)  # leave room for weights and others
        self._weights_key = f"llm:{name}/weights"
        self._ledger = ledger
        src = pathlib.Path(spec.source)
        weights = spec.size_bytes if src.is_dir() else _file_bytes(src)
        ledger.reserve(self._weights_key, device, weights)
        resident = bool(getattr(runner, "device_resident", False))
        self._store_key = f"llm:{name}/kv/store"
        split = generation_plan.split
        # a device-resident runner keeps one scheduler (its batch lives on the device)
        n_sched = 1 if resident else max(1, min(split.schedulers if split is not None else 1, max_batch))
        self._runners = [runner]
        self._extra_weights: list[str] = []
        try:
            for k in range(1, n_sched):  # one runner (its own sessions, a copy of the weights) per scheduler
                key = f"llm:{name}/r{k}/weights"
                ledger.reserve(key, device, weights)
                self._extra_weights.append(key)
                self._runners.append(runner.clone())
        except BaseException:
            self._release_runners()
            ledger.release(self._weights_key)
            raise
        fixed_n = int(options["fixed_shape_sessions"])
        for k, r in enumerate(self._runners):
            note = self._specialise(r, fixed_n, weights, f"llm:{name}/shape" if k == 0 else f"llm:{name}/r{k}/shape")
            if note is not None and k == 0:  # the decision and its reason are part of the plan
                self.generation_plan = generation_plan = dataclasses.replace(
                    generation_plan, reasons=(*generation_plan.reasons, note)
                )
                plan = dataclasses.replace(plan, notes=(*plan.notes, note))
        row_tokens = ctx
        if resident:
            # The device batch is allocated (and zeroed) whole, so its bytes are reserved whole:
            # max_batch rows of kv_cache_tokens / max_batch tokens each (at most the context).
            row_tokens = max(1, min(ctx, cap // max_batch))
            store_bytes = max_batch * row_tokens * bpt
            if not ledger.try_reserve(self._store_key, device, store_bytes):
                ledger.release(self._weights_key)
                raise OutOfMemoryError(
                    f"model {name!r}: the decode batch's KV ({max_batch} rows x {row_tokens} tokens x {bpt} B = "
                    f"{store_bytes} B) does not fit on {device} ({ledger.free(device)} B free); "
                    "lower max_batch_size or kv_cache_tokens"
                )
            cap = max_batch * row_tokens
        stack = runner.stack_blocks if resident else np.stack
        sched_cls: Any = Scheduler
        extra: dict[str, Any] = {}
        if resident:
            sched_cls, extra = DeviceScheduler, {"row_tokens": row_tokens}
        tok = self.codec.tokenizer if self.codec is not None else None
        rows = _shares(max_batch, n_sched)
        prefix_blocks = _shares(int(options["prefix_cache_blocks"]), n_sched)
        self._schedulers = [
            sched_cls(
                **extra,
                name=name if k == 0 else f"{name}#{k}",
                runner=r,
                layout=layout,
                max_batch=rows[k],
                context=ctx,
                # a device-resident runner's KV is reserved above; requests are counted against the pool only
                pool=BlockPool(
                    None if resident else ledger, device, f"llm:{name}/kv", bpt, cap * rows[k] // max_batch, bs
                ),
                prefix=PrefixCache(
                    ledger,
                    device,
                    f"llm:{name}/prefix" if k == 0 else f"llm:{name}/r{k}/prefix",
                    bpt * bs,
                    prefix_blocks[k],
                    bs,
                    stack,
                ),
                max_waiting=int(options["max_waiting"]),
                tokenizer=tok,
                decode_text=self.codec.decode if self.codec is not None else None,
                prefill_chunk=options["prefill_chunk_tokens"],
            )
            for k, r in enumerate(self._runners)
        ]
        self._scheduler = self._schedulers[0]
        super().__init__(vmm, name, spec, plan, _Handle(runner, self.stats))
        self._engine_name = None  # type: ignore[assignment]  # not an engine entry: the scheduler runs it
        eos = self.defaults.eos_token_ids
        self._info = LLMInfo(
            context_length=ctx,
            vocab_size=layout.vocab_size,
            eos_token_ids=eos,
            max_batch=max_batch,
            has_tokenizer=self.codec is not None,
            has_chat_template=self.codec is not None and self.codec.chat_template is not None,
            kv=layout,
        )

    def _specialise(self, runner: Any, max_sessions: int, weights: int, key: str) -> str | None:
        """Let the runner build fixed-shape decode sessions, each charged to the ledger; the plan's note."""
        note = _fixed_shape_note(runner, max_sessions, weights)
        fixed = getattr(runner, "fixed", None)
        if fixed is None:
            return note
        ledger, device = self._ledger, self._device

        def reserve(shape: tuple[int, int]) -> bool:
            return ledger.try_reserve(f"{key}/{shape[0]}x{shape[1]}", device, weights)

        def release(shape: tuple[int, int]) -> None:
            ledger.release(f"{key}/{shape[0]}x{shape[1]}")

        fixed.charge(reserve, release)
        return note

    def __repr__(self) -> str:
        c = self.generation_plan.chosen
        return f"<DeployedLLM {self.name!r} on {c.label}{' closed' if self._closed else ''}>"

    @property
    def info(self) -> LLMInfo:
        return self._info

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self._need_codec("tokenize").encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._need_codec("detokenize").decode(self._check_ids(ids))

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        return self._need_codec("apply a chat template").chat(messages, add_generation_prompt)

    def _need_codec(self, what: str) -> TextCodec:
        if self.codec is None:
            raise InputError(f"model {self.name!r} has no tokenizer.json: cannot {what}; pass token ids")
        return self.codec

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = []
        vocab = self._info.vocab_size
        for i, t in enumerate(ids):
            if isinstance(t, bool) or (not isinstance(t, int) and not hasattr(t, "__index__")):
                raise InputError(f"token {i} is {t!r}, not an integer id")
            t = int(t)
            if not 0 <= t < vocab:
                raise InputError(f"token id {t} at position {i} is outside the vocabulary [0, {vocab})")
            out.append(t)
        return out

    # -- generation ----------------------------------------------------------------------------
    def _request(
        self,
        prompt: str | Sequence[int],
        params: Any,
        kw: Mapping[str, Any],
        *,
        streaming: bool,
        on_event: Any,
        on_done: Any,
    ) -> Request:
        if self._closed:
            from aivmm.errors import ModelClosedError

            raise ModelClosedError(f"model {self.name!r} was closed")
        p = SamplingParams.of(params, kw)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)
        if not ids:
            raise InputError("the prompt is empty (no tokens)")
        ctx = self._info.context_length
        n = len(ids)
        if n >= ctx:
            raise ContextLengthError(
                f"the prompt has {n} tokens but the context length of {self.name!r} is {ctx}"
                " (at least one token must be left to generate)"
            )
        if p.max_new_tokens is None:
            max_new = min(self.defaults.max_new_tokens, ctx - n)
        elif n + p.max_new_tokens > ctx:
            raise ContextLengthError(
                f"prompt ({n} tokens) + max_new_tokens ({p.max_new_tokens}) = {n + p.max_new_tokens} exceeds the "
                f"context length {ctx} of {self.name!r}; at most {ctx - n} new tokens fit"
            )
        else:
            max_new = p.max_new_tokens
        if p.stop and self.codec is None:
            raise InputError("stop strings need a tokenizer; this model has none (use stop_token_ids)")
        eos = frozenset() if p.ignore_eos else frozenset(self.defaults.eos_token_ids)
        stop_ids = frozenset(p.stop_token_ids) | eos
        decoder = self.codec.decode_stream() if self.codec is not None and (streaming or p.stop) else None
        sampler = Sampler(p, self.defaults, ids)
        return Request(ids, sampler, max_new, stop_ids, p.stop, on_event, on_done, decoder)

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any) -> Generation:
        done = threading.Event()
        box: list[Any] = []

        def finished(x: Any) -> None:
            box.append(x)
            done.set()

        req = self._request(prompt, params, kw, streaming=False, on_event=None, on_done=finished)
        sched = self._submit(req)
        try:
            done.wait()
        except BaseException:
            sched.cancel(req)
            raise
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stream(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any
    ) -> Iterator[TokenEvent]:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        req = self._request(prompt, params, kw, streaming=True, on_event=q.put, on_done=_ignore)
        return self._iterate(self._submit(req), req, q)

    def _iterate(self, sched: Scheduler, req: Request, q: queue.SimpleQueue[Any]) -> Iterator[TokenEvent]:
        try:
            while True:
                ev = q.get()
                if isinstance(ev, BaseException):
                    raise ev
                if ev.token_id < 0:  # cancelled elsewhere
                    return
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            sched.cancel(req)

    async def agenerate(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any
    ) -> Generation:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def finished(x: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, fut, x)

        req = self._request(prompt, params, kw, streaming=False, on_event=None, on_done=finished)
        sched = self._submit(req)
        try:
            return await fut
        except asyncio.CancelledError:
            sched.cancel(req)
            raise

    def astream(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, **kw: Any
    ) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        aq: asyncio.Queue[Any] = asyncio.Queue()
        holder: list[Request] = []
        mailbox = _mailbox(loop)

        def put(ev: Any) -> None:
            if not mailbox.post(aq, ev) and holder:  # the loop is gone: nobody reads this stream any more
                holder[0].cancelled = True

        req = self._request(prompt, params, kw, streaming=True, on_event=put, on_done=_ignore)
        holder.append(req)
        return self._aiterate(self._submit(req), req, aq)

    async def _aiterate(self, sched: Scheduler, req: Request, aq: asyncio.Queue[Any]) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                ev = await aq.get()
                if isinstance(ev, BaseException):
                    raise ev
                if ev.token_id < 0:
                    return
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            sched.cancel(req)

    def _submit(self, req: Request) -> Scheduler:
        """Hand ``req`` to the first scheduler with a free row, else the least loaded (one per core,
        see the plan's split): filling the first one first keeps a few streams on one scheduler,
        where steps of a few rows cost about one row's (4 streams on two schedulers ran no faster,
        and 2x slower on loaded cores, than on one); the second takes rows the first has no room for."""
        scheds = self._schedulers
        sched = scheds[0]
        if len(scheds) > 1:
            free = [s for s in scheds if s.load < s.batch.max_batch]
            sched = free[0] if free else min(scheds, key=lambda s: s.load)
        sched.submit(req)
        return sched

    def stats(self) -> LLMStats:  # type: ignore[override]
        got = [s.stats() for s in self._schedulers]
        if len(got) == 1:
            return got[0]
        return LLMStats(*(sum(getattr(g, f.name) for g in got) for f in dataclasses.fields(LLMStats)))

    def _release_runners(self) -> None:
        for r in self._runners:
            close = getattr(r, "close", None)
            if close is not None:
                close()
        for key in self._extra_weights:
            self._ledger.release(key)
        self._extra_weights = []

    def _shutdown(self) -> None:
        """Stop the schedulers and give every byte back to the ledger (called by VMM._forget)."""
        for s in self._schedulers:
            s.close()
        self._release_runners()
        self._ledger.release(self._store_key)
        self._ledger.release(self._weights_key)
        self._handle.unloaded = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._vmm._forget(self.name)


def _ignore(_: Any) -> None:
    return None


def _shares(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` parts as even as possible, the larger first."""
    q, r = divmod(total, n)
    return [q + (k < r) for k in range(n)]


class _Mailbox:
    """Events for one event loop's streams, handed over in batches.

    One ``call_soon_threadsafe`` per event would wake the loop (a self-pipe write that drops and
    retakes the GIL) once per token per stream, 16 times per 16-row decode step; the scheduler
    instead appends to this list and wakes the loop only when no hand-over is pending.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Any], Any]] = []
        self._pending = False

    def post(self, q: asyncio.Queue[Any], ev: Any) -> bool:
        """Queue ``ev`` for ``q``; False when the loop is closed."""
        with self._lock:
            self._items.append((q, ev))
            if self._pending:
                return True
            self._pending = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:
            with self._lock:
                self._items.clear()
                self._pending = False
            return False
        return True

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._pending = False
        for q, ev in items:
            q.put_nowait(ev)


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()
_MAILBOX_LOCK = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    with _MAILBOX_LOCK:
        box = _MAILBOXES.get(loop)
        if box is None:
            box = _MAILBOXES[loop] = _Mailbox(loop)
        return box


def _settle(fut: asyncio.Future[Any], x: Any) -> None:
    if fut.done():
        return
    if isinstance(x, BaseException):
        fut.set_exception(x)
    else:
        fut.set_result(x)


def _file_bytes(path: pathlib.Path) -> int:
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + "*.data"):
        total += extra.stat().st_size
    data = path.parent / (path.name + "_data")
    if data.is_file():
        total += data.stat().st_size
    return total


def is_llm_source(model: Any) -> bool:
    """True when ``model`` is a path to a decoder ONNX file or directory with a KV cache."""
    if not isinstance(model, str | os.PathLike):
        return False
    p = pathlib.Path(model)
    try:
        from aivmm.llm._torch_runner import is_hf_dir

        if is_hf_dir(p):
            return True
        if p.is_dir():
            file = model_file(p)
        elif p.suffix == ".onnx" and p.is_file():
            file = p
        else:
            return False
        from aivmm.llm._layout import detect

        return detect(file) is not None
    except Exception:  # not ours to judge: the normal deploy path reports what is wrong
        return False


def _not_for_generation(deploy: DeployOptions) -> str:
    """The sentence naming the deploy options an LLM's generation plan does not apply ("" if none):
    said in the plan (refused with ``strict``) rather than dropped."""
    unset = DeployOptions()
    names = [n for n in ("constraints", "replicas", "isolation", "fast_start", "replan_on_first_request")
             if getattr(deploy, n) != getattr(unset, n)]  # fmt: skip
    names += [n for n in ("sample_inputs", "example_inputs") if getattr(deploy, n) is not None]
    if not names:
        return ""
    return f"LLM generation does not apply the deploy option(s) {names}: it plans one scheduler by generation cost"


def deploy_llm(vmm: VMM, model: Any, deploy: DeployOptions) -> DeployedLLM:
    """Plan generation for a decoder and start its scheduler (what VMM.deploy does for an LLM)."""
    name, strict, batching = deploy.name, deploy.strict, deploy.batching
    options: dict[str, Any] = dict(OPTIONS)
    if batching is not None:
        if not isinstance(batching, Mapping):
            raise ConfigError("an LLM takes batching options as a mapping: " + ", ".join(sorted(OPTIONS)))
        unknown = sorted(set(batching) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"unknown LLM batching option(s) {unknown}; known: {sorted(OPTIONS)}")
        options.update(batching)
    for key, low in (
        ("max_batch_size", 1),
        ("max_waiting", 1),
        ("block_size", 1),
        ("prefix_cache_blocks", 0),
        ("kv_cache_tokens", 1),
        ("fixed_shape_sessions", 0),
        ("prefill_chunk_tokens", 1),
        ("decode_cores", 1),
        ("split_decode_rows", 0),
        ("decode_schedulers", 1),
    ):
        v = options[key]
        if v is None and key in (
            "kv_cache_tokens",
            "prefill_chunk_tokens",
            "decode_cores",
            "split_decode_rows",
            "decode_schedulers",
        ):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"LLM option {key} must be an integer >= {low}, got {v!r}")
    if options["cuda_graphs"] not in (None, True, False):
        raise ConfigError(f"LLM option cuda_graphs must be None, True or False, got {options['cuda_graphs']!r}")
    src = _source(model, vmm.devices, deploy)
    unapplied = _not_for_generation(deploy)
    if unapplied and strict:
        raise FallbackError(unapplied)
    path, spec = src.path, src.spec
    name = name or (path.name if path.is_dir() and src.module is None else spec.name)
    cores, why = decode_cores(options["decode_cores"], vmm.engine.ledger, src.device)
    small = _model_bytes(src) <= FIXED_SHAPE_MAX_WEIGHTS  # a runner per scheduler copies the weights
    split = SplitOptions(options["split_decode_rows"], options["decode_schedulers"], small)
    gplan, runner = src.plan(int(options["max_batch_size"] or 1), cores, why, split, options["cuda_graphs"])
    plan = _as_plan(spec, gplan, [*src.notes, unapplied] if unapplied else src.notes)
    return DeployedLLM(vmm, name, spec, plan, gplan, runner, src.layout, src.folder, options, src.device)


@dataclasses.dataclass
class _Source:
    """A decoder to generate with: its files, KV layout, spec, the runner backends it may use."""

    path: pathlib.Path
    file: pathlib.Path
    folder: pathlib.Path
    layout: KVLayout
    spec: Any
    hf: bool
    options: DeployOptions  # the deploy's, with the backend an HF directory runs on
    device: str
    notes: list[str]
    target: Any = None  # the Device an HF model runs on (torch placement); None: the CPU
    module: Any = None  # a transformers model in memory (no weights on disk)

    def plan(
        self,
        batch: int,
        cores: int = 1,
        cores_why: str = "",
        split: SplitOptions | None = None,
        cuda_graphs: bool | None = None,
    ) -> tuple[GenerationPlan, Any]:
        torch_kw = {"device": self.target, "cuda_graphs": cuda_graphs, "model": self.module}
        return plan_generation(
            self.file,
            self.layout,
            self.options,
            device=self.device,
            batch=batch,
            backends=("torch",) if self.hf else DEFAULT_BACKENDS,
            cores=cores,
            cores_why=cores_why,
            split=split,
            runner_kwargs={"torch": torch_kw},
        )


def decode_cores(given: int | None, ledger: Any, device: str) -> tuple[int, str]:
    """How many cores a decode step may split its rows over, and why that many: the
    ``decode_cores`` option, else the CPUs this process may run on, but one while other models
    hold memory on ``device`` in the ledger (their sessions run on the same cores)."""
    if given is not None:
        return int(given), f"decode_cores={given}"
    try:
        n = len(os.sched_getaffinity(0))
        where = "CPUs this process may run on"
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
        where = "CPUs of the machine"
    held = sorted({e.key.split("/")[0] for e in ledger.entries(device)}) if ledger is not None else []
    if held and n > 1:
        return 1, f"{n} {where}, but other models share them ({', '.join(held[:3])}); decode_cores sets it"
    return n, f"{n} {where}"


def _source(model: Any, devices: Sequence[Any], options: DeployOptions) -> _Source:
    device, backend, strict = options.device, options.backend, options.strict
    from aivmm.llm._torch_runner import hf_layout, is_hf_dir, weights_bytes

    module = model if is_torch_llm(model) else None
    path = _config_dir(module) if module is not None else pathlib.Path(model)
    hf = module is not None or (is_hf_dir(path) and not any(path.glob("*.onnx")))
    target = None
    if hf:
        file, folder, layout = path, path, hf_layout(path)
        if backend not in (None, "torch"):
            msg = f"{path} is an HF model (no ONNX file): it runs on torch, not {backend}"
            if strict:
                raise FallbackError(msg)
        target, placed = _torch_target(devices, device, strict)
        layout = dataclasses.replace(layout, dtype=_kv_dtype(target, path))
        # one candidate: nothing to choose between, so nothing to measure, except on a GPU, where
        # the plan shows the step costs it was placed by
        gpu = target is not None and target.kind.value != "cpu"
        options = options.replace(backend="torch", measure=gpu)
    else:
        file = model_file(path)
        folder = file.parent
        layout = require(file)
    cpu = next((d for d in devices if d.kind.value == "cpu"), None)
    if cpu is None:
        raise ConfigError("LLM generation needs a CPU device in this VMM")
    notes = []
    if hf:
        notes += placed
    elif device is not None and device != cpu.id:
        msg = f"LLM generation of ONNX decoders runs on {cpu.id} in this build; asked for {device}"
        if strict:
            raise FallbackError(msg)
        notes.append(msg)
    if hf:
        from aivmm.models import ModelFormat, ModelSpec

        size = weights_bytes(path) if module is None else _module_bytes(module)
        name = path.name if module is None else str(getattr(module.config, "model_type", "model"))
        spec = ModelSpec(
            name=name, format=ModelFormat.TORCH_MODULE, inputs=(), outputs=(), source=str(path), size_bytes=size
        )
    else:
        from aivmm.models import load

        spec = load(file)
    where = target.id if target is not None else cpu.id
    return _Source(path, file, folder, layout, spec, hf, options, where, notes, target, module)


def is_torch_llm(model: Any) -> bool:
    """A transformers causal LM in memory (``vmm.deploy(model)`` generates with it on torch)."""
    return hasattr(model, "config") and hasattr(model, "generate") and hasattr(model, "parameters")


def _config_dir(module: Any) -> pathlib.Path:
    """A folder with the module's config.json and generation_config.json (what the layout and the
    generation defaults are read from); weights stay in memory."""
    import atexit
    import shutil
    import tempfile

    folder = pathlib.Path(tempfile.mkdtemp(prefix="aivmm-llm-"))
    # Read at deploy and by a later re-plan of the same model: kept for the process, removed at exit.
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    module.config.to_json_file(str(folder / "config.json"))
    gen = getattr(module, "generation_config", None)
    if gen is not None:
        gen.to_json_file(str(folder / "generation_config.json"))
    return folder


def _module_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _torch_target(devices: Sequence[Any], asked: str | None, strict: bool) -> tuple[Any, list[str]]:
    """The device an HF model generates on: the one asked for when torch drives it, else the first
    GPU torch drives, else the CPU; with the notes saying any fallback (strict refuses it)."""
    from aivmm.backends.torch import supports

    cpu = next((d for d in devices if d.kind.value == "cpu"), None)
    gpus = [d for d in devices if d.kind.value == "gpu" and not d.simulated]
    if asked is not None:
        dev = next((d for d in devices if d.id == asked), None)
        ok, why = (False, f"no device {asked!r}") if dev is None else supports(dev)
        if ok:
            return dev, []
        msg = f"torch cannot generate on {asked}: {why}; generating on {cpu.id if cpu else 'the CPU'}"
        if strict:
            raise FallbackError(msg)
        return cpu, [msg]
    for dev in gpus:
        if supports(dev)[0]:
            return dev, []
    return cpu, []


def _kv_dtype(target: Any, folder: pathlib.Path) -> str:
    from aivmm.backends.torch import placement

    cfg = json.loads((folder / "config.json").read_text())
    return str(placement(target, cfg.get("torch_dtype") or cfg.get("dtype")).dtype_name)


def plan_llm(
    model: str | os.PathLike[str],
    devices: Sequence[Any],
    options: DeployOptions | None = None,
    *,
    batch: int = 16,
) -> dict[str, Any]:
    """What deploying the decoder with ``options`` would choose, without deploying it (``aivmm
    plan`` on an LLM): the generation plan (each runner's prefill and decode step costs, the choice
    and why), the KV layout, and the notes deploy adds (fixed-shape decode sessions, device
    fallbacks)."""
    src = _source(model, devices, options or DeployOptions())
    cores, why = decode_cores(None, None, src.device)
    split = SplitOptions(replicas_ok=_model_bytes(src) <= FIXED_SHAPE_MAX_WEIGHTS)
    gplan, runner = src.plan(batch, cores, why, split)
    notes = list(src.notes)
    weights = _model_bytes(src)
    note = _fixed_shape_note(runner, int(OPTIONS["fixed_shape_sessions"] or 0), weights)
    if note is not None:
        notes.append(note)
    close = getattr(runner, "close", None)
    if close is not None:
        close()
    return {"model": str(src.path), "kv": src.layout, "plan": gplan, "notes": notes}


def _model_bytes(src: _Source) -> int:
    return int(src.spec.size_bytes) if src.path.is_dir() else _file_bytes(src.file)


def _fixed_shape_note(runner: Any, max_sessions: int, weights: int) -> str | None:
    """Why a runner gets no fixed-shape decode sessions, or (when it does) what it builds."""
    specialise = getattr(runner, "specialise", None)
    if specialise is None or max_sessions <= 0:
        return None
    if weights > FIXED_SHAPE_MAX_WEIGHTS:
        return (
            f"no fixed-shape decode sessions: {weights} B of weights > {FIXED_SHAPE_MAX_WEIGHTS} B "
            "(the shape arithmetic is a small part of such a step, and each session copies the weights)"
        )
    return str(specialise(max(1, min(max_sessions, FIXED_SHAPE_BUDGET // max(1, weights)))))


def _as_plan(spec: Any, gplan: GenerationPlan, fallbacks: list[str]) -> Any:
    """The generation plan in the planner's Plan shape, so ``model.plan.explain()`` works the same."""
    from aivmm.backends import Config
    from aivmm.dtypes import Precision
    from aivmm.planner import Candidate, Plan
    from aivmm.planner.constraints import Constraints

    def cand(c: Any) -> Candidate:
        options = {"threads": c.threads} if c.threads else {}
        return Candidate(
            config=Config(c.backend, c.device, Precision(c.precision), options), model=spec, notes=(c.line(),)
        )

    chosen = cand(gplan.chosen)
    others = tuple(cand(c) for c in gplan.candidates if c is not gplan.chosen and c.error is None)
    return Plan(
        model_name=spec.name,
        model_sha256=spec.sha256 or "",
        chosen=chosen,
        alternatives=others,
        rejected=(),
        fallbacks=tuple(fallbacks),
        constraints=Constraints(),
        planning_seconds=0.0,
        measured=gplan.measured,
        notes=gplan.reasons,
    )
