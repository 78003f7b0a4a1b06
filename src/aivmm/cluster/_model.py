"""A model deployed across the cluster: the handle the server's data plane calls.

Requests go to the least-loaded live target; inputs and outputs travel as numpy arrays through
Ray's object store. When a target's node is lost mid-request the request is retried on another
target (inference is idempotent; ``idempotent=False`` turns that off) or, while none is left,
waits (bounded) for the head to re-place the model. Every request ends with outputs or an aivmm
error: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aivmm.cluster._ray import is_node_loss, unwrap
from aivmm.cluster._routing import Router, Target
from aivmm.errors import ConfigError, DeviceUnhealthyError, ModelClosedError, ModelNotReadyError
from aivmm.models._spec import ModelSpec

if TYPE_CHECKING:
    from aivmm.cluster._vmm import ClusterVMM

# A request may meet at most this many node losses before it fails (each loss is a retry elsewhere).
MAX_RETRIES = 3


class ClusterModel:
    """Thread-safe; ``execute`` from threads, ``execute_async`` from an event loop."""

    def __init__(self, owner: ClusterVMM, name: str, spec: ModelSpec, plan: Any, replicas: int,
                 deploy_args: Mapping[str, Any]) -> None:
        self._owner = owner
        self.name = name
        self.spec = spec
        self.plan = plan
        self.replicas = replicas
        self.deploy_args = dict(deploy_args)  # how to load it again on another node
        self.router = Router()
        self.idempotent = True
        self.closed = False
        self.retries = 0  # requests retried after a node loss
        self.replacements: list[dict[str, Any]] = []  # what was re-placed where, and why
        self.failure = ""  # why the last re-placement failed, if it did
        self._changed = threading.Condition()

    def __repr__(self) -> str:
        where = ", ".join(t.device for t in self.router.targets())
        return f"<ClusterModel {self.name!r} on {where or 'nothing'}>"

    # -- placement bookkeeping (called by the owner) --------------------------------------------
    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _wait_for_target(self, until: float) -> None:
        """Block until a live target appears, the model closes, or ``until`` passes."""
        with self._changed:
            # A failed re-placement ends the wait: the request is answered with its reason at once.
            while not self.closed and not self.failure and not any(t.alive for t in self.router.targets()):
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.25))

    def _no_target_error(self) -> Exception:
        if self.closed:
            return ModelClosedError(f"model {self.name!r} was unloaded")
        why = f": {self.failure}" if self.failure else " (its nodes were lost and re-placement did not finish in time)"
        return ModelNotReadyError(f"model {self.name!r} has no live replica in the cluster{why}")

    # -- requests -------------------------------------------------------------------------------
    def _feeds(self, inputs: Any, output: str) -> dict[str, np.ndarray]:
        from aivmm.backends.tensors import validate_feeds

        if output != "numpy":  # a device tensor cannot come back from another machine
            raise ConfigError(f"model {self.name!r} runs on the cluster: output must be 'numpy', got {output!r}")
        if self.closed:
            raise ModelClosedError(f"model {self.name!r} was unloaded")
        # numpy crosses process boundaries through the object store without pickling the data.
        return {k: np.asarray(v) for k, v in validate_feeds(self.spec, inputs).items()}

    def execute(self, inputs: Any, *, output: str = "numpy", priority: int = 0,
                deadline_ms: float | None = None) -> dict[str, Any]:
        import ray

        feeds = self._feeds(inputs, output)
        until = time.monotonic() + self._owner.replace_timeout_s
        attempts = 0
        while True:
            target = self.router.acquire()
            if target is None:
                self._wait_for_target(until)
                target = self.router.acquire()
                if target is None:
                    raise self._no_target_error()
            ok = False
            try:
                out = ray.get(target.agent.infer.remote(self.name, target.local, feeds, priority, deadline_ms),
                              timeout=self._owner.call_timeout_s)
                ok = True
                return out
            except Exception as exc:
                attempts = self._failed(target, exc, attempts)
            finally:
                self.router.release(target, ok)

    async def execute_async(self, inputs: Any, *, output: str = "numpy", priority: int = 0,
                            deadline_ms: float | None = None) -> dict[str, Any]:
        feeds = self._feeds(inputs, output)
        until = time.monotonic() + self._owner.replace_timeout_s
        attempts = 0
        while True:
            target = self.router.acquire()
            if target is None:
                await asyncio.to_thread(self._wait_for_target, until)
                target = self.router.acquire()
                if target is None:
                    raise self._no_target_error()
            ok = False
            try:
                out = await target.agent.infer.remote(self.name, target.local, feeds, priority, deadline_ms)
                ok = True
                return out
            except Exception as exc:
                attempts = self._failed(target, exc, attempts)
            finally:
                self.router.release(target, ok)

    def _failed(self, target: Target, exc: Exception, attempts: int) -> int:
        """Re-raise what the request must answer with, or return the attempt count to retry."""
        if not is_node_loss(exc):
            raise unwrap(exc) from None
        self._owner.node_lost(target.node, f"request to {self.name!r} failed: {type(exc).__name__}")
        attempts += 1
        if not self.idempotent or attempts > MAX_RETRIES:
            raise DeviceUnhealthyError(
                f"model {self.name!r}: node {target.node} was lost during the request "
                f"({type(exc).__name__}); {'not retried: not idempotent' if not self.idempotent else 'retries spent'}"
            ) from None
        self.retries += 1
        return attempts

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "replicas": self.replicas,
            "targets": [t.to_json() for t in self.router.targets()],
            "retries": self.retries,
            "replacements": list(self.replacements),
            "failure": self.failure,
        }

    def close(self) -> None:
        self._owner.unload(self.name)

    def __enter__(self) -> ClusterModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
