"""What the server needs from the VMM, as a Protocol: the seam between serving and the runtime.

``aivmm.vmm.VMM`` satisfies it; tests may pass anything else that does (a real VMM is used by
the end-to-end tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, TypeVar

from aivmm.devices import Device
from aivmm.models import ModelSpec
from aivmm.options import DeployOptions

T = TypeVar("T")


class ModelHandle(Protocol):
    spec: ModelSpec
    plan: Any

    async def execute_async(
        self, inputs: Any, *, output: str = ..., priority: int = ..., deadline_ms: float | None = ...
    ) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...


class Host(Protocol):
    @property
    def devices(self) -> Sequence[Device]: ...

    def deploy(self, model: Any, *, options: DeployOptions | None = ...) -> ModelHandle: ...

    def unload(self, name: str, *, drain: bool = ...) -> None: ...

    def status(self) -> dict[str, Any]: ...


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable`` or TimeoutError after ``seconds``.

    asyncio.timeout (3.11+) arms a timer on the current task; wait_for wraps the awaitable in a
    new task, which costs a loop iteration per request on the hot path.
    """
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable


@dataclasses.dataclass(frozen=True)
class Limits:
    """Server-side bounds: every one answers at once with an error instead of queueing forever."""

    max_body_bytes: int = 64 << 20
    max_inflight_per_model: int = 512
    request_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    max_header_bytes: int = 16 << 10
    # A client that sends its body slower than this is cut off (slowloris protection).
    body_timeout_s: float = 30.0
