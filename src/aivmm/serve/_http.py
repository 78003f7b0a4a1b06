"""KServe v2 REST as a lean ASGI application, served by uvicorn.

Why not FastAPI: the infer route must see the raw body (Triton's binary tensor extension puts
tensor bytes after a JSON header) and turn it into numpy views without copies; a framework's
request model would parse and validate the body a second time, and its middleware stack costs
more per request than the routing here. Every other route is a few lines of JSON. The app is a
plain ASGI callable, so any ASGI server can run it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aivmm.errors import AivmmError, InputError, PermissionDeniedError
from aivmm.serve import _http_codec as codec
from aivmm.serve import _openai
from aivmm.serve._dataplane import DataPlane
from aivmm.serve._errors import PayloadTooLargeError, ProtocolError, message_for, status_for
from aivmm.serve._host import within
from aivmm.serve._http_llm import LLMRoutes
from aivmm.serve._textgen import TextGen

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_MODEL = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/[a-z_]+)?$")
_REPO = re.compile(r"^/v2/repository/models/(?P<model>[^/]+)/(?P<action>load|unload)$")
_OPENAI_MODEL = re.compile(r"^/v1/models/(?P<model>[^/]+)$")
# The whole route table: a path outside it is 404 whatever the method; a known path with the
# wrong method is 405.
_MODEL_ROUTES = {
    "": "GET",
    "/ready": "GET",
    "/config": "GET",
    "/plan": "GET",
    "/infer": "POST",
    "/generate": "POST",
    "/generate_stream": "POST",
}
_ROUTES = {
    "/v2": "GET",
    "/v2/health/live": "GET",
    "/v2/health/ready": "GET",
    "/v2/repository/index": "POST",
    "/v2/repository/models": "POST",
    "/v2/aivmm/status": "GET",
    "/metrics": "GET",
    "/v1/models": "GET",
    "/v1/completions": "POST",
    "/v1/chat/completions": "POST",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApp:
    """The ASGI app. ``metrics`` renders the Prometheus text format (also served at ``/metrics``)."""

    def __init__(
        self,
        plane: DataPlane,
        *,
        token: str | None = None,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        textgen: TextGen | None = None,
    ) -> None:
        self.plane = plane
        self.token = token
        self.metrics = metrics
        self.status = status or plane.status
        self.llm = LLMRoutes(
            textgen if textgen is not None else TextGen(plane),
            lambda scope, receive: self._body(scope, receive, limit=plane.limits.max_body_bytes),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HttpError as exc:
            await self._error(scope, send, exc.status, str(exc))
        except AivmmError as exc:
            await self._error(scope, send, status_for(exc).http, message_for(exc), exc)
        except Exception as exc:  # a bug of ours: answer, log, keep serving
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            await self._error(scope, send, 500, message_for(exc))

    async def _error(
        self, scope: Scope, send: Send, status: int, message: str, exc: BaseException | None = None
    ) -> None:
        """KServe's ``{"error": msg}``, or OpenAI's error object on the ``/v1`` routes."""
        if str(scope.get("path", "")).startswith("/v1/"):
            code = _openai.error_code(exc) if exc is not None else None
            await _send_json(send, status, _openai.error_object(status, message, code))
        else:
            await _send(send, status, codec.error_body(message))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        plane = self.plane
        m = _MODEL.match(path)
        if m is not None:
            model, version, rest = m.group("model"), m.group("version") or "", m.group("rest") or ""
            if rest not in _MODEL_ROUTES:
                raise HttpError(404, f"no route {method} {path}")
            _allow(method, _MODEL_ROUTES[rest])
            if rest == "/infer":
                await self._infer(scope, receive, send, model, version)
            elif rest in ("/generate", "/generate_stream"):
                await self.llm.generate(scope, receive, send, model, version, stream=rest == "/generate_stream")
            elif rest == "":
                await _send_json(send, 200, plane.metadata(model, version))
            elif rest == "/ready":
                ready = plane.model_ready(model, version)
                await _send_json(send, 200 if ready else 400, {"name": model, "ready": ready})
            elif rest == "/config":
                await _send_json(send, 200, plane.config(model, version))
            else:
                await _send_json(send, 200, plane.plan(model, version))
            return
        if (o := _OPENAI_MODEL.match(path)) is not None:
            _allow(method, "GET")
            await self.llm.models(send, o.group("model"))
            return
        r = _REPO.match(path)
        route = "/v2/repository/models" if r is not None else "/v2" if path == "/v2/" else path
        if route not in _ROUTES or (route == "/metrics" and self.metrics is None):
            raise HttpError(404, f"no route {method} {path}")
        _allow(method, _ROUTES[route])
        if route == "/v2/health/live":
            await _send_json(send, 200 if plane.live() else 503, {"live": plane.live()})
        elif route == "/v2/health/ready":
            ready = plane.ready()
            await _send_json(send, 200 if ready else 503, {"ready": ready})
        elif route == "/v2":
            await _send_json(send, 200, plane.server_metadata())
        elif route == "/v2/repository/index":
            body = await self._body(scope, receive, limit=1 << 20)
            ready_only = False
            if body:
                req = codec.load_json(body, "the index request")
                ready_only = bool(req.get("ready", False)) if isinstance(req, dict) else False
            await _send_json(send, 200, plane.index(ready_only))
        elif r is not None:
            self._authorize(scope)
            body = await self._body(scope, receive, limit=1 << 20)
            params = _load_parameters(body) if body else {}
            if r.group("action") == "load":
                await plane.load(r.group("model"), params.get("config"))
            else:
                await plane.unload(r.group("model"))
            await _send(send, 200, b"")
        elif route == "/v2/aivmm/status":
            await _send_json(send, 200, self.status())
        elif route == "/metrics":
            assert self.metrics is not None
            payload, ctype = self.metrics()
            await _send(send, 200, payload, [(b"content-type", ctype.encode())])
        elif route == "/v1/models":
            await self.llm.models(send)
        else:
            await self.llm.completions(scope, receive, send, chat=route == "/v1/chat/completions")

    async def _infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str) -> None:
        headers = _headers(scope)
        body = await self._body(scope, receive, limit=self.plane.limits.max_body_bytes, headers=headers)
        header_length = codec.parse_header_length(headers.get("inference-header-content-length"), len(body))
        t0 = self.plane._clock()
        req = codec.decode_request(body, header_length, model, version)
        label = self.plane.metric_label(model)
        self.plane.observer.stage(label, "decode", self.plane._clock() - t0)
        resp = await self.plane.infer(req)
        t0 = self.plane._clock()
        chunks, json_length = codec.encode_response(resp)
        self.plane.observer.stage(label, "encode", self.plane._clock() - t0)
        if json_length is None:
            await _send(send, 200, chunks[0])
            return
        extra = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode()),
        ]
        await _send(send, 200, b"".join(chunks), extra)

    async def _body(
        self, scope: Scope, receive: Receive, *, limit: int, headers: dict[str, str] | None = None
    ) -> bytearray:
        headers = headers if headers is not None else _headers(scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ProtocolError(f"bad Content-Length {declared!r}")
            if int(declared) > limit:
                raise PayloadTooLargeError(f"request body of {declared} bytes is over the limit of {limit} bytes")
        try:
            body = await within(_read(receive, limit), self.plane.limits.body_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            limit_s = self.plane.limits.body_timeout_s
            raise HttpError(408, f"the request body did not arrive within {limit_s:g} s") from None
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            body = _decompress(body, encoding, limit)
        elif encoding != "identity":
            raise HttpError(415, f"unsupported Content-Encoding {encoding!r} (identity, gzip, deflate)")
        return body

    def _authorize(self, scope: Scope) -> None:
        if self.token is None:
            return
        given = _headers(scope).get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise PermissionDeniedError("this control endpoint needs 'Authorization: Bearer <token>'")


async def _read(receive: Receive, limit: int) -> bytearray:
    """The whole body in one writable buffer: tensors decoded from it are writable numpy views
    (some runtimes, OpenVINO among them, refuse read-only input arrays)."""
    body = bytearray()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            body += chunk
        if not message.get("more_body", False):
            break
    return body


def _decompress(body: bytearray, encoding: str, limit: int) -> bytearray:
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLargeError(f"decompressed body is over the limit of {limit} bytes")
    return bytearray(out)


def _load_parameters(body: bytearray) -> dict[str, Any]:
    req = codec.load_json(body, "the repository request")
    if not isinstance(req, dict):
        raise InputError("the repository request must be a JSON object")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("'parameters' must be an object")
    unknown = sorted(set(params) - {"config", "unload_dependents"})
    if unknown:
        raise InputError(f"unsupported repository parameter(s) {unknown}: aivmm accepts 'config' (a JSON string)")
    out: dict[str, Any] = {}
    if "config" in params:
        raw = params["config"]
        out["config"] = codec.load_json(raw.encode(), "parameters.config") if isinstance(raw, str) else raw
    return out


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} not allowed here (use {allowed})")


async def _send_json(send: Send, status: int, obj: Any) -> None:
    await _send(send, status, codec.dumps(obj))


async def _send(
    send: Send, status: int, body: bytes | memoryview, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    hdrs = headers if headers is not None else _JSON
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*hdrs, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
