"""KServe v2 ``GRPCInferenceService`` on grpc.aio, sharing the event loop and data plane with HTTP.

Handlers are registered generically from the service descriptor (no generated ``_pb2_grpc``):
each method name maps to a coroutine here, request/response classes come from the private pool.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from aivmm.errors import AivmmError, InputError, PermissionDeniedError
from aivmm.serve import _grpc_codec as codec
from aivmm.serve._dataplane import DataPlane
from aivmm.serve._errors import message_for, status_for
from aivmm.serve.proto import SERVICE, load

log = logging.getLogger(__name__)


class Servicer:
    def __init__(self, plane: DataPlane, *, token: str | None = None) -> None:
        self.plane = plane
        self.token = token
        self.pb = load()

    # -- health and metadata ----------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return self.pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self.pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.metadata(request.name, request.version)
        msg = self.pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for key in ("inputs", "outputs"):
            for tensor in meta[key]:
                getattr(msg, key).add(**tensor)
        return msg

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        from google.protobuf import json_format

        cfg = self.plane.config(request.name, request.version)
        msg = self.pb.ModelConfig()
        json_format.ParseDict(cfg, msg, ignore_unknown_fields=True)
        return self.pb.ModelConfigResponse(config=msg)

    # -- inference --------------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        req = codec.decode_request(request)
        resp = await self.plane.infer(req)
        return codec.encode_response(resp, self.pb)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        # Errors go in the stream, one per failed request, as Triton does: the stream stays open.
        async for request in requests:
            try:
                resp = await self.ModelInfer(request, context)
                yield self.pb.ModelStreamInferResponse(infer_response=resp)
            except AivmmError as exc:
                yield self.pb.ModelStreamInferResponse(
                    error_message=message_for(exc),
                    infer_response=self.pb.ModelInferResponse(id=request.id, model_name=request.model_name),
                )

    # -- repository -------------------------------------------------------------------------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        msg = self.pb.RepositoryIndexResponse()
        for row in self.plane.index(request.ready):
            msg.models.add(**row)
        return msg

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        params = {k: codec.parameter_value(v) for k, v in request.parameters.items()}
        unknown = sorted(set(params) - {"config"})
        if unknown:
            raise InputError(f"unsupported repository parameter(s) {unknown}: aivmm accepts 'config' (a JSON string)")
        config = None
        if "config" in params:
            import json

            try:
                config = json.loads(params["config"])
            except (TypeError, ValueError) as exc:
                raise InputError(f"parameters.config is not valid JSON: {exc}") from None
        await self.plane.load(request.model_name, config)
        return self.pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        await self.plane.unload(request.model_name)
        return self.pb.RepositoryModelUnloadResponse()

    def _authorize(self, context: Any) -> None:
        if self.token is None:
            return
        meta = dict(context.invocation_metadata() or ())
        scheme, _, value = str(meta.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise PermissionDeniedError("this control RPC needs metadata 'authorization: Bearer <token>'")


def _guard(fn: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    """Translate aivmm errors to gRPC statuses through the one table."""
    if streaming:
        return fn  # errors travel inside the stream

    async def call(request: Any, context: Any) -> Any:
        try:
            return await fn(request, context)
        except AivmmError as exc:
            await context.abort(getattr(grpc.StatusCode, status_for(exc).grpc), message_for(exc))
        except Exception as exc:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, message_for(exc))

    return call


def handler(servicer: Servicer) -> grpc.GenericRpcHandler:
    pb = servicer.pb
    methods = {}
    for method in pb.service.methods:
        req_cls = pb.pool.FindMessageTypeByName(method.input_type.full_name)
        resp_cls = pb.pool.FindMessageTypeByName(method.output_type.full_name)
        from google.protobuf import message_factory

        req = message_factory.GetMessageClass(req_cls)
        resp = message_factory.GetMessageClass(resp_cls)
        fn = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(
                _guard(fn, True), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )
        else:
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard(fn, False), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def create_server(
    plane: DataPlane, address: str, *, token: str | None = None, max_message_bytes: int = 64 << 20
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to ``address``; returns it and the port it got."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((handler(Servicer(plane, token=token)),))
    from aivmm.errors import ConfigError

    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...") for a busy port
        raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot listen for gRPC on {address}")
    return server, port
