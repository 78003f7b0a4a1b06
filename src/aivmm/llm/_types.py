"""The values of LLM generation: sampling parameters, token events, finished generations, statistics."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from aivmm.errors import InputError


class FinishReason(enum.Enum):
    STOP = "stop"  # an EOS id, a stop token id or a stop string
    LENGTH = "length"  # max_new_tokens or the context length reached
    CANCELLED = "cancelled"  # the caller closed the stream or cancelled the task


class KVStyle(enum.Enum):
    """How the ONNX graph takes and returns its KV cache."""

    OPTIMUM_WITH_PAST = "optimum-with-past"  # past_key_values.N.key/value in, present.N.key/value out
    OPTIMUM_MERGED = "optimum-merged"  # the same plus a use_cache_branch boolean input
    GENAI = "onnxruntime-genai"  # names read from genai_config.json
    TRANSFORMERS = "transformers"  # an HF directory run through PyTorch (a DynamicCache over aivmm's buffers)


@dataclasses.dataclass(frozen=True)
class KVLayout:
    """The KV cache a decoder graph expects: what aivmm allocates and charges per token."""

    style: KVStyle
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str  # numpy dtype name of the cache ("float32", "float16")
    context_length: int
    past_key_names: tuple[str, ...]
    past_value_names: tuple[str, ...]
    present_key_names: tuple[str, ...]
    present_value_names: tuple[str, ...]
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    position_ids: str | None = None
    use_cache_branch: str | None = None
    logits: str = "logits"
    vocab_size: int = 0
    source: str = "graph"  # where the names came from: "graph" or the genai_config.json path

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype in ("float16", "bfloat16") else 4

    @property
    def bytes_per_token(self) -> int:
        """Key plus value bytes of one token over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.itemsize

    def to_json(self) -> dict[str, Any]:
        return {
            "style": self.style.value,
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "context_length": self.context_length,
            "bytes_per_token": self.bytes_per_token,
            "vocab_size": self.vocab_size,
            "inputs": {
                "input_ids": self.input_ids,
                "attention_mask": self.attention_mask,
                "position_ids": self.position_ids,
                "use_cache_branch": self.use_cache_branch,
                "past": f"{self.past_key_names[0]} … ({self.layers} layers)",
            },
            "source": self.source,
        }

    def describe(self) -> str:
        return (
            f"{self.style.value}: {self.layers} layers, {self.kv_heads} kv heads x {self.head_dim}, "
            f"{self.dtype}, context {self.context_length}, {self.bytes_per_token} B/token"
        )


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``None`` fields take the model's generation_config.json value."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("top_k", self.top_k, 0)
        _check_int("logprobs", self.logprobs, 0)
        _check_int("seed", self.seed, None)
        if self.temperature is not None and not (_finite(self.temperature) and self.temperature >= 0):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_p is not None and not (_finite(self.top_p) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty is not None and not (
            _finite(self.repetition_penalty) and self.repetition_penalty > 0
        ):
            raise InputError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InputError(f"stop strings must be non-empty strings, got {s!r}")

    @classmethod
    def of(cls, params: SamplingParams | Mapping[str, Any] | None, kw: Mapping[str, Any]) -> SamplingParams:
        """``params`` updated with keyword overrides; unknown names are an InputError."""
        base = params if isinstance(params, SamplingParams) else cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = dict(params) if isinstance(params, Mapping) else {}
        extra.update(kw)
        unknown = sorted(set(extra) - fields)
        if unknown:
            raise InputError(f"unknown sampling parameter(s) {unknown}; known: {sorted(fields)}")
        return dataclasses.replace(base, **extra) if extra else base


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise InputError(f"{name} must be an integer{bound}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    token_id: int
    index: int  # among generated tokens, from 0
    text: str  # the new text ("" while a character is incomplete or a stop string may be starting)
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...] | None
    finish_reason: FinishReason | None  # set on the last event only


@dataclasses.dataclass(frozen=True)
class Generation:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...] | None
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] | None
    ttft_s: float
    total_s: float


@dataclasses.dataclass(frozen=True)
class LLMInfo:
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_batch: int
    has_tokenizer: bool
    has_chat_template: bool
    kv: KVLayout


@dataclasses.dataclass(frozen=True)
class LLMStats:
    running: int
    waiting: int
    kv_tokens_used: int
    kv_tokens_capacity: int
    kv_bytes_used: int
    tokens_generated_total: int
    requests_total: int
    prefix_hit_tokens_total: int = 0
