"""The OpenAI-compatible wire format: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``.

Parsing turns a request body into plain values (a :class:`Completion` holding one
:class:`GenRequest` per output choice); encoding turns ``Generation`` and ``TokenEvent`` objects
back into OpenAI's response, chunk and error objects. Nothing here touches a model, so the whole
format is tested on plain data. Fields aivmm does not implement are refused unless they hold
their neutral value, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.errors import InputError
from aivmm.serve import _textgen as tg
from aivmm.serve._textgen import GenRequest, Prompt

MAX_N = 16
MAX_PROMPTS = 64

_COMMON = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "logprobs",
        # extensions vLLM popularised, passed to SamplingParams as they are
        "top_k",
        "repetition_penalty",
        "ignore_eos",
        "stop_token_ids",
    }
)
_COMPLETION_KEYS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
_CHAT_KEYS = _COMMON | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "store",
    "metadata",
    "service_tier",
    "modalities",
    "reasoning_effort",
}
_ZERO = {"presence_penalty": lambda v: v == 0, "frequency_penalty": lambda v: v == 0, "logit_bias": lambda v: v == {}}
_CHAT_UNSUPPORTED = {
    **_ZERO,
    "tools": lambda v: v == [],
    "functions": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "function_call": lambda v: v == "none",
    "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text",
    "modalities": lambda v: v == ["text"],
}


@dataclasses.dataclass(frozen=True)
class Completion:
    """A parsed request: ``choices[i]`` is the generation behind output choice ``i``."""

    model: str
    chat: bool
    choices: tuple[GenRequest, ...]
    prompt_of: tuple[int, ...]  # choice index -> prompt index (usage counts each prompt once)
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    messages: tuple[Mapping[str, Any], ...] = ()


def _body(obj: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(f"the {what} request must be a JSON object, got {tg.type_name(obj)}")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise InputError(f"the {what} request needs 'model' (a model name string; GET /v1/models lists them)")
    return obj


def _sampling(body: Mapping[str, Any], max_tokens_key: str, default_max: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    max_tokens = tg.integer(body, max_tokens_key, lo=1)
    if max_tokens is None:
        max_tokens = default_max
    if max_tokens is not None:
        out["max_new_tokens"] = max_tokens
    for key, value in (
        ("temperature", tg.number(body, "temperature", lo=0.0, hi=2.0)),
        ("top_p", tg.number(body, "top_p", lo=0.0, hi=1.0, lo_open=True)),
        ("repetition_penalty", tg.number(body, "repetition_penalty", lo=0.0, lo_open=True)),
        ("top_k", tg.integer(body, "top_k", lo=0)),
        ("seed", tg.integer(body, "seed", lo=-(2**63), hi=2**64 - 1)),
    ):
        if value is not None:
            out[key] = value
    stop = tg.stop_strings(body)
    if stop:
        out["stop"] = stop
    if body.get("stop_token_ids") is not None:
        out["stop_token_ids"] = tg.token_ids(body["stop_token_ids"], "'stop_token_ids'")
    if tg.boolean(body, "ignore_eos"):
        out["ignore_eos"] = True
    return out


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not stream:
        raise InputError("'stream_options' is only allowed with 'stream': true")
    if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
        raise InputError("'stream_options' must be an object with 'include_usage' (a boolean)")
    return tg.boolean(opts, "include_usage", where="stream_options.")


def _fan_out(
    prompts: Sequence[Prompt], n: int, sampling: Mapping[str, Any]
) -> tuple[tuple[GenRequest, ...], tuple[int, ...]]:
    choices, prompt_of = [], []
    for p, prompt in enumerate(prompts):
        for j in range(n):
            s = dict(sampling)
            if "seed" in s and n > 1:
                s["seed"] = s["seed"] + j  # the same seed n times would give n identical choices
            choices.append(GenRequest(prompt, tuple(sorted(s.items()))))
            prompt_of.append(p)
    return tuple(choices), tuple(prompt_of)


def _prompts(value: Any) -> list[Prompt]:
    """OpenAI's four prompt shapes: a string, strings, token ids, arrays of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            out: list[Prompt] = list(value)
        elif all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            out = [tg.token_ids(value, "'prompt'")]
        elif all(isinstance(p, list) for p in value):
            out = [tg.token_ids(p, f"'prompt[{i}]'") for i, p in enumerate(value)]
        else:
            raise InputError(
                "'prompt' must be a string, an array of strings, an array of token ids, "
                "or an array of arrays of token ids (one shape, not a mix)"
            )
        if len(out) > MAX_PROMPTS:
            raise InputError(f"'prompt' holds {len(out)} prompts; at most {MAX_PROMPTS} per request")
        return out
    raise InputError(f"'prompt' must be a non-empty string or array, got {tg.type_name(value)}")


def parse_completion(obj: Any) -> Completion:
    body = _body(obj, "completions")
    tg.no_unknown(body, _COMPLETION_KEYS, "/v1/completions")
    tg.unsupported(body, {**_ZERO, "suffix": lambda v: v == ""})
    if "prompt" not in body:
        raise InputError("the completions request needs 'prompt'")
    prompts = _prompts(body["prompt"])
    n = tg.integer(body, "n", lo=1, hi=MAX_N) or 1
    best_of = tg.integer(body, "best_of", lo=1)
    if best_of is not None and best_of != n:
        raise InputError(f"'best_of' = {best_of} different from 'n' = {n} is not supported by this server")
    stream = tg.boolean(body, "stream")
    logprobs = tg.integer(body, "logprobs", lo=0, hi=20)
    echo = tg.boolean(body, "echo")
    if echo and logprobs is not None:
        raise InputError("'echo' with 'logprobs' (prompt logprobs) is not supported by this server")
    sampling = _sampling(body, "max_tokens", 16)  # OpenAI's default for completions
    if logprobs is not None:
        sampling["logprobs"] = logprobs
    choices, prompt_of = _fan_out(prompts, n, sampling)
    return Completion(body["model"], False, choices, prompt_of, stream, _stream_options(body, stream), echo, logprobs)


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError(
                    f"{where}.content[{i}] must be a {{'type': 'text', 'text': ...}} part (this server takes text only)"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise InputError(f"{where}.content must be a string or an array of text parts, got {tg.type_name(content)}")


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise InputError("'messages' must be a non-empty array of {'role': ..., 'content': ...} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InputError(f"{where} must be an object, got {tg.type_name(m)}")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise InputError(f"{where}.role must be system, developer, user, assistant or tool, got {role!r}")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        out.append({"role": "system" if role == "developer" else role, "content": _content_text(content, where)})
    return tuple(out)


def parse_chat(obj: Any) -> Completion:
    body = _body(obj, "chat completions")
    tg.no_unknown(body, _CHAT_KEYS, "/v1/chat/completions")
    tg.unsupported(body, _CHAT_UNSUPPORTED)
    messages = _messages(body.get("messages"))
    n = tg.integer(body, "n", lo=1, hi=MAX_N) or 1
    stream = tg.boolean(body, "stream")
    want = tg.boolean(body, "logprobs")
    top = tg.integer(body, "top_logprobs", lo=0, hi=20)
    if top is not None and not want:
        raise InputError("'top_logprobs' needs 'logprobs': true")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    sampling = _sampling(body, key, None)
    logprobs = (top or 0) if want else None
    if logprobs is not None:
        sampling["logprobs"] = logprobs
    # The prompt is rendered by the model's chat template later; "" stands in until then.
    choices, prompt_of = _fan_out([""], n, sampling)
    return Completion(
        body["model"], True, choices, prompt_of, stream, _stream_options(body, stream), False, logprobs, messages
    )


def with_prompts(req: Completion, prompts: Sequence[Prompt]) -> Completion:
    """The request with its prompts replaced (token ids once tokenized, or the rendered chat)."""
    choices = tuple(dataclasses.replace(c, prompt=prompts[p]) for c, p in zip(req.choices, req.prompt_of, strict=True))
    return dataclasses.replace(req, choices=choices)


# -- responses -------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def model_object(name: str, created: int, context_length: int | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "aivmm"}
    if context_length is not None:
        obj["max_model_len"] = context_length
    return obj


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


TokenText = Callable[[int], str]


class Logprobs:
    """Builds OpenAI logprobs objects; ``token_text`` turns one token id into its text."""

    def __init__(self, token_text: TokenText, chat: bool) -> None:
        self.token_text = token_text
        self.chat = chat

    def _alternatives(self, top: Sequence[tuple[int, float]] | None) -> Any:
        top = top or ()
        if self.chat:
            return [self._entry(t, lp) for t, lp in top]
        out: dict[str, float] = {}
        for t, lp in top:
            out.setdefault(self.token_text(t), lp)
        return out

    def _entry(self, token: int, lp: float) -> dict[str, Any]:
        text = self.token_text(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    def build(self, ids: Sequence[int], lps: Sequence[float | None], tops: Sequence[Any], offset: int = 0) -> Any:
        if self.chat:
            content = []
            for t, lp, top in zip(ids, lps, tops, strict=True):
                entry = self._entry(t, _finite(lp))
                entry["top_logprobs"] = self._alternatives(top)
                content.append(entry)
            return {"content": content}
        texts = [self.token_text(t) for t in ids]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [_finite(lp) for lp in lps],
            "top_logprobs": [self._alternatives(top) for top in tops],
            "text_offset": offsets,
        }


def _finite(lp: float | None) -> float:
    # JSON has no -inf; OpenAI clients expect a number (the smallest float32 stands in, as others do).
    if lp is None or lp != lp or lp == float("-inf"):
        return -3.4028234663852886e38
    return float(lp)


def response(
    req: Completion,
    rid: str,
    created: int,
    gens: Sequence[Any],
    prompt_tokens: Sequence[int],
    prompt_texts: Sequence[str],
    token_text: TokenText,
) -> dict[str, Any]:
    """The non-streaming response object for ``gens[i]`` answering ``req.choices[i]``."""
    lp = Logprobs(token_text, req.chat)
    choices = []
    for i, g in enumerate(gens):
        logprobs = None
        if req.logprobs is not None and g.logprobs is not None:
            tops = g.top_logprobs if g.top_logprobs is not None else [()] * len(g.token_ids)
            logprobs = lp.build(g.token_ids, g.logprobs, tops)
        finish = tg.finish_name(g.finish_reason)
        if req.chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": g.text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            )
        else:
            text = prompt_texts[req.prompt_of[i]] + g.text if req.echo else g.text
            choices.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish})
    completion = sum(g.completion_tokens for g in gens)
    return {
        "id": rid,
        "object": "chat.completion" if req.chat else "text_completion",
        "created": created,
        "model": req.model,
        "choices": choices,
        "usage": usage(sum(prompt_tokens), completion),
    }


class ChunkEncoder:
    """Streaming chunks for one request; ``event()`` encodes one choice's TokenEvent."""

    def __init__(self, req: Completion, rid: str, token_text: TokenText, created: int | None = None) -> None:
        self.req = req
        self.rid = rid
        self.created = created if created is not None else int(time.time())
        self.object = "chat.completion.chunk" if req.chat else "text_completion"
        self.lp = Logprobs(token_text, req.chat)
        self.offsets = [0] * len(req.choices)

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": self.object,
            "created": self.created,
            "model": self.req.model,
            "choices": choices,
        }

    def opening(self, index: int, prompt_text: str = "") -> dict[str, Any] | None:
        """What a choice sends before its first token: the role (chat) or the echoed prompt."""
        if self.req.chat:
            return self._chunk(
                [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        if self.req.echo and prompt_text:
            self.offsets[index] = len(prompt_text)
            return self._chunk([{"index": index, "text": prompt_text, "logprobs": None, "finish_reason": None}])
        return None

    def event(self, index: int, ev: Any) -> dict[str, Any] | None:
        """The chunk for one TokenEvent, or None when it carries nothing to send."""
        finish = tg.finish_name(ev.finish_reason)
        logprobs = None
        if self.req.logprobs is not None and ev.logprob is not None:
            logprobs = self.lp.build([ev.token_id], [ev.logprob], [ev.top_logprobs or ()], self.offsets[index])
        if not ev.text and finish is None and logprobs is None:
            return None  # an incomplete UTF-8 character: its text comes with a later token
        self.offsets[index] += len(ev.text)
        if self.req.chat:
            delta = {"content": ev.text} if ev.text or finish is None else {}
            return self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
        return self._chunk([{"index": index, "text": ev.text, "logprobs": logprobs, "finish_reason": finish}])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage(prompt_tokens, completion_tokens)
        return chunk


# -- errors ------------------------------------------------------------------------------------
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_object(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_code(exc: BaseException) -> str | None:
    """OpenAI's error codes for the cases clients test for."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ContextLengthError" in names:
        return "context_length_exceeded"
    if "ModelNotFoundError" in names:
        return "model_not_found"
    return None
