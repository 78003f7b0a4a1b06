"""LLM serving end to end: a real ``aivmm serve`` process with tiny real LLM exports in its
repository, driven by the official ``openai`` client (only ``base_url`` set) and by raw HTTP for
the Triton generate routes, malformed bodies, disconnects and the SSE framing. One server for
the module."""

from __future__ import annotations

import http.client
import json
import pathlib
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("onnxruntime")
import _serve_models  # noqa: E402
from _serve_process import RunningServer, running_server  # noqa: E402

MAX_INFLIGHT = 8
LONG = {"ignore_eos": True}  # extension field: generate exactly max_tokens tokens


def _copy_export(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    # A copy, not a symlink: the repository refuses files that resolve outside it.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("hf"))
    return dst


@pytest.fixture(scope="module")
def repo(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: pathlib.Path, tiny_gpt2_dir: pathlib.Path
) -> pathlib.Path:
    root = tmp_path_factory.mktemp("llm-repo")
    _copy_export(tiny_llama_dir, root / "llama")  # the export as it is: DIR/<model>/model.onnx
    _copy_export(tiny_gpt2_dir, root / "gpt2" / "1")  # versioned: DIR/<model>/<version>/model.onnx
    # aivmm's own config next to the versions; batching keys are the generator's
    (root / "gpt2" / "config.json").write_text(json.dumps({"batching": {"max_batch_size": 4, "max_waiting": 64}}))
    _serve_models.scale(root / "double.onnx", 2.0)  # not an LLM
    return root


@pytest.fixture(scope="module")
def server(repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("llm-log") / "server.err"
    args = [
        "--model-repository",
        str(repo),
        "--no-measure",
        "--grpc-port",
        "-1",
        "--max-inflight",
        str(MAX_INFLIGHT),
        "--request-timeout-s",
        "60",
    ]
    with running_server(args, log) as s:
        yield s
        assert s.proc.poll() is None, s.stderr()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Any:
    return openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: pathlib.Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_llama_dir / "tokenizer.json"))


def raw(server: RunningServer, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://{server.http}{path}", data=body, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        return status, json.loads(data) if data else {}
    except ValueError:
        return status, data


def post(server: RunningServer, path: str, obj: Any) -> tuple[int, Any]:
    return raw(server, "POST", path, json.dumps(obj).encode())


def sse(server: RunningServer, path: str, obj: Any) -> tuple[int, list[str]]:
    """Every ``data:`` payload of a streamed response, as raw text, in order."""
    conn = http.client.HTTPConnection(*server.http.split(":"), timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(obj).encode(), headers={"content-type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, [resp.read().decode()]
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        text = resp.read().decode()
    finally:
        conn.close()
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events), text
    return 200, [e.removeprefix("data: ") for e in events]


def llm_status(server: RunningServer, model: str) -> dict[str, Any]:
    status, doc = raw(server, "GET", "/v2/aivmm/status")
    assert status == 200
    return next(m["llm"] for m in doc["models"] if m["name"] == model and "llm" in m)


def wait_idle(server: RunningServer, model: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        st = llm_status(server, model)
        if st["kv_tokens_used"] == 0 and st["running"] == 0 and st["waiting"] == 0:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{model} still busy {timeout_s} s later: {st}")
        time.sleep(0.02)


# -- models, readiness ----------------------------------------------------------------------------
def test_llms_are_ready_and_listed(server: RunningServer, client: Any) -> None:
    status, index = post(server, "/v2/repository/index", {})
    assert status == 200
    states = {row["name"]: row["state"] for row in index}
    assert states == {"llama": "READY", "gpt2": "READY", "double": "READY"}, index
    assert sorted(m.id for m in client.models.list()) == ["gpt2", "llama"]  # only generators
    assert client.models.retrieve("llama").id == "llama"
    assert llm_status(server, "gpt2")["max_batch"] == 4  # from gpt2/config.json
    for route in ("", "/ready", "/config", "/plan"):  # the KServe routes answer for an LLM too
        assert raw(server, "GET", f"/v2/models/llama{route}")[0] == 200, route
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ghost")


# -- completions ------------------------------------------------------------------------------------
def test_completion_text_and_token_ids_agree(client: Any, tokenizer: Any) -> None:
    prompt = "The quick brown fox"
    a = client.completions.create(model="llama", prompt=prompt, max_tokens=8, temperature=0)
    ids = tokenizer.encode(prompt).ids
    b = client.completions.create(model="llama", prompt=ids, max_tokens=8, temperature=0)
    assert a.object == "text_completion" and a.choices[0].text == b.choices[0].text
    assert a.usage.prompt_tokens == len(ids) == b.usage.prompt_tokens
    n = a.usage.completion_tokens
    assert 1 <= n <= 8 and a.usage.total_tokens == len(ids) + n
    assert a.choices[0].finish_reason == ("length" if n == 8 else "stop")


def test_completion_lists_n_seed_logprobs(client: Any) -> None:
    ask = {
        "model": "gpt2",
        "prompt": ["Hello world", "Once upon a time"],
        "n": 2,
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 11,
        "logprobs": 2,
        "extra_body": LONG,
    }
    r = client.completions.create(**ask)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
        assert all(v <= 0 for v in lp.token_logprobs) and all(1 <= len(t) <= 2 for t in lp.top_logprobs)
        # Offsets follow the text; per-token strings may hold half a UTF-8 character (byte-level BPE).
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert r.usage.completion_tokens == 24
    again = client.completions.create(**ask)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # the seed makes sampling repeatable


def test_stop_string_cuts_the_text(client: Any) -> None:
    full = (
        client.completions.create(model="llama", prompt="Hello", max_tokens=24, temperature=0, extra_body=LONG)
        .choices[0]
        .text
    )
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = client.completions.create(
        model="llama", prompt="Hello", max_tokens=24, temperature=0, stop=[stop], extra_body=LONG
    ).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_streamed_completion_equals_the_whole(client: Any) -> None:
    whole = client.completions.create(model="llama", prompt="Once upon", max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model="llama",
            prompt="Once upon",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_choices_interleave(client: Any) -> None:
    ask = {"model": "llama", "prompt": ["Hello", "Once upon a time"], "n": 2, "max_tokens": 10, "temperature": 0}
    whole = client.completions.create(**ask)
    texts: dict[int, str] = {}
    for chunk in client.completions.create(**ask, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {c.index: c.text for c in whole.choices}


def test_sse_framing_ends_with_done(server: RunningServer) -> None:
    status, events = sse(
        server,
        "/v1/completions",
        {"model": "llama", "prompt": "Hi", "max_tokens": 3, "stream": True, "ignore_eos": True},
    )
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# -- chat --------------------------------------------------------------------------------------------
def test_chat_completion_and_stream(client: Any) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "How are you today?"}]
    r = client.chat.completions.create(
        model="llama", messages=messages, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2
    )
    msg = r.choices[0].message
    assert r.object == "chat.completion" and msg.role == "assistant"
    assert r.usage.prompt_tokens > 10  # the chat template's markup counts too
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(len(c.top_logprobs) <= 2 for c in content)
    stream = list(
        client.chat.completions.create(model="llama", messages=messages, max_tokens=10, temperature=0, stream=True)
    )
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == msg.content
    assert stream[-1].choices[0].finish_reason == r.choices[0].finish_reason


# -- Triton generate -----------------------------------------------------------------------------------
def test_triton_generate_and_stream(server: RunningServer, client: Any) -> None:
    ref = client.completions.create(model="gpt2", prompt="Hello world", max_tokens=7, temperature=0)
    body = {"text_input": "Hello world", "parameters": {"max_tokens": 7, "temperature": 0}}
    status, out = post(server, "/v2/models/gpt2/generate", body)
    assert status == 200 and out["model_name"] == "gpt2" and out["model_version"] == "1"
    assert out["text_output"] == ref.choices[0].text
    status, events = sse(server, "/v2/models/gpt2/versions/1/generate_stream", body)
    assert status == 200
    parts = [json.loads(e) for e in events]
    assert "".join(p["text_output"] for p in parts) == out["text_output"]
    assert parts[-1]["finish_reason"] == out["finish_reason"]


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server: RunningServer, client: Any) -> None:
    status, doc = raw(server, "POST", "/v1/completions", b'{"model": "llama", "prompt": ')
    assert status == 400 and "not valid JSON" in doc["error"]["message"]
    status, doc = post(server, "/v1/completions", {"model": "llama", "prompt": "x", "max_tokens": "5"})
    assert status == 400 and "'max_tokens' must be an integer" in doc["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="ghost"):
        client.completions.create(model="ghost", prompt="x")
    with pytest.raises(openai.BadRequestError, match="not a text-generation model"):
        client.completions.create(model="double", prompt="x")
    with pytest.raises(openai.BadRequestError, match="context length") as exc:
        client.completions.create(model="llama", prompt=[5] * 300, max_tokens=1)
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_new_tokens"):
        client.completions.create(model="llama", prompt="x", max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(model="llama", prompt=[10**6])
    with pytest.raises(openai.BadRequestError, match="'temperature'"):
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}], temperature=-1)
    status, doc = post(server, "/v2/models/llama/generate", {"text_input": 5})
    assert status == 400 and "'text_input' must be a string" in doc["error"]
    status, doc = post(server, "/v2/models/ghost/generate_stream", {"text_input": "x"})
    assert status == 404 and "ghost" in doc["error"]
    assert raw(server, "GET", "/v2/models/llama/generate")[0] == 405
    assert raw(server, "POST", "/v2/models/llama/generates")[0] == 404
    assert raw(server, "POST", "/v1/embeddings", b"{}")[0] == 404
    ok = client.completions.create(model="llama", prompt="still here", max_tokens=2)
    assert ok.usage.completion_tokens >= 1


# -- concurrency, disconnect, overload -------------------------------------------------------------------
def _stream_text(client: Any, prompt: str, n: int) -> str:
    return "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="llama", prompt=prompt, max_tokens=n, temperature=0, stream=True, extra_body=LONG
        )
    )


def test_concurrent_streams_share_decode_steps(server: RunningServer, client: Any) -> None:
    alone = _stream_text(client, "Hello world", 40)
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(llm_status(server, "llama")["running"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(MAX_INFLIGHT) as pool:
            texts = list(pool.map(lambda _: _stream_text(client, "Hello world", 40), range(MAX_INFLIGHT)))
    finally:
        stop.set()
        watcher.join(10)
    assert texts == [alone] * MAX_INFLIGHT  # batching changes nothing in the greedy results
    assert max(seen) >= 2, seen  # several requests were in one running batch at once
    wait_idle(server, "llama")


# The tiny model makes ~1k greedy tokens/s: sampling with top-20 logprobs and the longest
# generation the context allows keep a stream alive for about a second, long enough to be caught
# mid-generation (the server does not wait for a slow reader, so only generation time counts).
SLOW = {
    "model": "llama",
    "prompt": "Hello",
    "max_tokens": 250,
    "stream": True,
    "ignore_eos": True,
    "temperature": 1.0,
    "top_p": 0.9,
    "top_k": 50,
    "logprobs": 20,
    "repetition_penalty": 1.2,
}


def _open_stream(server: RunningServer, body: dict[str, Any]) -> tuple[socket.socket, bytes]:
    """A raw streaming request; returns the socket and what was read up to the first event."""
    payload = json.dumps(body).encode()
    host, port = server.http.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    got = b""
    while b"data: " not in got:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    return sock, got


def test_disconnect_cancels_and_frees_kv(server: RunningServer) -> None:
    wait_idle(server, "llama")
    before = llm_status(server, "llama")
    sock, head = _open_stream(server, SLOW)
    assert head.startswith(b"HTTP/1.1 200")
    # The first token can reach us a moment before the scheduler counts its row as running.
    deadline = time.monotonic() + 2.0
    while (busy := llm_status(server, "llama"))["running"] != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert busy["kv_tokens_used"] > 0 and busy["running"] == 1, busy
    sock.close()
    after = wait_idle(server, "llama", timeout_s=5.0)  # freed at once, not after 200 tokens
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completion_tokens_total"] - before["completion_tokens_total"] < SLOW["max_tokens"]


def test_overload_is_refused_at_admission(server: RunningServer, client: Any) -> None:
    wait_idle(server, "llama")
    socks = [_open_stream(server, SLOW)[0] for _ in range(MAX_INFLIGHT)]
    try:
        t0 = time.monotonic()
        with pytest.raises(openai.RateLimitError, match="in flight"):
            client.completions.create(model="llama", prompt="x", max_tokens=2, stream=True)
        status, _ = post(server, "/v2/models/llama/generate", {"text_input": "x"})
        assert status == 429 and time.monotonic() - t0 < 5.0  # answered at once, never a hung stream
    finally:
        for s in socks:
            s.close()
    wait_idle(server, "llama")
    assert client.completions.create(model="llama", prompt="x", max_tokens=2).usage.completion_tokens >= 1


# -- metrics and top ---------------------------------------------------------------------------------
def test_llm_metrics_and_top(server: RunningServer) -> None:
    status, text = raw(server, "GET", "/metrics")
    assert status == 200
    lines = text.decode().splitlines()

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    assert value('aivmm_llm_time_to_first_token_seconds_count{model="llama"}') >= 5
    assert value('aivmm_llm_time_per_output_token_seconds_count{model="llama"}') >= 5
    assert value('aivmm_llm_generated_tokens_total{model="llama"}') >= 300
    assert value('aivmm_llm_requests_total{finish_reason="cancelled",model="llama"}') >= 1
    assert value('aivmm_llm_kv_cache_capacity_tokens{model="llama"}') > 0
    assert value('aivmm_llm_kv_cache_used_tokens{model="llama"}') == 0
    assert any(line.startswith('aivmm_llm_requests_running{model="gpt2"}') for line in lines)

    from rich.console import Console

    from aivmm.telemetry._view import fetch_status, render

    first = fetch_status(f"http://{server.http}")
    console = Console(width=200, record=True)
    console.print(render(fetch_status(f"http://{server.http}"), first))
    out = console.export_text()
    assert "text generation" in out and "TTFT p50 ms" in out and "llama" in out
