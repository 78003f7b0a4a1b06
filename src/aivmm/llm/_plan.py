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
from aivmm.llm._kvstore import BUCKET, _Sides
from aivmm.llm._runners import RUNNERS
from aivmm.llm._types import KVLayout
from aivmm.options import DeployOptions

DEFAULT_BACKENDS = ("onnxruntime", "openvino")
# Thread settings measured per backend: the runtime's pool, and one thread (no pool to wake per
# operator, which wins for small decoders whose steps are hundreds of tiny kernels).
THREADS = (None, 1)
ROUNDS = 3
PRUNE = 3.0  # after the first round, candidates costing more than this times the best stop there


@dataclasses.dataclass(frozen=True)
class StepCost:
    backend: str
    device: str
    precision: str
    threads: int | None = None  # None: the runtime's default thread pool
    prefill_ms: float | None = None
    decode_ms: tuple[tuple[int, float], ...] = ()  # (past length, median ms per step)
    generation_ms: float | None = None  # the reference generation alone (batch 1)
    batched: tuple[int, float] | None = None  # (batch, ms per decode step at that batch, mid past length)
    batched_ms: float | None = None  # the reference generation per sequence when ``batch`` share steps
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
            "batched": None if self.batched is None else {"batch": self.batched[0], "step_ms": _r(self.batched[1])},
            "batched_ms": _r(self.batched_ms),
            "score_ms": _r(self.score_ms),
            "load_s": round(self.load_s, 3),
            "error": self.error,
        }

    @property
    def score_ms(self) -> float | None:
        """What the choice minimises: the mean of the alone and the batched per-sequence cost."""
        if self.generation_ms is None:
            return None
        return self.generation_ms if self.batched_ms is None else (self.generation_ms + self.batched_ms) / 2

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
            + (
                f"; batch {self.batched[0]}: {self.batched[1]:.3f} ms/step, {self.batched_ms:.2f} ms per sequence"
                if self.batched is not None and self.batched_ms is not None
                else ""
            )
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


def _round_cost(sample: Any, prompt: int, new: int, batch: int) -> float:
    prefill, decode, step_n = sample
    alone = generation_cost(prefill, decode, prompt, new)
    return alone if step_n is None else (alone + prefill + (new - 1) * step_n / batch) / 2


def generation_cost(prefill_ms: float, decode: Sequence[tuple[int, float]], prompt: int, new: int) -> float:
    """Prefill plus one decode step per further token at the past length it runs at."""
    return prefill_ms + sum(_interp(decode, prompt + t) for t in range(max(0, new - 1)))


def measure(
    runner: Any,
    layout: KVLayout,
    *,
    prompt_tokens: int,
    past_lengths: Sequence[int],
    repeats: int = 15,
    batch: int = 1,
) -> tuple[float, tuple[tuple[int, float], ...], float | None]:
    """Median prefill ms at ``prompt_tokens``, median decode ms per step at each past length, and
    (``batch`` > 1) the decode step of ``batch`` rows at the middle past length."""
    ctx = max(prompt_tokens, *past_lengths) + BUCKET + 1
    sides = _Sides(layout, batch, ctx, getattr(runner, "register", None))
    for side in sides.bufs:
        for b in side:
            b[:] = 0
    v = layout.vocab_size
    logits = np.empty(max(ctx, batch) * v, dtype=runner.logits_dtype)
    ones = np.ones(batch * (ctx + 1), dtype=np.int64)

    def once(past: int, seq: int, rows: int = 1) -> float:
        ids = np.ones((rows, seq), dtype=np.int64)
        pos = np.tile(np.arange(past, past + seq, dtype=np.int64), (rows, 1))
        mask = ones[: rows * (past + seq)].reshape(rows, past + seq)
        t = time.perf_counter()
        runner.run(rows, past, seq, ids, pos, mask, sides.ptrs[0], sides.ptrs[1], logits)
        return (time.perf_counter() - t) * 1e3

    def decode_steps(past: int, rows: int, n: int) -> float:
        # as the scheduler decodes: a bucketed static past, the same buffers every step
        m = -(-(past + 1) // BUCKET) * BUCKET
        ids = np.ones((rows, 1), dtype=np.int64)
        pos = np.full((rows, 1), past, dtype=np.int64)
        mask = np.zeros((rows, m + 1), dtype=np.int64)
        mask[:, :past] = 1
        mask[:, m] = 1
        past_ptrs, present_ptrs = tuple(sides.ptrs[0]), tuple(sides.ptrs[1])
        times = []
        for _ in range(n + 1):
            t = time.perf_counter()
            runner.run(rows, m, 1, ids, pos, mask, past_ptrs, present_ptrs, logits)
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times[1:])

    once(0, prompt_tokens)
    prefill = statistics.median(once(0, prompt_tokens) for _ in range(max(3, repeats // 5)))
    decode = [(past, decode_steps(past, 1, repeats)) for past in past_lengths]
    batched = None
    if batch > 1:
        batched = decode_steps(past_lengths[len(past_lengths) // 2], batch, max(5, repeats // 2))
    return prefill, tuple(decode), batched


def plan_generation(
    path: pathlib.Path,
    layout: KVLayout,
    options: DeployOptions,
    *,
    device: str,
    prompt_tokens: int = 32,
    new_tokens: int = 64,
    past_lengths: Sequence[int] | None = None,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    batch: int = 1,
) -> tuple[GenerationPlan, Any]:
    """The generation plan and the loaded runner it chose.

    ``options`` is the deploy's DeployOptions, passed whole: its ``backend`` pins the runner (with
    ``strict`` a runner this model lacks is a FallbackError) and ``measure=False`` takes the first
    runner that loads. ``device`` is where generation runs (the deploy resolved it).
    """
    backend, strict, do_measure = options.backend, options.strict, options.measure
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
        if backend not in backends:
            msg = f"no generation runner for backend {backend!r} with this model; it generates on {list(backends)}"
            if strict:
                raise FallbackError(msg)
            reasons.append(msg + ": choosing among them instead")
        else:
            names = [backend]
            reasons.append(f"backend pinned to {backend}")
    results: list[StepCost] = []
    runners: dict[str, Any] = {}
    loaded: list[tuple[str, int | None, Any, float]] = []
    candidates = [(name, threads) for name in names for threads in (THREADS if do_measure else THREADS[:1])]
    for name, threads in candidates:
        t0 = time.perf_counter()
        try:
            runner = RUNNERS[name](path, layout, threads=threads)
        except AivmmError as exc:
            results.append(StepCost(name, device, "fp32", threads, error=str(exc).splitlines()[0]))
            continue
        loaded.append((name, threads, runner, time.perf_counter() - t0))
        if not do_measure:
            break
    # Rounds interleave the candidates so that load from other processes hits them alike; each
    # figure is the median over rounds.
    samples: dict[int, list[tuple[float, tuple[tuple[int, float], ...], float | None]]] = {}
    failed: dict[int, str] = {}
    pruned: set[int] = set()
    for rnd in range(ROUNDS if do_measure else 0):
        for i, (_name, _threads, runner, _load) in enumerate(loaded):
            if i in failed or (rnd and i in pruned):
                continue
            try:
                samples.setdefault(i, []).append(
                    measure(
                        runner, layout, prompt_tokens=prompt_tokens, past_lengths=past_lengths, batch=batch, repeats=7
                    )
                )
            except AivmmError as exc:
                failed[i] = str(exc).splitlines()[0]
        if rnd == 0 and samples:  # a candidate far behind after one round is not measured further
            first = {i: _round_cost(g[0], prompt_tokens, new_tokens, batch) for i, g in samples.items()}
            best_first = min(first.values())
            pruned = {i for i, c in first.items() if c > PRUNE * best_first}
    for i, (name, threads, runner, load_s) in enumerate(loaded):
        if i in failed:
            results.append(StepCost(name, device, "fp32", threads, load_s=load_s, error=failed[i]))
            continue
        if not do_measure:
            results.append(StepCost(name, device, "fp32", threads, load_s=load_s))
            runners[results[-1].label] = runner
            continue
        got = samples[i]
        prefill = statistics.median(g[0] for g in got)
        decode = tuple((past, statistics.median(g[1][j][1] for g in got)) for j, past in enumerate(past_lengths))
        steps = [g[2] for g in got if g[2] is not None]
        step_n = statistics.median(steps) if steps else None
        cost = generation_cost(prefill, decode, prompt_tokens, new_tokens)
        per_seq = None if step_n is None else prefill + (new_tokens - 1) * step_n / batch
        batched = None if step_n is None else (batch, step_n)
        results.append(StepCost(name, device, "fp32", threads, prefill, decode, cost, batched, per_seq, load_s))
        runners[results[-1].label] = runner
    ok = [r for r in results if r.error is None]
    if not ok:
        raise InfeasibleError("no runner can generate with this model: " + "; ".join(r.line() for r in results))
    measured = all(r.score_ms is not None for r in ok) and len(ok) > 1
    if measured:
        ok.sort(key=lambda r: r.score_ms)  # type: ignore[arg-type, return-value]
        best = ok[0]
        what = f"a {prompt_tokens}-token prompt + {new_tokens} new tokens"
        if best.batched is not None:
            what += f" (mean of alone and per sequence in a batch of {best.batched[0]})"
        reasons.append(f"lowest cost of {what}: {best.score_ms:.2f} ms on {best.label}")
        for other in ok[1:]:
            ratio = other.score_ms / best.score_ms  # type: ignore[operator]
            reasons.append(f"{other.label}: {other.score_ms:.2f} ms ({ratio:.2f}x)")
    else:
        best = ok[0]
        reasons.append(f"{best.label}: first runner that loaded (not measured)")
    for r in results:
        if r.error:
            reasons.append(f"{r.label} rejected: {r.error}")
    chosen = runners.pop(best.label)
    runners.clear()  # the other sessions go now, not when the plan is collected
    return GenerationPlan(best, tuple(results), tuple(reasons), prompt_tokens, new_tokens, measured), chosen
