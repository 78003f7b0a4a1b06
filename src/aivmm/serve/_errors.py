"""The one table from aivmm errors to HTTP status and gRPC code.

HTTP and gRPC both answer through :func:`status_for`, so a class means the same thing on both
transports. The first row whose class the error is an instance of wins: rows go from the most to
the least specific. gRPC codes are kept as names so this module needs no grpc import.
"""

from __future__ import annotations

import dataclasses

from aivmm import errors as e


class PayloadTooLargeError(e.InputError):
    """A request body or a decoded tensor larger than the server's limit.

    Kept here rather than in ``aivmm.errors``: only the transport can produce it.
    """


class ProtocolError(e.InputError):
    """A request that breaks the wire protocol (bad JSON, headers that lie about sizes)."""


@dataclasses.dataclass(frozen=True)
class Status:
    http: int
    grpc: str  # a grpc.StatusCode member name


_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (PayloadTooLargeError, Status(413, "RESOURCE_EXHAUSTED")),
    (e.PermissionDeniedError, Status(403, "PERMISSION_DENIED")),
    (e.ModelNotFoundError, Status(404, "NOT_FOUND")),
    (e.OverloadedError, Status(429, "RESOURCE_EXHAUSTED")),
    (e.DeadlineExceededError, Status(504, "DEADLINE_EXCEEDED")),
    (e.ModelNotReadyError, Status(503, "UNAVAILABLE")),
    (e.ModelClosedError, Status(503, "UNAVAILABLE")),  # unloaded between lookup and execution
    (e.InputError, Status(400, "INVALID_ARGUMENT")),
    (e.DeviceNotFoundError, Status(400, "INVALID_ARGUMENT")),  # a config pinning an unknown device
    (e.ConfigError, Status(400, "INVALID_ARGUMENT")),
    (e.ModelChangedError, Status(409, "FAILED_PRECONDITION")),
    (e.ModelError, Status(400, "INVALID_ARGUMENT")),  # not a model, unsupported operator
    (e.PlanningError, Status(400, "FAILED_PRECONDITION")),  # infeasible constraints
    (e.ModelTooLargeError, Status(400, "FAILED_PRECONDITION")),
    (e.OutOfMemoryError, Status(503, "RESOURCE_EXHAUSTED")),  # may succeed after evictions
    (e.ResourceError, Status(503, "RESOURCE_EXHAUSTED")),
    (e.DeviceUnhealthyError, Status(503, "UNAVAILABLE")),
    (e.BackendUnavailableError, Status(501, "UNIMPLEMENTED")),
    (e.ServingError, Status(500, "INTERNAL")),
    (e.AivmmError, Status(500, "INTERNAL")),
)
_INTERNAL = Status(500, "INTERNAL")


def status_for(exc: BaseException) -> Status:
    """The status for an error; anything outside the aivmm tree is an internal error."""
    for cls, status in _TABLE:
        if isinstance(exc, cls):
            return status
    return _INTERNAL


def message_for(exc: BaseException) -> str:
    """The text a client sees: the aivmm message, or the class for errors that are our bug."""
    if isinstance(exc, e.AivmmError):
        return str(exc) or type(exc).__name__
    return f"internal error ({type(exc).__name__}); see the server log"


def table() -> list[dict[str, object]]:
    """The table as data (docs/serve.md is generated from it, a test pins both)."""
    return [{"error": cls.__name__, "http": s.http, "grpc": s.grpc} for cls, s in _TABLE]
