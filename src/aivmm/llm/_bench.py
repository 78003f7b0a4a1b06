"""Closed-loop load on a DeployedLLM: N concurrent callers, TTFT / time per output token / tokens per second."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class LLMBenchResult:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttft_s: tuple[float, ...]
    tpot_s: tuple[float, ...]  # per request: (total - TTFT) / (tokens - 1)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def pct(self, values: tuple[float, ...], q: float) -> float:
        return float(np.percentile(values, q)) * 1e3 if values else float("nan")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "errors": self.errors,
        }
        for name, vals in (("ttft_ms", self.ttft_s), ("tpot_ms", self.tpot_s)):
            out[name] = {f"p{q}": round(self.pct(vals, q), 4) for q in (50, 90, 99)}
        return out


def closed_loop(
    llm: Any, concurrency: int, duration_s: float, *, prompt_tokens: int = 16, new_tokens: int = 64, seed: int = 0
) -> LLMBenchResult:
    """``concurrency`` threads each generate back to back (random prompts, EOS ignored) for ``duration_s``."""
    rng = np.random.default_rng(seed)
    vocab = llm.info.vocab_size
    prompts = [[int(t) for t in rng.integers(3, vocab, prompt_tokens)] for _ in range(64)]

    def one(prompt: list[int]) -> tuple[int, float, float]:
        g = llm.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True)
        return g.completion_tokens, g.ttft_s, g.total_s

    return _closed_loop(one, prompts, concurrency, duration_s, join_s=duration_s + 120)


def closed_loop_openai(
    base_url: str,
    model: str,
    concurrency: int,
    duration_s: float,
    *,
    prompt_tokens: int = 16,
    new_tokens: int = 64,
    vocab: int = 256,
    seed: int = 0,
) -> LLMBenchResult:
    """The same closed loop against a server's OpenAI ``/v1/completions`` with the ``openai`` client.

    Each request streams (TTFT = the first chunk); the completion tokens come from the final usage
    chunk (``stream_options.include_usage``), the prompts are token ids below ``vocab``.
    """
    try:
        import openai
    except ImportError as exc:
        from aivmm.errors import missing_extra

        raise missing_extra("openai", "dev") from exc
    client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=120)
    rng = np.random.default_rng(seed)
    prompts = [[int(t) for t in rng.integers(3, vocab, prompt_tokens)] for _ in range(64)]

    def one(prompt: list[int]) -> tuple[int, float, float]:
        t0 = time.perf_counter()
        first = 0.0
        used = 0
        stream = client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=new_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if not first and chunk.choices:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
        return used, first, time.perf_counter() - t0

    return _closed_loop(one, prompts, concurrency, duration_s, join_s=duration_s + 180)


def _closed_loop(
    one: Callable[[list[int]], tuple[int, float, float]],
    prompts: list[list[int]],
    concurrency: int,
    duration_s: float,
    *,
    join_s: float,
) -> LLMBenchResult:
    """``concurrency`` threads call ``one(prompt)`` -> (completion tokens, TTFT s, total s) back to back."""
    lock = threading.Lock()
    ttft: list[float] = []
    tpot: list[float] = []
    counts = {"tokens": 0, "requests": 0, "errors": 0}
    stop_at = time.perf_counter() + duration_s

    def worker(i: int) -> None:
        k = i
        while time.perf_counter() < stop_at:
            try:
                used, first, total = one(prompts[k % len(prompts)])
            except Exception:  # a failed request is counted, the load goes on
                with lock:
                    counts["errors"] += 1
                continue
            k += concurrency
            with lock:
                counts["tokens"] += used
                counts["requests"] += 1
                ttft.append(first)
                if used > 1:
                    tpot.append((total - first) / (used - 1))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_s)
    return LLMBenchResult(
        concurrency,
        counts["requests"],
        counts["tokens"],
        time.perf_counter() - t0,
        tuple(ttft),
        tuple(tpot),
        counts["errors"],
    )
