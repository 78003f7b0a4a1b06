"""The LLM wire formats on plain data: OpenAI and Triton generate parsing, response and chunk
encoding, error objects, SSE framing, and the HTTP route table (404 vs 405) through the ASGI app."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
from typing import Any

import pytest

from aivmm.errors import InputError, ModelNotFoundError, OverloadedError
from aivmm.serve import _generate, _openai, _sse
from aivmm.serve._http_llm import openai_error


@dataclasses.dataclass(frozen=True)
class Ev:  # the fields of aivmm.llm.TokenEvent the encoders read
    token_id: int
    index: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    finish_reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Gen:  # the fields of aivmm.llm.Generation the encoders read
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...] | None = None
    top_logprobs: Any = None


def text_of(t: int) -> str:
    return f"<{t}>"


# -- OpenAI completions ------------------------------------------------------------------------
def test_completion_prompt_shapes_and_fan_out() -> None:
    req = _openai.parse_completion(
        {
            "model": "m",
            "prompt": ["a", "b"],
            "n": 2,
            "seed": 7,
            "max_tokens": 5,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "x",
        }
    )
    assert [c.prompt for c in req.choices] == ["a", "a", "b", "b"] and req.prompt_of == (0, 0, 1, 1)
    kw = [c.kwargs for c in req.choices]
    assert [k["seed"] for k in kw] == [7, 8, 7, 8]  # n choices of one prompt must differ
    assert kw[0] == {"max_new_tokens": 5, "temperature": 0.5, "top_p": 0.9, "stop": ("x",), "seed": 7}
    ids = _openai.parse_completion({"model": "m", "prompt": [1, 2, 3]})
    assert [c.prompt for c in ids.choices] == [(1, 2, 3)] and ids.choices[0].kwargs == {"max_new_tokens": 16}
    many = _openai.parse_completion({"model": "m", "prompt": [[1], [2, 3]], "logprobs": 2})
    assert [c.prompt for c in many.choices] == [(1,), (2, 3)] and many.choices[0].kwargs["logprobs"] == 2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([], "must be a JSON object"),
        ({"prompt": "x"}, "needs 'model'"),
        ({"model": "m"}, "needs 'prompt'"),
        ({"model": "m", "prompt": 3}, "'prompt' must be"),
        ({"model": "m", "prompt": [1, "a"]}, "one shape"),
        ({"model": "m", "prompt": [-1]}, "non-negative"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, "'max_tokens' must be an integer, got string"),
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "'max_tokens' must be >= 1"),
        ({"model": "m", "prompt": "x", "temperature": -1}, "'temperature' must be in"),
        ({"model": "m", "prompt": "x", "top_p": 0}, "'top_p' must be in \\(0"),
        ({"model": "m", "prompt": "x", "n": 0}, "'n' must be in"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, "'stream' must be a boolean"),
        ({"model": "m", "prompt": "x", "stop": [1]}, "'stop' must be a string or an array of strings"),
        ({"model": "m", "prompt": "x", "frequency_penalty": 0.5}, "not supported"),
        ({"model": "m", "prompt": "x", "best_of": 3}, "'best_of'"),
        ({"model": "m", "prompt": "x", "echo": True, "logprobs": 1}, "'echo' with 'logprobs'"),
        ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "only allowed with 'stream'"),
        ({"model": "m", "prompt": "x", "bogus": 1}, "unrecognised field\\(s\\) \\['bogus'\\]"),
    ],
)
def test_completion_bad_fields_name_the_problem(body: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _openai.parse_completion(body)


def test_completion_response_usage_logprobs_and_echo() -> None:
    req = _openai.parse_completion({"model": "m", "prompt": [[1, 2], [3]], "n": 2, "logprobs": 1})
    gens = [
        Gen((5, 6), "<5><6>", "length", 2, 2, (-0.5, -1.0), (((5, -0.5),), ((6, -1.0),))),
        Gen((7,), "<7>", "stop", 2, 1, (-0.1,), (((7, -0.1),),)),
        Gen((8,), "<8>", "stop", 1, 1, (float("-inf"),), (((8, -0.2),),)),
        Gen((9,), "<9>", "stop", 1, 1, (-0.3,), None),
    ]
    doc = _openai.response(req, "cmpl-1", 1, gens, [2, 1], ["", ""], text_of)
    assert doc["object"] == "text_completion" and [c["index"] for c in doc["choices"]] == [0, 1, 2, 3]
    assert doc["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}  # prompts once each
    lp = doc["choices"][0]["logprobs"]
    assert lp == {
        "tokens": ["<5>", "<6>"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"<5>": -0.5}, {"<6>": -1.0}],
        "text_offset": [0, 3],
    }
    assert doc["choices"][2]["logprobs"]["token_logprobs"][0] < -1e38  # -inf is not JSON
    assert doc["choices"][3]["logprobs"]["top_logprobs"] == [{}]
    json.dumps(doc, allow_nan=False)
    echo = _openai.parse_completion({"model": "m", "prompt": "hi", "echo": True})
    out = _openai.response(echo, "c", 1, [Gen((1,), " x", "stop", 1, 1)], [1], ["hi"], text_of)
    assert out["choices"][0]["text"] == "hi x" and out["choices"][0]["logprobs"] is None


def test_completion_chunks() -> None:
    req = _openai.parse_completion(
        {"model": "m", "prompt": "p", "stream": True, "logprobs": 0, "stream_options": {"include_usage": True}}
    )
    assert req.include_usage
    enc = _openai.ChunkEncoder(req, "cmpl-1", text_of, created=5)
    assert enc.opening(0) is None
    c1 = enc.event(0, Ev(4, 0, "<4>", -0.25))
    assert c1 == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "text": "<4>",
                "finish_reason": None,
                "logprobs": {"tokens": ["<4>"], "token_logprobs": [-0.25], "top_logprobs": [{}], "text_offset": [0]},
            }
        ],
    }
    c2 = enc.event(0, Ev(5, 1, "<5>", -0.5, finish_reason="length"))
    assert c2 is not None and c2["choices"][0]["finish_reason"] == "length"
    assert c2["choices"][0]["logprobs"]["text_offset"] == [3]
    assert enc.usage_chunk(1, 2) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    plain = _openai.ChunkEncoder(_openai.parse_completion({"model": "m", "prompt": "p", "stream": True}), "c", text_of)
    assert plain.event(0, Ev(1, 0, "")) is None  # half a UTF-8 character: nothing to send yet


# -- OpenAI chat --------------------------------------------------------------------------------
def test_chat_parse() -> None:
    req = _openai.parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None},
            ],
            "max_completion_tokens": 3,
            "logprobs": True,
            "top_logprobs": 2,
            "n": 2,
            "response_format": {"type": "text"},
        }
    )
    assert req.chat and len(req.choices) == 2 and req.logprobs == 2
    assert req.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": ""},
    )
    assert req.choices[0].kwargs == {"max_new_tokens": 3, "logprobs": 2}
    assert (
        "max_new_tokens"
        not in _openai.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}).choices[0].kwargs
    )  # chat: the model's own default length


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"model": "m"}, "'messages' must be a non-empty array"),
        ({"model": "m", "messages": ["hi"]}, "messages\\[0\\] must be an object"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "role must be"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "content must be a string"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text only"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "needs 'logprobs'"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "'tools'.*not supported",
        ),
    ],
)
def test_chat_bad_fields(body: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _openai.parse_chat(body)


def test_chat_response_and_chunks() -> None:
    req = _openai.parse_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "logprobs": True,
            "top_logprobs": 1,
            "stream": True,
        }
    )
    doc = _openai.response(
        req, "chatcmpl-1", 1, [Gen((5,), "<5>", "stop", 4, 1, (-0.5,), (((5, -0.5),),))], [4], [""], text_of
    )
    choice = doc["choices"][0]
    assert doc["object"] == "chat.completion" and choice["message"] == {"role": "assistant", "content": "<5>"}
    assert choice["logprobs"] == {
        "content": [
            {
                "token": "<5>",
                "logprob": -0.5,
                "bytes": list(b"<5>"),
                "top_logprobs": [{"token": "<5>", "logprob": -0.5, "bytes": list(b"<5>")}],
            }
        ]
    }
    enc = _openai.ChunkEncoder(req, "chatcmpl-1", text_of, created=1)
    opening = enc.opening(0)
    assert opening is not None and opening["object"] == "chat.completion.chunk"
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = enc.event(0, Ev(6, 0, "", -0.1, finish_reason="stop"))
    assert last is not None and last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"


# -- errors and SSE ---------------------------------------------------------------------------
def test_openai_error_objects() -> None:
    status, body = openai_error(ModelNotFoundError("unknown model 'x'"))
    assert status == 404 and body == {
        "error": {"message": "unknown model 'x'", "type": "not_found_error", "param": None, "code": "model_not_found"}
    }
    assert openai_error(OverloadedError("full"))[0] == 429
    status, body = openai_error(ValueError("boom"))
    assert status == 500 and body["error"]["type"] == "server_error" and "boom" not in body["error"]["message"]

    class ContextLengthError(InputError):  # the llm package's class is matched by name
        pass

    assert openai_error(ContextLengthError("too long"))[1]["error"]["code"] == "context_length_exceeded"


def test_sse_events_are_one_line() -> None:
    assert _sse.event({"text": "a\nb"}) == b'data: {"text":"a\\nb"}\n\n'
    assert _sse.DONE == b"data: [DONE]\n\n"


# -- Triton generate ----------------------------------------------------------------------------
def test_generate_parse_and_encode() -> None:
    req, rid = _generate.parse(
        {"id": "r1", "text_input": "hi", "parameters": {"max_tokens": 4, "temperature": 0, "stop": ["x"]}}, stream=False
    )
    assert rid == "r1" and req.prompt == "hi"
    assert req.kwargs == {"max_new_tokens": 4, "temperature": 0.0, "stop": ("x",)}
    top, _ = _generate.parse({"text_input": "hi", "max_tokens": 2, "stream": True}, stream=True)
    assert top.kwargs == {"max_new_tokens": 2}
    out = _generate.response("m", "1", None, Gen((1, 2), "ab", "length", 3, 2))
    assert out == {
        "model_name": "m",
        "model_version": "1",
        "text_output": "ab",
        "finish_reason": "length",
        "prompt_tokens": 3,
        "completion_tokens": 2,
    }
    assert _generate.chunk("m", "1", "r", Ev(7, 0, "a"))["text_output"] == "a"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"parameters": {}}, "'text_input' must be a string"),
        ({"text_input": 1}, "'text_input' must be a string, got integer"),
        ({"text_input": "x", "parameters": []}, "'parameters' must be an object"),
        ({"text_input": "x", "parameters": {"max_tokens": 1.5}}, "'max_tokens' must be an integer"),
        ({"text_input": "x", "parameters": {"beam_width": 2}}, "unrecognised"),
        ({"text_input": "x", "parameters": {"stream": True}}, "use /generate_stream"),
        ({"text_input": "x", "max_tokens": 1, "parameters": {"max_tokens": 2}}, "both at the top level"),
    ],
)
def test_generate_bad_fields(body: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        _generate.parse(body, stream=False)


# -- the route table through the ASGI app ------------------------------------------------------
def _call(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(payload) if payload else None


@pytest.fixture
def app(tmp_path: pathlib.Path) -> Any:
    from aivmm.serve._dataplane import DataPlane
    from aivmm.serve._http import HttpApp
    from aivmm.serve._repository import Repository

    return HttpApp(DataPlane(None, Repository(tmp_path)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/models/m/generate", 405),
        ("GET", "/v2/models/m/versions/1/generate_stream", 405),
        ("POST", "/v2/models/m/generate", 404),  # route exists, the model does not
        ("POST", "/v2/models/m/bogus", 404),
        ("GET", "/v2/models/m/generate/x", 404),
        ("GET", "/v2/nothing", 404),
        ("POST", "/v2/health/live", 405),
        ("GET", "/v1/completions", 405),
        ("POST", "/v1/chat/completions/x", 404),
        ("POST", "/v1/embeddings", 404),
        ("GET", "/v1/models", 200),
        ("GET", "/metrics", 404),  # no exporter in this app
    ],
)
def test_route_table(app: Any, method: str, path: str, status: int) -> None:
    body = b'{"text_input": "x"}' if method == "POST" else b""
    got, doc = _call(app, method, path, body)
    assert got == status, doc
    if path.startswith("/v1/") and status >= 400:
        assert set(doc["error"]) == {"message", "type", "param", "code"}  # OpenAI's error object
    elif status >= 400:
        assert isinstance(doc["error"], str)


def test_openai_routes_answer_openai_errors(app: Any) -> None:
    status, doc = _call(app, "POST", "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in doc["error"]["message"]
    status, doc = _call(app, "POST", "/v1/completions", b'{"model": "ghost", "prompt": "x"}')
    assert status == 404 and doc["error"]["code"] == "model_not_found"
    assert _call(app, "GET", "/v1/models")[1] == {"object": "list", "data": []}
