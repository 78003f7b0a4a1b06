"""A model deployed on the cluster, as one client sees it: the handle the server's data plane calls.

Its copies come from the registry; requests go to the least-loaded live copy over that node
agent's channel. When a copy's node is lost mid-request the request is retried on another copy
(inference is idempotent; ``idempotent=False`` turns that off) or, while none is left, waits
(bounded) for the registry to re-place the model. Every request ends with outputs or an aivmm
error: nothing is dropped silently, nothing waits without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aivmm.cluster._channel import ChannelLost
from aivmm.cluster._routing import Router, Target
from aivmm.errors import ConfigError, DeviceUnhealthyError, ModelClosedError, ModelNotReadyError
from aivmm.models import ModelSpec

if TYPE_CHECKING:
    from aivmm.cluster._vmm import ClusterVMM

# A request may meet at most this many node losses before it fails (each loss is a retry elsewhere).
MAX_RETRIES = 3


class ClusterModel:
    """Thread-safe; ``execute`` from threads, ``execute_async`` from an event loop."""

    def __init__(self, owner: ClusterVMM, name: str, spec: ModelSpec, plan: Any, record: Mapping[str, Any]) -> None:
        self._owner = owner
        self.name = name
        self.spec = spec
        self.plan = plan
        self.replicas = int(record.get("replicas", 1))
        self.router = Router()
        self.idempotent = True
        self.closed = False
        self.retries = 0  # requests retried after a node loss
        self.record: dict[str, Any] = dict(record)
        self.sync(record)

    def __repr__(self) -> str:
        where = ", ".join(t.device for t in self.router.targets())
        return f"<ClusterModel {self.name!r} on {where or 'nothing'}>"

    @property
    def failure(self) -> str:
        return str(self.record.get("failure", ""))

    def sync(self, record: Mapping[str, Any]) -> None:
        """Take the registry's view of this model (its copies and their endpoints)."""
        self.record = dict(record)
        self.closed = bool(record.get("closed", False))
        targets = []
        for c in record.get("copies", ()):
            endpoint = tuple(c["endpoint"])
            targets.append(
                Target(c["node"], c["device"], c["local"], self._owner.pool(endpoint), slots=c["slots"], key=endpoint)
            )
        self.router.sync(targets, skip_nodes=self._owner.lost_nodes())

    # -- requests -------------------------------------------------------------------------------
    def _feeds(self, inputs: Any, output: str) -> dict[str, np.ndarray]:
        from aivmm.backends.tensors import validate_feeds

        if output != "numpy":  # a device tensor cannot come back from another machine
            raise ConfigError(f"model {self.name!r} runs on the cluster: output must be 'numpy', got {output!r}")
        if self.closed:
            raise ModelClosedError(f"model {self.name!r} was unloaded")
        return {k: np.asarray(v) for k, v in validate_feeds(self.spec, inputs).items()}

    def execute(
        self, inputs: Any, *, output: str = "numpy", priority: int = 0, deadline_ms: float | None = None
    ) -> dict[str, Any]:
        feeds = self._feeds(inputs, output)
        until = time.monotonic() + self._owner.replace_timeout_s
        attempts = 0
        while True:
            target = self.router.acquire()
            if target is None:
                target = self._wait_for_target(until)
            ok = False
            try:
                out = target.agent.call(
                    (self.name, target.local, feeds, priority, deadline_ms), self._owner.call_timeout_s
                )
                ok = True
                return out
            except ChannelLost as exc:
                attempts = self._lost(target, exc, attempts)
            finally:
                self.router.release(target, ok)

    async def execute_async(
        self, inputs: Any, *, output: str = "numpy", priority: int = 0, deadline_ms: float | None = None
    ) -> dict[str, Any]:
        # The channel blocks a thread per request in flight (as the agent does): run it on the
        # owner's pool, sized for the requests in flight, not on asyncio's small default one.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._owner.executor,
            lambda: self.execute(inputs, output=output, priority=priority, deadline_ms=deadline_ms),
        )

    def _wait_for_target(self, until: float) -> Target:
        """A live copy, once the registry lists one; the model's failure (or a timeout) otherwise."""
        while True:
            self._owner.refresh()
            target = self.router.acquire()
            if target is not None:
                return target
            if self.closed:
                raise ModelClosedError(f"model {self.name!r} was unloaded")
            if self.failure:  # a failed re-placement ends the wait: the request is answered with its reason
                raise ModelNotReadyError(f"model {self.name!r} has no live copy in the cluster: {self.failure}")
            if time.monotonic() >= until:
                raise ModelNotReadyError(
                    f"model {self.name!r} has no live copy in the cluster (its nodes were "
                    f"lost and re-placement did not finish in {self._owner.replace_timeout_s:g} s)"
                )
            time.sleep(0.05)

    def _lost(self, target: Target, exc: Exception, attempts: int) -> int:
        """The copy's node is gone: tell the registry, and return the attempt count to retry (or raise)."""
        self._owner.node_lost(target.node, f"request to {self.name!r}: {exc}")
        attempts += 1
        if not self.idempotent or attempts > MAX_RETRIES:
            raise DeviceUnhealthyError(
                f"model {self.name!r}: node {target.node} was lost during the request ({exc}); "
                f"{'not retried: not idempotent' if not self.idempotent else 'retries spent'}"
            ) from None
        self.retries += 1
        return attempts

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "replicas": self.replicas,
            "targets": [t.to_json() for t in self.router.targets()],
            "retries": self.retries,
            "replacements": list(self.record.get("replacements", ())),
            "failure": self.failure,
            "holders": self.record.get("holders", 0),
        }

    def close(self) -> None:
        self._owner.unload(self.name)

    def __enter__(self) -> ClusterModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
