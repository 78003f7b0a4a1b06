"""Triton's generate extension: ``POST /v2/models/NAME[/versions/V]/generate`` and ``/generate_stream``.

Request ``{"text_input": "...", "parameters": {"max_tokens": 16, "temperature": 0, ...}}`` (sampling
fields may also sit at the top level, as Triton maps top-level keys to model inputs); response
``{"model_name", "model_version", "text_output", ...}``; the stream sends one such object per
token as server-sent events. Errors are ``{"error": "..."}``, in the stream too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aivmm.errors import InputError
from aivmm.serve import _textgen as tg
from aivmm.serve._textgen import GenRequest

_SAMPLING = frozenset(
    {
        "max_tokens",
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "stop",
        "stop_token_ids",
        "seed",
        "ignore_eos",
        "logprobs",
        "stream",
    }
)
_TOP = frozenset({"id", "text_input", "parameters"})


def parse(obj: Any, stream: bool) -> tuple[GenRequest, str | None]:
    """The generation asked for and the request id to echo (or None)."""
    if not isinstance(obj, dict):
        raise InputError(f"the generate request must be a JSON object, got {tg.type_name(obj)}")
    tg.no_unknown(obj, _TOP | _SAMPLING, "generate")
    params = obj.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InputError(f"generate: 'parameters' must be an object, got {tg.type_name(params)}")
    tg.no_unknown(params, _SAMPLING, "generate: parameters")
    clash = sorted(set(params) & set(obj))
    if clash:
        raise InputError(f"generate: {clash} given both at the top level and in 'parameters'")
    fields: Mapping[str, Any] = {**{k: v for k, v in obj.items() if k in _SAMPLING}, **params}
    text = obj.get("text_input")
    if not isinstance(text, str):
        raise InputError(f"generate: 'text_input' must be a string, got {tg.type_name(text)}")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InputError(f"generate: 'id' must be a string, got {tg.type_name(rid)}")
    asked = fields.get("stream")
    if asked is not None and (not isinstance(asked, bool) or asked != stream):
        route = "generate_stream" if asked else "generate"
        raise InputError(f"generate: parameters.stream = {asked!r} does not match this route; use /{route}")
    if "max_tokens" in fields and "max_new_tokens" in fields:
        raise InputError("generate: give 'max_tokens' or 'max_new_tokens', not both")
    out: dict[str, Any] = {}
    w = "generate: "
    max_tokens = tg.integer(fields, "max_tokens" if "max_tokens" in fields else "max_new_tokens", lo=1, where=w)
    if max_tokens is not None:
        out["max_new_tokens"] = max_tokens
    for key, value in (
        ("temperature", tg.number(fields, "temperature", lo=0.0, where=w)),
        ("top_p", tg.number(fields, "top_p", lo=0.0, hi=1.0, lo_open=True, where=w)),
        ("repetition_penalty", tg.number(fields, "repetition_penalty", lo=0.0, lo_open=True, where=w)),
        ("top_k", tg.integer(fields, "top_k", lo=0, where=w)),
        ("seed", tg.integer(fields, "seed", lo=-(2**63), hi=2**64 - 1, where=w)),
        ("logprobs", tg.integer(fields, "logprobs", lo=0, hi=20, where=w)),
    ):
        if value is not None:
            out[key] = value
    stop = tg.stop_strings(fields, where=w)
    if stop:
        out["stop"] = stop
    if fields.get("stop_token_ids") is not None:
        out["stop_token_ids"] = tg.token_ids(fields["stop_token_ids"], "generate: 'stop_token_ids'")
    if tg.boolean(fields, "ignore_eos", where=w):
        out["ignore_eos"] = True
    return GenRequest(text, tuple(sorted(out.items()))), rid


def _head(model: str, version: str, rid: str | None) -> dict[str, Any]:
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if rid is not None:
        head["id"] = rid
    return head


def response(model: str, version: str, rid: str | None, gen: Any) -> dict[str, Any]:
    out = {
        **_head(model, version, rid),
        "text_output": gen.text,
        "finish_reason": tg.finish_name(gen.finish_reason),
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
    }
    if gen.logprobs is not None:
        out["output_log_probs"] = list(gen.logprobs)
    return out


def chunk(model: str, version: str, rid: str | None, ev: Any) -> dict[str, Any]:
    out = {
        **_head(model, version, rid),
        "text_output": ev.text,
        "token_id": ev.token_id,
        "finish_reason": tg.finish_name(ev.finish_reason),
    }
    if ev.logprob is not None:
        out["output_log_probs"] = [ev.logprob]
    return out
