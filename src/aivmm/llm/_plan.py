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
import threading
import time
from collections.abc import Mapping, Sequence
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
THREAD_CHOICES = {"torch": (None,)}  # the torch runner takes no thread setting: one candidate
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
    # ms per decode step at ``batched[0]`` rows run as row groups on several cores (SplitDecision)
    batched_split_ms: float | None = None

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
            "batched_split_ms": _r(self.batched_split_ms),
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
                f"; batch {self.batched[0]}: {self.batched[1]:.3f} ms/step"
                + ("" if self.batched_split_ms is None else f" ({self.batched_split_ms:.3f} split across cores)")
                + f", {self.batched_ms:.2f} ms per sequence"
                if self.batched is not None and self.batched_ms is not None
                else ""
            )
        )


@dataclasses.dataclass(frozen=True)
class SplitDecision:
    """Whether decode steps run as row groups on several cores at once, and the figures why.

    A step of at least ``min_rows`` rows runs as ``groups`` row groups concurrently, one per core,
    each on one intra-op thread (``aivmm.llm._split``); ``min_rows`` None: every step runs whole.
    ``schedulers`` > 1: that many scheduler threads, each with its own runner and share of the
    rows, step independently. ``steps`` holds what was measured on the chosen runner: (rows, ms
    per step whole, ms as row groups).
    """

    groups: int
    min_rows: int | None
    cores: int
    steps: tuple[tuple[int, float, float], ...] = ()
    pool: tuple[int, float] | None = None  # (rows, ms per step) on the runtime's own thread pool
    reason: str = ""
    schedulers: int = 1  # decode schedulers (one per core, each its own runner and share of the rows)
    scheduler_ms: float | None = None  # ms per step of all schedulers at once, ``batch`` rows in all

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "min_rows": self.min_rows,
            "cores": self.cores,
            "steps": [{"rows": b, "whole_ms": _r(w), "split_ms": _r(x)} for b, w, x in self.steps],
            "pool": None if self.pool is None else {"rows": self.pool[0], "step_ms": _r(self.pool[1])},
            "schedulers": self.schedulers,
            "scheduler_ms": _r(self.scheduler_ms),
            "reason": self.reason,
        }


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """What the deploy allows for spreading decode rows over cores: ``rows`` (split_decode_rows:
    None measured, 0 never, N row groups from N rows), ``schedulers`` (decode_schedulers: None
    measured, 1 never, K that many) and whether the runner may be copied per scheduler."""

    rows: int | None = None
    schedulers: int | None = None
    replicas_ok: bool = False


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """Which runner generates, the figures behind the choice, and why."""

    chosen: StepCost
    candidates: tuple[StepCost, ...]
    reasons: tuple[str, ...]
    prompt_tokens: int
    new_tokens: int
    measured: bool
    split: SplitDecision | None = None  # None: the runner cannot split its steps

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "reasons": list(self.reasons),
            "reference": {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens},
            "measured": self.measured,
            "split": None if self.split is None else self.split.to_json(),
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
    prefill, decode, step_n, split = sample
    alone = generation_cost(prefill, decode, prompt, new)
    if step_n is None:
        return alone
    step = step_n if split is None else min(step_n, split)
    return (alone + prefill + (new - 1) * step / batch) / 2


def generation_cost(prefill_ms: float, decode: Sequence[tuple[int, float]], prompt: int, new: int) -> float:
    """Prefill plus one decode step per further token at the past length it runs at."""
    return prefill_ms + sum(_interp(decode, prompt + t) for t in range(max(0, new - 1)))


class _Buffers:
    """KV sides and logits for measuring steps of up to ``rows`` rows and ``ctx`` tokens."""

    def __init__(self, runner: Any, layout: KVLayout, rows: int, ctx: int) -> None:
        self.sides = _Sides(layout, rows, ctx, getattr(runner, "register", None))
        for side in self.sides.bufs:
            for b in side:
                b[:] = 0
        self.logits = np.empty(max(ctx, rows) * layout.vocab_size, dtype=runner.logits_dtype)
        self.ones = np.ones(rows * (ctx + 1), dtype=np.int64)


def decode_step_ms(runner: Any, bufs: _Buffers, past: int, rows: int, n: int) -> float:
    """Median ms of ``n`` decode steps of ``rows`` rows as the scheduler runs them: a bucketed
    static past, the same buffers every step (after one step that binds)."""
    m = -(-(past + 1) // BUCKET) * BUCKET
    ids = np.ones((rows, 1), dtype=np.int64)
    pos = np.full((rows, 1), past, dtype=np.int64)
    mask = np.zeros((rows, m + 1), dtype=np.int64)
    mask[:, :past] = 1
    mask[:, m] = 1
    past_ptrs, present_ptrs = tuple(bufs.sides.ptrs[0]), tuple(bufs.sides.ptrs[1])
    times = []
    for _ in range(n + 1):
        t = time.perf_counter()
        runner.run(rows, m, 1, ids, pos, mask, past_ptrs, present_ptrs, bufs.logits)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[1:])


def _split_step_ms(runner: Any, bufs: _Buffers, past: int, rows: int, n: int, groups: int) -> float:
    """``decode_step_ms`` with the step run as ``groups`` row groups; the runner is left unsplit."""
    runner.split_rows(groups, rows)
    try:
        return decode_step_ms(runner, bufs, past, rows, n)
    finally:
        runner.split_rows(groups, None)


def measure(
    runner: Any,
    layout: KVLayout,
    *,
    prompt_tokens: int,
    past_lengths: Sequence[int],
    repeats: int = 15,
    batch: int = 1,
    split_groups: int = 1,
) -> tuple[float, tuple[tuple[int, float], ...], float | None, float | None]:
    """Median prefill ms at ``prompt_tokens``, median decode ms per step at each past length, and
    (``batch`` > 1) the decode step of ``batch`` rows at the middle past length, whole and (with
    ``split_groups`` > 1, on a runner that splits) as that many row groups at once."""
    own = getattr(runner, "measure_steps", None)
    if own is not None:  # a device-resident runner times its own store (and waits for its device)
        return (*own(prompt_tokens=prompt_tokens, past_lengths=past_lengths, repeats=repeats, batch=batch), None)
    ctx = max(prompt_tokens, *past_lengths) + BUCKET + 1
    bufs = _Buffers(runner, layout, batch, ctx)

    def once(past: int, seq: int) -> float:
        ids = np.ones((1, seq), dtype=np.int64)
        pos = np.arange(past, past + seq, dtype=np.int64).reshape(1, seq)
        mask = bufs.ones[: past + seq].reshape(1, past + seq)
        t = time.perf_counter()
        runner.run(1, past, seq, ids, pos, mask, bufs.sides.ptrs[0], bufs.sides.ptrs[1], bufs.logits)
        return (time.perf_counter() - t) * 1e3

    once(0, prompt_tokens)
    prefill = statistics.median(once(0, prompt_tokens) for _ in range(max(3, repeats // 5)))
    decode = [(past, decode_step_ms(runner, bufs, past, 1, repeats)) for past in past_lengths]
    batched = split = None
    if batch > 1:
        mid = past_lengths[len(past_lengths) // 2]
        n = max(5, repeats // 2)
        batched = decode_step_ms(runner, bufs, mid, batch, n)
        if split_groups > 1 and hasattr(runner, "split_rows"):
            split = _split_step_ms(runner, bufs, mid, batch, n, split_groups)
    return prefill, tuple(decode), batched, split


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
    cores: int = 1,
    cores_why: str = "",
    split: SplitOptions | None = None,
    runner_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[GenerationPlan, Any]:
    """The generation plan and the loaded runner it chose.

    ``options`` is the deploy's DeployOptions, passed whole: its ``backend`` pins the runner (with
    ``strict`` a runner this model lacks is a FallbackError) and ``measure=False`` takes the first
    runner that loads. ``device`` is where generation runs (the deploy resolved it). ``cores``
    (``cores_why`` says where the count comes from) is how many cores decode rows may spread over,
    ``split`` what the deploy allows for that (:class:`SplitOptions`, :func:`decide_split`).
    ``runner_kwargs[backend]`` are passed to that backend's runner (torch: device, cuda_graphs).
    """
    split = split or SplitOptions()
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
    candidates = [
        (name, threads)
        for name in names
        for threads in (THREAD_CHOICES.get(name, THREADS) if do_measure else THREADS[:1])
    ]
    for name, threads in candidates:
        t0 = time.perf_counter()
        try:
            runner = RUNNERS[name](path, layout, threads=threads, **(runner_kwargs or {}).get(name, {}))
        except AivmmError as exc:
            results.append(StepCost(name, device, "fp32", threads, error=str(exc).splitlines()[0]))
            continue
        loaded.append((name, threads, runner, time.perf_counter() - t0))
        if not do_measure:
            break
    # Rounds interleave the candidates so that load from other processes hits them alike; each
    # figure is the median over rounds.
    samples: dict[int, list[tuple[float, tuple[tuple[int, float], ...], float | None, float | None]]] = {}
    failed: dict[int, str] = {}
    pruned: set[int] = set()
    may_split = cores >= 2 and split.rows != 0 and batch >= 2
    for rnd in range(ROUNDS if do_measure else 0):
        for i, (_name, threads, runner, _load) in enumerate(loaded):
            if i in failed or (rnd and i in pruned):
                continue
            try:
                samples.setdefault(i, []).append(
                    measure(
                        runner,
                        layout,
                        prompt_tokens=prompt_tokens,
                        past_lengths=past_lengths,
                        batch=batch,
                        repeats=7,
                        # one thread per group: a runtime pool already spreads a step over the cores
                        split_groups=cores if may_split and threads == 1 else 1,
                    )
                )
            except AivmmError as exc:
                failed[i] = str(exc).splitlines()[0]
        if rnd == 0 and samples:  # a candidate far behind after one round is not measured further
            first = {i: _round_cost(g[0], prompt_tokens, new_tokens, batch) for i, g in samples.items()}
            best_first = min(first.values())
            pruned = {i for i, c in first.items() if c > PRUNE * best_first}
    for i, (name, threads, runner, load_s) in enumerate(loaded):
        prec = getattr(runner, "precision", "fp32")
        if i in failed:
            results.append(StepCost(name, device, prec, threads, load_s=load_s, error=failed[i]))
            continue
        if not do_measure:
            results.append(StepCost(name, device, prec, threads, load_s=load_s))
            runners[results[-1].label] = runner
            continue
        got = samples[i]
        prefill = statistics.median(g[0] for g in got)
        decode = tuple((past, statistics.median(g[1][j][1] for g in got)) for j, past in enumerate(past_lengths))
        steps = [g[2] for g in got if g[2] is not None]
        step_n = statistics.median(steps) if steps else None
        splits = [g[3] for g in got if g[3] is not None]
        split_n = statistics.median(splits) if splits else None
        cost = generation_cost(prefill, decode, prompt_tokens, new_tokens)
        step = step_n if step_n is None or split_n is None else min(step_n, split_n)
        per_seq = None if step is None else prefill + (new_tokens - 1) * step / batch
        batched = None if step_n is None else (batch, step_n)
        results.append(
            StepCost(name, device, prec, threads, prefill, decode, cost, batched, per_seq, load_s, None, split_n)
        )
        runners[results[-1].label] = runner
    ok = [r for r in results if r.error is None]
    if not ok:
        raise InfeasibleError("no runner can generate with this model: " + "; ".join(r.line() for r in results))
    measured = all(r.score_ms is not None for r in ok) and (len(ok) > 1 or do_measure)
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
    for _name, _threads, other, _load in loaded:  # the other sessions (and split workers) go now
        if other is not chosen and hasattr(other, "close"):
            other.close()
    runners.clear()
    note = getattr(chosen, "graphs_note", None)
    if note:
        reasons.append(note)
    decision = None
    if hasattr(chosen, "split_rows"):
        pool = next((r.batched for r in ok if r.backend == best.backend and r.threads is None and r.batched), None)
        decision = decide_split(chosen, layout, best, cores, cores_why, split, batch, past_lengths, measured, pool)
        reasons.append(decision.reason)
    plan = GenerationPlan(best, tuple(results), tuple(reasons), prompt_tokens, new_tokens, measured, decision)
    return plan, chosen


SPLIT_WIN = 0.9  # a split must measure at most this fraction of the whole step to be taken
SPLIT_ROUNDS = 3


def _concurrent_ms(runners: Sequence[Any], bufs: Sequence[_Buffers], past: int, rows: Sequence[int], n: int) -> float:
    """Wall ms per step when each runner runs ``n`` decode steps of its ``rows`` in its own thread,
    all at once (what one scheduler per core does): the time until the last one is done, over n."""
    start = threading.Barrier(len(runners))
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            start.wait(10)
            decode_step_ms(runners[k], bufs[k], past, rows[k], n)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,), name=f"aivmm-plan-split-{k}") for k in range(1, len(runners))]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    one(0)
    for t in threads:
        t.join(60)
    wall = (time.perf_counter() - t0) * 1e3
    if errors:
        raise errors[0]
    return wall / (n + 1)


def decide_split(
    runner: Any,
    layout: KVLayout,
    chosen: StepCost,
    cores: int,
    cores_why: str,
    split: SplitOptions,
    batch: int,
    past_lengths: Sequence[int],
    measured: bool,
    pool: tuple[int, float] | None,
) -> SplitDecision:
    """How decode rows use the cores, with the figures why; applies a row-group split to ``runner``
    (the deploy starts the schedulers). Three ways, measured at ``batch`` rows on the chosen runner:
    every step whole; each step as ``cores`` row groups run at once (also measured at 2, 4, 8, ...
    rows for the smallest batch that gains); or one scheduler per core, each with its own runner
    (a copy of the weights, only when ``split.replicas_ok``) and its share of the rows, stepping
    independently (no hand-off per step)."""
    groups = max(1, cores)
    where = f" ({cores_why})" if cores_why else ""
    if cores < 2:
        return SplitDecision(1, None, cores, reason=f"decode steps run whole on one scheduler: 1 core{where}")
    if batch < 2:
        return SplitDecision(groups, None, cores, reason="decode steps run whole: the decode batch holds 1 row")
    if split.schedulers is not None and split.schedulers > 1:
        k = min(split.schedulers, batch)
        return SplitDecision(
            groups,
            None,
            cores,
            schedulers=k,
            reason=f"decode rows spread over {k} schedulers, each with its own runner: decode_schedulers="
            f"{split.schedulers} (not measured)",
        )
    if split.rows is not None and split.rows > 0:
        runner.split_rows(groups, split.rows)
        n = max(groups, split.rows)
        return SplitDecision(
            groups,
            n,
            cores,
            reason=f"decode steps of >= {n} rows run as {groups} row groups on {groups} cores{where}: "
            f"split_decode_rows={split.rows} (not measured)",
        )
    if not measured:
        return SplitDecision(groups, None, cores, reason="decode steps run whole: not measured (measure=False)")
    if chosen.threads != 1:
        return SplitDecision(
            groups,
            None,
            cores,
            pool=pool,
            reason=f"decode steps run whole: {chosen.label} runs each step on the runtime's thread pool "
            "(rows are split for one-thread runners)",
        )
    try_rows = split.rows is None
    try_sched = split.replicas_ok and split.schedulers is None
    if not (try_rows or try_sched):
        why = "decode steps run whole: split_decode_rows=0, decode_schedulers=1"
        return SplitDecision(groups, None, cores, reason=why)
    sizes = sorted({*(s for s in (2, 4, 8, 16, 32, 64, 128) if groups <= s < batch), batch}) if try_rows else [batch]
    mid = past_lengths[len(past_lengths) // 2]
    ctx = mid + 2 * BUCKET + 1
    bufs = _Buffers(runner, layout, batch, ctx)
    whole: dict[int, list[float]] = {s: [] for s in sizes}
    rowsplit: dict[int, list[float]] = {s: [] for s in sizes}
    spread: list[float] = []
    clones = [runner.clone() for _ in range(groups - 1)] if try_sched else []
    shares = [batch // groups + (k < batch % groups) for k in range(groups)]
    try:
        clone_bufs = [bufs] + [_Buffers(c, layout, shares[k + 1], ctx) for k, c in enumerate(clones)]
        for _ in range(SPLIT_ROUNDS):
            for s in sizes:
                whole[s].append(decode_step_ms(runner, bufs, mid, s, 5))
                if try_rows:
                    rowsplit[s].append(_split_step_ms(runner, bufs, mid, s, 5, groups))
            if clones:
                spread.append(_concurrent_ms([runner, *clones], clone_bufs, mid, shares, 10))
    finally:
        for c in clones:
            c.close()
    steps = tuple((s, statistics.median(whole[s]), statistics.median(rowsplit[s])) for s in sizes) if try_rows else ()
    w = statistics.median(whole[batch])
    sched_ms = statistics.median(spread) if spread else None
    min_rows = None
    for s, ws, xs in reversed(steps):  # the smallest size from which every larger one gains split
        if xs > SPLIT_WIN * ws:
            break
        min_rows = s
    x = steps[-1][2] if steps else None
    figures = f"batch-{batch} step {w:.3f} ms whole"
    if x is not None:
        figures += f", {x:.3f} ms as {groups} row groups"
    if sched_ms is not None:
        figures += f", {sched_ms:.3f} ms for {' + '.join(map(str, shares))} rows on {groups} schedulers at once"
    if pool is not None:
        figures += f"; the runtime's {cores}-thread pool: {pool[1]:.3f} ms"
    if steps:
        figures += " (row groups / whole by rows: " + ", ".join(f"{b}: {xs:.3f}/{ws:.3f}" for b, ws, xs in steps) + ")"

    def made(min_rows: int | None, schedulers: int, reason: str) -> SplitDecision:
        return SplitDecision(groups, min_rows, cores, steps, pool, reason, schedulers, sched_ms)

    if sched_ms is not None and sched_ms <= SPLIT_WIN * w and (x is None or min_rows is None or sched_ms <= x):
        return made(
            None,
            groups,
            f"decode rows spread over {groups} schedulers on {groups} cores{where}, each with its own "
            f"runner and up to {shares[0]} rows: {figures}",
        )
    if min_rows is not None:
        runner.split_rows(groups, min_rows)
        return made(
            min_rows,
            1,
            f"decode steps of >= {min_rows} rows run as {groups} row groups on {groups} cores{where}: {figures}",
        )
    why = f"decode steps run whole: splitting the rows over the cores gained less than {1 - SPLIT_WIN:.0%}: {figures}"
    return made(None, 1, why)
