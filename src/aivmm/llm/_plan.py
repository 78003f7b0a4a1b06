"""Generation planning: measure what generating costs on each candidate runner and pick the cheapest.

A decoder's cost is not its prefill latency (what a one-shot planner measures): it is one prefill
plus a decode step per new token, and the decode step grows with the past length. Each candidate
runs a prefill of ``prompt_tokens`` and decode steps at several past lengths on aivmm's own KV
buffers; the cost of a reference generation (``prompt_tokens`` in, ``new_tokens`` out) is the
prefill plus the decode steps interpolated over the past lengths it crosses. The decision is data:
every candidate with its figures or why it failed, and the reasons for the choice.
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from aivmm.errors import AivmmError, FallbackError, InfeasibleError
from aivmm.llm._kvstore import _Sides
from aivmm.llm._runners import RUNNERS
from aivmm.llm._types import KVLayout

DEFAULT_BACKENDS = ("onnxruntime", "openvino")
# Thread settings measured per backend: the runtime's pool, and one thread (no pool to wake per
# operator, which wins for small decoders whose steps are hundreds of tiny kernels).
THREADS = (None, 1)


@dataclasses.dataclass(frozen=True)
class StepCost:
    backend: str
    device: str
    precision: str
    threads: int | None = None  # None: the runtime's default thread pool
    prefill_ms: float | None = None
    decode_ms: tuple[tuple[int, float], ...] = ()  # (past length, median ms per step)
    generation_ms: float | None = None
    load_s: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "threads": self.threads,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "prefill_ms": _r(self.prefill_ms),
            "decode_ms": {str(k): _r(v) for k, v in self.decode_ms},
            "generation_ms": _r(self.generation_ms),
            "load_s": round(self.load_s, 3),
            "error": self.error,
        }

    @property
    def label(self) -> str:
        return f"{self.backend}@{self.device}/{self.precision}" + (f"[threads={self.threads}]" if self.threads else "")

    def line(self) -> str:
        if self.error:
            return f"{self.label}: failed: {self.error}"
        if self.prefill_ms is None or self.generation_ms is None:
            return f"{self.label}: loaded in {self.load_s:.2f} s, not measured"
        dec = ", ".join(f"past {k}: {v:.3f}" for k, v in self.decode_ms)
        return (
            f"{self.label}: prefill {self.prefill_ms:.3f} ms; decode ms/step "
            f"{dec}; reference generation {self.generation_ms:.2f} ms"
        )


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """Which runner generates, the figures behind the choice, and why."""

    chosen: StepCost
    candidates: tuple[StepCost, ...]
    reasons: tuple[str, ...]
    prompt_tokens: int
    new_tokens: int
    measured: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "reasons": list(self.reasons),
            "reference": {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens},
            "measured": self.measured,
        }

    def explain(self) -> str:
        lines = [f"generation on {self.chosen.label}"]
        lines += [f"  why: {r}" for r in self.reasons]
        lines += [f"  - {c.line()}" for c in self.candidates]
        return "\n".join(lines)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _interp(points: Sequence[tuple[int, float]], x: float) -> float:
    xs = [p for p, _ in points]
    ys = [v for _, v in points]
    return float(np.interp(x, xs, ys))


def generation_cost(prefill_ms: float, decode: Sequence[tuple[int, float]], prompt: int, new: int) -> float:
    """Prefill plus one decode step per further token at the past length it runs at."""
    return prefill_ms + sum(_interp(decode, prompt + t) for t in range(max(0, new - 1)))


def measure(
    runner: Any, layout: KVLayout, *, prompt_tokens: int, past_lengths: Sequence[int], repeats: int = 15
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """Median prefill ms at ``prompt_tokens`` and median decode ms per step at each past length."""
    ctx = max(prompt_tokens, *past_lengths) + 1
    sides = _Sides(layout, 1, ctx, getattr(runner, "register", None))
    for side in sides.bufs:
        for b in side:
            b[:] = 0
    v = layout.vocab_size
    logits = np.empty(ctx * v, dtype=runner.logits_dtype)
    ones = np.ones(ctx + 1, dtype=np.int64)

    def once(past: int, seq: int) -> float:
        ids = np.ones((1, seq), dtype=np.int64)
        pos = np.arange(past, past + seq, dtype=np.int64).reshape(1, seq)
        mask = ones[: past + seq].reshape(1, past + seq)
        t = time.perf_counter()
        runner.run(1, past, seq, ids, pos, mask, sides.ptrs[0], sides.ptrs[1], logits)
        return (time.perf_counter() - t) * 1e3

    once(0, prompt_tokens)
    prefill = statistics.median(once(0, prompt_tokens) for _ in range(max(3, repeats // 5)))
    decode = []
    for past in past_lengths:
        once(past, 1)
        decode.append((past, statistics.median(once(past, 1) for _ in range(repeats))))
    return prefill, tuple(decode)


def plan_generation(
    path: pathlib.Path,
    layout: KVLayout,
    *,
    device: str,
    backend: str | None = None,
    strict: bool = False,
    do_measure: bool = True,
    prompt_tokens: int = 32,
    new_tokens: int = 64,
    past_lengths: Sequence[int] | None = None,
    backends: Sequence[str] = DEFAULT_BACKENDS,
) -> tuple[GenerationPlan, Any]:
    """The generation plan and the loaded runner it chose."""
    ctx = layout.context_length
    prompt_tokens = max(1, min(prompt_tokens, ctx // 4))
    new_tokens = max(1, min(new_tokens, ctx - prompt_tokens))
    if past_lengths is None:
        past_lengths = sorted(
            {min(p, ctx - 1) for p in (prompt_tokens, prompt_tokens + new_tokens // 2, prompt_tokens + new_tokens)}
        )
    reasons: list[str] = []
    names = list(backends)
    if backend is not None:
        if backend not in RUNNERS:
            msg = f"no generation runner for backend {backend!r}; generation runs on {sorted(RUNNERS)}"
            if strict:
                raise FallbackError(msg)
            reasons.append(msg + ": choosing among them instead")
        else:
            names = [backend]
            reasons.append(f"backend pinned to {backend}")
    results: list[StepCost] = []
    runners: dict[str, Any] = {}
    candidates = [(name, threads) for name in names for threads in (THREADS if do_measure else THREADS[:1])]
    for name, threads in candidates:
        t0 = time.perf_counter()
        try:
            runner = RUNNERS[name](path, layout, threads=threads)
        except AivmmError as exc:
            results.append(StepCost(name, device, "fp32", threads, error=str(exc).splitlines()[0]))
            continue
        load_s = time.perf_counter() - t0
        if not do_measure:
            results.append(StepCost(name, device, "fp32", threads, load_s=load_s))
            runners[results[-1].label] = runner
            break
        try:
            prefill, decode = measure(runner, layout, prompt_tokens=prompt_tokens, past_lengths=past_lengths)
        except AivmmError as exc:
            results.append(StepCost(name, device, "fp32", threads, load_s=load_s, error=str(exc).splitlines()[0]))
            continue
        cost = generation_cost(prefill, decode, prompt_tokens, new_tokens)
        results.append(StepCost(name, device, "fp32", threads, prefill, decode, cost, load_s))
        runners[results[-1].label] = runner
    ok = [r for r in results if r.error is None]
    if not ok:
        raise InfeasibleError("no runner can generate with this model: " + "; ".join(r.line() for r in results))
    measured = all(r.generation_ms is not None for r in ok) and len(ok) > 1
    if measured:
        ok.sort(key=lambda r: r.generation_ms)  # type: ignore[arg-type, return-value]
        best = ok[0]
        reasons.append(
            f"lowest cost of a {prompt_tokens}-token prompt + {new_tokens} new tokens: "
            f"{best.generation_ms:.2f} ms on {best.label}"
        )
        for other in ok[1:]:
            reasons.append(
                f"{other.label}: {other.generation_ms:.2f} ms ({other.generation_ms / best.generation_ms:.2f}x)"
            )  # type: ignore[operator]
    else:
        best = ok[0]
        reasons.append(f"{best.label}: first runner that loaded (not measured)")
    for r in results:
        if r.error:
            reasons.append(f"{r.label} rejected: {r.error}")
    chosen = runners.pop(best.label)
    runners.clear()  # the other sessions go now, not when the plan is collected
    return GenerationPlan(best, tuple(results), tuple(reasons), prompt_tokens, new_tokens, measured), chosen
