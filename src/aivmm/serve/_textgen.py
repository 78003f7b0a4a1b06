"""Text generation behind the OpenAI and Triton generate routes: request values, field checks,
and the service that runs generations on a model's DeployedLLM.

Both protocols parse into :class:`GenRequest` values (one per output choice) and read back
``Generation`` / ``TokenEvent`` objects from ``aivmm.llm``; only the wire formats differ. The
service holds no lock and never blocks the event loop: every request is its own asyncio task
calling the model's ``astream``/``agenerate``, so concurrent requests meet inside the model's
continuous batching, which is where decode steps are shared.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Protocol

from aivmm.errors import InputError, ModelNotReadyError, OverloadedError

Prompt = str | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class GenRequest:
    """One generation: a prompt and the SamplingParams fields to pass as keywords."""

    prompt: Prompt
    sampling: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.sampling)


# -- field checks (messages name the field and what was sent) -----------------------------------
def type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


def integer(
    body: Mapping[str, Any], key: str, *, lo: int | None = None, hi: int | None = None, where: str = ""
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}{key!r} must be an integer, got {type_name(value)} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise InputError(f"{where}{key!r} must be {bounds}, got {value}")
    return value


def number(
    body: Mapping[str, Any],
    key: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    where: str = "",
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}{key!r} must be a finite number, got {type_name(value)} {value!r}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    if low_bad or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        raise InputError(f"{where}{key!r} must be in {left}{lo}, {hi}], got {value}")
    return float(value)


def boolean(body: Mapping[str, Any], key: str, default: bool = False, *, where: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(f"{where}{key!r} must be a boolean, got {type_name(value)} {value!r}")
    return value


def stop_strings(body: Mapping[str, Any], key: str = "stop", *, limit: int = 16, where: str = "") -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InputError(f"{where}{key!r} must be a string or an array of strings, got {type_name(value)}")
    if len(items) > limit:
        raise InputError(f"{where}{key!r} has {len(items)} strings; at most {limit} are accepted")
    if any(s == "" for s in items):
        raise InputError(f"{where}{key!r} must not contain an empty string")
    return tuple(items)


def token_ids(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{what} must be a non-empty array of token ids")
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise InputError(f"{what} must hold non-negative integer token ids, got {t!r}")
    return tuple(value)


def unsupported(body: Mapping[str, Any], fields: Mapping[str, Callable[[Any], bool]], where: str = "") -> None:
    """Refuse fields aivmm does not implement unless they hold their neutral value (no silent ignore)."""
    for key, neutral in fields.items():
        if key in body and body[key] is not None and not neutral(body[key]):
            raise InputError(f"{where}{key!r} = {body[key]!r} is not supported by this server")


def no_unknown(body: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise InputError(f"{where}: unrecognised field(s) {unknown}; accepted: {sorted(known)}")


def finish_name(reason: Any) -> str | None:
    if reason is None:
        return None
    return str(getattr(reason, "value", reason))


# -- the service -----------------------------------------------------------------------------
class LLMObserver(Protocol):
    """Metric hooks for generations (the Prometheus exporter implements them)."""

    def generation(
        self,
        model: str,
        ttft_s: float | None,
        tpot_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        finish: str,
    ) -> None: ...


class _NoMetrics:
    def generation(self, *args: Any) -> None:
        return None


@dataclasses.dataclass
class _Figures:
    """Recent per-model figures for the status document (``aivmm top``)."""

    recent: collections.deque[tuple[float, float | None, float | None]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )  # (finish time, ttft, tpot)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    requests: int = 0
    cancelled: int = 0


def is_llm(handle: Any) -> bool:
    return callable(getattr(handle, "astream", None)) and hasattr(handle, "info")


class TextGen:
    """Runs generations for the HTTP routes; ``plane`` resolves names and tracks in-flight work."""

    def __init__(
        self, plane: Any, observer: LLMObserver | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.plane = plane
        self.observer: LLMObserver = observer or _NoMetrics()
        self._clock = clock
        self._figures: dict[str, _Figures] = {}

    def resolve(self, name: str, version: str = "") -> Any:
        entry = self.plane.resolve(name, version)
        if not is_llm(entry.handle):
            raise InputError(
                f"model {name!r} is not a text-generation model (it has no KV cache outputs); use /v2/models/NAME/infer"
            )
        return entry

    def models(self) -> list[Any]:
        """The READY LLM versions, newest version per name."""
        out = []
        for name in sorted(self.plane._models):
            with contextlib.suppress(Exception):
                entry = self.plane.resolve(name)
                if is_llm(entry.handle):
                    out.append(entry)
        return out

    def admit(self, entry: Any, count: int) -> None:
        """Refuse at once (429/503) rather than queue without bound; callers admit before streaming."""
        if self.plane._shutting_down:
            raise ModelNotReadyError("the server is shutting down")
        limit = self.plane.limits.max_inflight_per_model
        if entry.inflight + count > limit:
            raise OverloadedError(
                f"model {entry.model!r}: {entry.inflight} requests in flight (limit {limit}); retry later"
            )

    def _enter(self, entry: Any) -> None:
        entry.inflight += 1
        entry.idle.clear()

    def _leave(self, entry: Any) -> None:
        entry.inflight -= 1
        if entry.inflight == 0:
            entry.idle.set()

    async def stream(self, entry: Any, req: GenRequest) -> AsyncGenerator[Any, None]:
        """The model's TokenEvents. Closing this generator (or cancelling its consumer) cancels
        the generation and frees its KV blocks at once."""
        self._enter(entry)
        start = self._clock()
        first: float | None = None
        last = start
        n = 0
        finish = "cancelled"
        prompt_tokens = 0
        it = entry.handle.astream(req.prompt, **req.kwargs)
        try:
            async for ev in it:
                last = self._clock()
                if first is None:
                    first = last
                n += 1
                if ev.finish_reason is not None:
                    finish = finish_name(ev.finish_reason) or "stop"
                yield ev
        finally:
            with contextlib.suppress(Exception):
                await it.aclose()
            self._leave(entry)
            if first is not None and isinstance(req.prompt, tuple):
                prompt_tokens = len(req.prompt)
            self._record(entry.model, start, first, last, n, prompt_tokens, finish)

    async def generate(self, entry: Any, req: GenRequest) -> Any:
        self._enter(entry)
        start = self._clock()
        try:
            gen = await entry.handle.agenerate(req.prompt, **req.kwargs)
        except asyncio.CancelledError:
            self._record(entry.model, start, None, self._clock(), 0, 0, "cancelled")
            raise
        finally:
            self._leave(entry)
        ttft = getattr(gen, "ttft_s", None)
        total = getattr(gen, "total_s", None)
        self._observe(
            entry.model,
            ttft,
            _tpot(ttft, total, gen.completion_tokens),
            gen.prompt_tokens,
            gen.completion_tokens,
            finish_name(gen.finish_reason) or "stop",
            self._clock() - start,
        )
        return gen

    def _record(
        self, model: str, start: float, first: float | None, last: float, n: int, prompt_tokens: int, finish: str
    ) -> None:
        ttft = first - start if first is not None else None
        tpot = (last - first) / (n - 1) if first is not None and n > 1 else None
        self._observe(model, ttft, tpot, prompt_tokens, n, finish, last - start)

    def _observe(
        self,
        model: str,
        ttft: float | None,
        tpot: float | None,
        prompt_tokens: int,
        completion: int,
        finish: str,
        seconds: float,
    ) -> None:
        served = self.plane._models.get(model)
        if served is not None:  # the models table of the status page counts generations as requests
            served.ok += 1
            served.recent.append((time.monotonic(), seconds))
        self.plane.requests_total += 1
        fig = self._figures.setdefault(model, _Figures())
        fig.requests += 1
        fig.completion_tokens += completion
        fig.prompt_tokens += prompt_tokens
        if finish == "cancelled":
            fig.cancelled += 1
        fig.recent.append((time.monotonic(), ttft, tpot))
        self.observer.generation(model, ttft, tpot, prompt_tokens, completion, finish)

    def status(self, entry: Any) -> dict[str, Any]:
        """The LLM part of a model's row in the status document."""
        fig = self._figures.get(entry.model, _Figures())
        horizon = time.monotonic() - 60.0
        recent = [(a, b) for t, a, b in fig.recent if t >= horizon]
        ttfts = sorted(a for a, _ in recent if a is not None)
        tpots = sorted(b for _, b in recent if b is not None)
        doc: dict[str, Any] = {
            "requests": fig.requests,
            "cancelled": fig.cancelled,
            "prompt_tokens_total": fig.prompt_tokens,
            "completion_tokens_total": fig.completion_tokens,
            "ttft_ms_p50": _median_ms(ttfts),
            "tpot_ms_p50": _median_ms(tpots),
        }
        try:
            stats = entry.handle.stats()
        except Exception as exc:  # a failing stats read must not break the status page
            doc["error"] = str(exc)
            return doc
        for key in (
            "running",
            "waiting",
            "kv_tokens_used",
            "kv_tokens_capacity",
            "kv_bytes_used",
            "tokens_generated_total",
            "requests_total",
        ):
            value = stats.get(key) if isinstance(stats, Mapping) else getattr(stats, key, None)
            if value is not None:
                doc[key] = value
        info = entry.handle.info
        doc["context_length"] = info.context_length
        doc["max_batch"] = info.max_batch
        return doc


def _tpot(ttft: float | None, total: float | None, n: int) -> float | None:
    if ttft is None or total is None or n < 2:
        return None
    return max(0.0, total - ttft) / (n - 1)


def _median_ms(values: Sequence[float]) -> float | None:
    if not values:
        return None
    mid = len(values) // 2
    v = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return round(v * 1e3, 4)
