"""Token choice from logits with numpy: greedy, temperature, top-k, top-p, repetition penalty, logprobs.

One :class:`Sampler` per request, so every request in a continuous batch keeps its own parameters
and its own seeded generator. Hand-written because the choice must run on the numpy logits the step
runner already holds, per row, without a framework round trip; the rules follow HF transformers'
logits processors (repetition penalty divides positive logits and multiplies negative ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from aivmm.llm._text import GenerationDefaults
from aivmm.llm._types import SamplingParams


class Sampler:
    __slots__ = ("_seen", "_seen_arr", "greedy", "logprobs", "penalty", "plain", "rng", "temperature", "top_k", "top_p")

    def __init__(self, params: SamplingParams, defaults: GenerationDefaults, prompt: Iterable[int]) -> None:
        sample = defaults.do_sample if params.temperature is None else params.temperature > 0
        self.temperature = float(params.temperature if params.temperature is not None else defaults.temperature)
        self.greedy = not sample or self.temperature == 0
        self.top_p = float(params.top_p if params.top_p is not None else (defaults.top_p if sample else 1.0))
        self.top_k = int(params.top_k if params.top_k is not None else (defaults.top_k if sample else 0))
        self.penalty = float(
            params.repetition_penalty if params.repetition_penalty is not None else defaults.repetition_penalty
        )
        self.logprobs = params.logprobs
        self.rng = np.random.default_rng(params.seed)
        self._seen: set[int] = set(prompt) if self.penalty != 1.0 else set()
        self._seen_arr: np.ndarray | None = None
        # plain greedy rows of a batch are chosen by one argmax over the whole batch
        self.plain = self.greedy and self.penalty == 1.0 and self.logprobs is None

    def observe(self, token: int) -> None:
        if self.penalty != 1.0 and token not in self._seen:
            self._seen.add(token)
            self._seen_arr = None

    def pick(self, row: np.ndarray) -> tuple[int, float | None, tuple[tuple[int, float], ...] | None]:
        """The next token from one row of logits, with its logprob (and alternatives) if asked."""
        x = row
        if self.penalty != 1.0 and self._seen:
            if self._seen_arr is None:
                self._seen_arr = np.fromiter(self._seen, dtype=np.int64)
            x = row.astype(np.float64)
            sel = x[self._seen_arr]
            x[self._seen_arr] = np.where(sel > 0, sel / self.penalty, sel * self.penalty)
        token = int(np.argmax(x)) if self.greedy else self._sample(np.asarray(x, dtype=np.float64))
        if self.logprobs is None:
            return token, None, None
        return token, *logprobs_of(row, token, self.logprobs)

    def _sample(self, x: np.ndarray) -> int:
        x = x / self.temperature
        v = x.shape[0]
        if 0 < self.top_k < v:
            kth = np.partition(x, v - self.top_k)[v - self.top_k]
            x = np.where(x < kth, -np.inf, x)
        p = np.exp(x - x.max())
        if self.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            sp = p[order]
            cum = np.cumsum(sp)
            # keep the smallest prefix whose mass reaches top_p (at least one token)
            keep = int(np.searchsorted(cum, self.top_p * cum[-1], side="left")) + 1
            idx = order[:keep]
            cum = np.cumsum(p[idx])
            return int(idx[min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), keep - 1)])
        cum = np.cumsum(p)
        return int(min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), v - 1))


def logprobs_of(row: np.ndarray, token: int, k: int) -> tuple[float, tuple[tuple[int, float], ...] | None]:
    """The log-softmax of ``token`` under the model's raw logits, and the ``k`` most likely tokens."""
    x = row.astype(np.float64)
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    lp = float(x[token]) - lse
    if k <= 0:
        return lp, None
    k = min(k, x.shape[0])
    top = np.argpartition(-x, k - 1)[:k]
    top = top[np.argsort(-x[top], kind="stable")]
    return lp, tuple((int(t), float(x[t]) - lse) for t in top)
