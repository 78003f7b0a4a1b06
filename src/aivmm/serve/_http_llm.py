"""The HTTP handlers of the LLM routes: OpenAI ``/v1/...`` and Triton ``.../generate[_stream]``.

Each request runs as one task that is cancelled the moment the client disconnects
(:func:`_sse.cancel_on_disconnect`); cancellation reaches the model's ``astream`` and frees the
request's KV blocks. Every error that can be known before the first token (bad fields, unknown
model, prompt over the context, admission refused) is answered with its status code: the stream's
headers go out only once the first token is there, so a refused request never looks like a
hung or empty 200 stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from aivmm.errors import AivmmError, DeadlineExceededError
from aivmm.serve import _generate, _openai, _sse
from aivmm.serve import _http_codec as codec
from aivmm.serve._errors import message_for, status_for
from aivmm.serve._host import within
from aivmm.serve._textgen import GenRequest, Prompt, TextGen

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")
_JSON = [(b"content-type", b"application/json")]


async def send_json(send: Send, status: int, obj: Any, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, *extra, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    status = status_for(exc).http
    return status, _openai.error_object(status, message_for(exc), _openai.error_code(exc))


async def all_of(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result, or the first failure with the others cancelled (gather leaves them running)."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LLMRoutes:
    def __init__(self, textgen: TextGen, read_body: Callable[[Any, Receive], Awaitable[bytearray]]) -> None:
        self.textgen = textgen
        self._read_body = read_body

    async def _json(self, scope: Any, receive: Receive, what: str) -> Any:
        return codec.load_json(await self._read_body(scope, receive), what)

    # -- OpenAI ---------------------------------------------------------------------------------
    async def models(self, send: Send, model: str | None = None) -> None:
        created = int(self.textgen.plane._started)
        entries = self.textgen.models()
        if model is not None:
            entry = self.textgen.resolve(model)
            await send_json(send, 200, _openai.model_object(model, created, entry.handle.info.context_length))
            return
        data = [_openai.model_object(e.model, created, e.handle.info.context_length) for e in entries]
        await send_json(send, 200, {"object": "list", "data": data})

    async def completions(self, scope: Any, receive: Receive, send: Send, *, chat: bool) -> None:
        what = "the chat completions request" if chat else "the completions request"
        obj = await self._json(scope, receive, what)
        req = _openai.parse_chat(obj) if chat else _openai.parse_completion(obj)
        entry = self.textgen.resolve(req.model)
        llm = entry.handle
        texts: list[Prompt] = [llm.chat_prompt(req.messages)] if chat else _distinct_prompts(req)
        prompts: list[Prompt] = [tuple(llm.tokenize(t)) if isinstance(t, str) else t for t in texts]
        if req.echo:
            texts = [t if isinstance(t, str) else llm.detokenize(list(t)) for t in texts]
        req = _openai.with_prompts(req, prompts)
        self.textgen.admit(entry, len(req.choices))
        token_text = _token_texts(llm)
        rid = _openai.new_id(chat)
        if not req.stream:

            async def answer() -> None:
                gens = await self._bounded(all_of([self.textgen.generate(entry, c) for c in req.choices]), req.model)
                doc = _openai.response(
                    req,
                    rid,
                    int(time.time()),
                    gens,
                    [len(p) for p in prompts],
                    [t if isinstance(t, str) else "" for t in texts],
                    token_text,
                )
                await send_json(send, 200, doc)

            await _sse.cancel_on_disconnect(receive, answer())
            return
        enc = _openai.ChunkEncoder(req, rid, token_text)

        def encode(i: int, ev: Any) -> bytes:
            chunk = enc.event(i, ev)
            return _sse.event(chunk) if chunk is not None else b""

        def opening(i: int) -> bytes:
            text = texts[req.prompt_of[i]]
            chunk = enc.opening(i, text if isinstance(text, str) else "")
            return _sse.event(chunk) if chunk is not None else b""

        def closing(completion_tokens: int) -> bytes:
            tail = b""
            if req.include_usage:
                tail = _sse.event(enc.usage_chunk(sum(len(p) for p in prompts), completion_tokens))
            return tail + _sse.DONE

        def error(exc: BaseException) -> bytes:
            return _sse.event(openai_error(exc)[1])

        await _sse.cancel_on_disconnect(
            receive, self._stream(send, entry, req.choices, opening, encode, closing, error)
        )

    # -- Triton generate ------------------------------------------------------------------------
    async def generate(
        self, scope: Any, receive: Receive, send: Send, model: str, version: str, *, stream: bool
    ) -> None:
        obj = await self._json(scope, receive, "the generate request")
        gen_req, rid = _generate.parse(obj, stream)
        entry = self.textgen.resolve(model, version)
        v = str(entry.version)
        assert isinstance(gen_req.prompt, str)
        gen_req = GenRequest(tuple(entry.handle.tokenize(gen_req.prompt)), gen_req.sampling)
        self.textgen.admit(entry, 1)
        if not stream:

            async def answer() -> None:
                gen = await self._bounded(self.textgen.generate(entry, gen_req), model)
                await send_json(send, 200, _generate.response(model, v, rid, gen))

            await _sse.cancel_on_disconnect(receive, answer())
            return

        def encode(i: int, ev: Any) -> bytes:
            return _sse.event(_generate.chunk(model, v, rid, ev))

        def error(exc: BaseException) -> bytes:
            return _sse.event({"error": message_for(exc)})

        await _sse.cancel_on_disconnect(
            receive, self._stream(send, entry, (gen_req,), lambda i: b"", encode, lambda n: b"", error)
        )

    async def _bounded(self, work: Coroutine[Any, Any, T], model: str) -> T:
        """A whole (non-streamed) answer within the server's request timeout; streams are not cut:
        their client sees every token as it comes."""
        limit = self.textgen.plane.limits.request_timeout_s
        try:
            return await within(work, limit)
        except (asyncio.TimeoutError, TimeoutError):
            raise DeadlineExceededError(
                f"model {model!r}: the generation did not finish within the request timeout of {limit:g} s "
                "(stream it, or ask for fewer tokens)"
            ) from None

    # -- streaming --------------------------------------------------------------------------------
    async def _stream(
        self,
        send: Send,
        entry: Any,
        choices: Sequence[GenRequest],
        opening: Callable[[int], bytes],
        encode: Callable[[int, Any], bytes],
        closing: Callable[[int], bytes],
        error: Callable[[BaseException], bytes],
    ) -> None:
        """Open every choice's stream, wait for all first tokens (errors so far get a status code),
        then send events as they come; several ready events go out in one write."""
        streams = [self.textgen.stream(entry, c) for c in choices]
        try:
            firsts = await all_of([_first(s) for s in streams])
            await _sse.start(send)
            head = b"".join(opening(i) for i in range(len(streams)))
            head += b"".join(encode(i, ev) for i, ev in enumerate(firsts))
            tokens = len(streams)
            if len(streams) == 1:
                await _sse.write(send, head)
                try:
                    async for ev in streams[0]:
                        tokens += 1
                        chunk = encode(0, ev)
                        if chunk:
                            await _sse.write(send, chunk)
                except Exception as exc:  # headers are out: the error travels in the stream
                    _log_unexpected(exc)
                    await _sse.finish(send, error(exc))
                    return
                await _sse.finish(send, closing(tokens))
                return
            await _sse.write(send, head)
            ok, n = await _merge(send, streams, encode, error)
            tokens += n
            await _sse.finish(send, closing(tokens) if ok else b"")
        finally:
            for s in streams:
                with contextlib.suppress(Exception):
                    await s.aclose()


def _log_unexpected(exc: BaseException) -> None:
    if not isinstance(exc, AivmmError):  # a bug of ours: the client gets "internal error", the log the trace
        log.error("generation stream failed", exc_info=exc)


async def _first(stream: AsyncIterator[Any]) -> Any:
    return await stream.__anext__()


async def _merge(
    send: Send,
    streams: Sequence[AsyncIterator[Any]],
    encode: Callable[[int, Any], bytes],
    error: Callable[[BaseException], bytes],
) -> tuple[bool, int]:
    """Interleave several choices' events into one SSE body; (finished without error, events sent)."""
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    _end = object()

    async def pump(i: int, s: AsyncIterator[Any]) -> None:
        try:
            async for ev in s:
                queue.put_nowait((i, ev, None))
        except Exception as exc:
            _log_unexpected(exc)
            queue.put_nowait((i, _end, exc))
            return
        queue.put_nowait((i, _end, None))

    pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    open_count, sent = len(streams), 0
    try:
        while open_count:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            out = bytearray()
            for i, ev, exc in items:
                if exc is not None:
                    await _sse.write(send, bytes(out) + error(exc))
                    return False, sent
                if ev is _end:
                    open_count -= 1
                    continue
                sent += 1
                out += encode(i, ev)
            if out:
                await _sse.write(send, bytes(out))
        return True, sent
    finally:
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def _distinct_prompts(req: _openai.Completion) -> list[Prompt]:
    out: list[Prompt] = []
    for c, p in zip(req.choices, req.prompt_of, strict=True):
        if p == len(out):
            out.append(c.prompt)
    return out


def _token_texts(llm: Any) -> Callable[[int], str]:
    cache: dict[int, str] = {}

    def text(token: int) -> str:
        s = cache.get(token)
        if s is None:
            s = cache[token] = llm.detokenize([token])
        return s

    return text
