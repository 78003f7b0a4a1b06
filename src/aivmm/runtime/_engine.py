"""The engine: deployed models sharing devices, as a façade over the parts that do the work.

``Engine.add`` admits a model through the memory ledger and loads its replicas (or its pipeline
stages); ``ModelHandle.infer`` serves requests - in the caller's thread when there is nothing to
schedule, otherwise through the device executor's queues with dynamic batching, priorities and
deadlines. Devices are overcommitted: a model that does not fit evicts idle ones chosen by the
cost-benefit policy and the evicted ones come back on their next request.

Each concern has its own part, reachable from here with a public face:

- ``fleet`` (:class:`DeviceFleet`): the devices, their health, which backend drives each;
- ``ledger`` (:class:`~aivmm.memory.Ledger`): bytes reserved and committed per device;
- ``residency`` (:class:`ResidencyManager`): loads, evictions between tiers, prefetch;
- ``dispatcher`` (:class:`Dispatcher`): replica choice, queues, batches, retries;
- ``loader`` (:class:`ModelLoader`): placements to replicas or pipeline stages, and back;
- ``catalog`` (:class:`ModelCatalog`): deployed models by name;
- ``failover`` (:class:`Failover`): a failed device's models re-placed on healthy ones.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.devices import Device
from aivmm.errors import ConfigError, ModelClosedError
from aivmm.memory import EvictionPolicy, Ledger, resolve_capacities
from aivmm.models import ModelSpec
from aivmm.options import DeployOptions
from aivmm.runtime._batching import BatchingConfig
from aivmm.runtime._catalog import ModelCatalog
from aivmm.runtime._dispatch import Dispatcher
from aivmm.runtime._failover import Failover, Replanner
from aivmm.runtime._fleet import DeviceFleet
from aivmm.runtime._handle import ModelHandle
from aivmm.runtime._loading import ModelLoader, Placement, open_session
from aivmm.runtime._residency import ResidencyManager, WarmSession


class Engine:
    """Many models on many devices.

    ``budgets`` maps a device id to a byte budget (``"512MiB"`` or an int); devices without one get
    their measured free memory minus ``reserve_fraction``. ``AIVMM_MEMORY_BUDGET`` sets budgets too
    (the argument wins). ``policy`` chooses eviction victims (cost-benefit by default);
    ``failure_threshold`` consecutive device errors take a device out of service; ``replan`` picks
    new placements for a model whose device failed (by default: the same backend, or the device's
    first runtime, on the healthy device with the most free budget).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        budgets: Mapping[str, int | str] | None = None,
        reserve_fraction: float = 0.1,
        policy: EvictionPolicy | None = None,
        workers_per_device: int = 1,
        failure_threshold: int = 3,
        replan: Replanner | None = None,
        work_dir: str | pathlib.Path | None = None,
    ) -> None:
        self.fleet = DeviceFleet(devices)
        if isinstance(workers_per_device, bool) or not isinstance(workers_per_device, int) or workers_per_device < 1:
            raise ConfigError(f"workers_per_device must be an int >= 1, got {workers_per_device!r}")
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        self.ledger = Ledger(resolve_capacities(self.fleet.devices, budgets, reserve_fraction=reserve_fraction))
        # The residency manager wakes the dispatcher's executors, built just after it.
        self.residency = ResidencyManager(
            self.ledger,
            open_session,
            policy=policy,
            on_resident=lambda replica: self.dispatcher.wake(replica.device.id),
        )
        self.dispatcher = Dispatcher(
            self.residency,
            workers_per_device=workers_per_device,
            failure_threshold=failure_threshold,
            on_device_failure=self.mark_unhealthy,
        )
        self.loader = ModelLoader(
            self.fleet,
            self.ledger,
            self.residency,
            self.dispatcher,
            work_dir=pathlib.Path(work_dir) if work_dir is not None else None,
        )
        self.catalog = ModelCatalog()
        self.failover = Failover(
            self.fleet, self.catalog, self.ledger, self.residency, self.dispatcher, self.loader, replan=replan
        )
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def request_observers(self) -> list[Callable[[str, float, float], None]]:
        """Called as fn(model name, queue seconds, compute seconds) for every finished request
        (append to it; metrics do)."""
        return self.dispatcher.request_observers

    # ------------------------------------------------------------------ lifecycle
    def add(
        self,
        name: str,
        spec: ModelSpec,
        placements: Sequence[Placement],
        options: DeployOptions | None = None,
        *,
        split: bool | str = "auto",
        adopt: Mapping[int, WarmSession] | None = None,
    ) -> ModelHandle:
        """Deploy ``spec`` as ``name`` and return its handle once it is READY: several placements are
        replicas; a model too large for its device is split into pipeline stages across devices
        (``split="auto"``), or over the given placements' devices in order (``split=True``).

        ``options`` is the deploy's :class:`~aivmm.DeployOptions`, passed whole: the engine reads its
        ``batching`` (a BatchingConfig or a mapping of its keys) and ``isolation``; the placements
        already say where the planner put the model.

        ``adopt`` maps a placement's index to a session already loaded with that placement's config
        (the planner's measured winner): that replica takes it, and its ledger reservation, instead
        of loading the model again. Every session given is either adopted or closed here.

        This is the engine's one entry point for loading a model (see :class:`ModelLoader`)."""
        warm = dict(adopt or {})
        try:
            return self._add(name, spec, placements, options or DeployOptions(), split=split, warm=warm)
        finally:
            for left in warm.values():  # not adopted (split, isolated, a failure): closed, memory released
                left.session.close()
                if left.ledger_key is not None:
                    self.ledger.release(left.ledger_key)

    def _add(
        self,
        name: str,
        spec: ModelSpec,
        placements: Sequence[Placement],
        options: DeployOptions,
        *,
        split: bool | str,
        warm: dict[int, WarmSession],
    ) -> ModelHandle:
        if self._closed:
            raise ModelClosedError("the engine is closed")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"model name must be a non-empty string, got {name!r}")
        if split not in (True, False, "auto"):
            raise ConfigError(f"split must be True, False or 'auto', got {split!r}")
        if not isinstance(options, DeployOptions):
            raise ConfigError(f"options must be aivmm.DeployOptions, got {type(options).__name__}")
        batching = options.batching
        if isinstance(batching, Mapping):
            batching = BatchingConfig.from_mapping(batching)
        placements = list(placements)
        self.loader.check(name, spec, placements, batching)
        handle = ModelHandle(self.dispatcher, name, spec, batching=batching, isolation=options.isolation)
        self.catalog.add(handle)
        try:
            self.loader.load(handle, placements, split=split, adopt=warm)
        except BaseException:
            self.catalog.drop(handle)
            raise
        return handle

    def remove(self, name: str, *, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Unload a model. With ``drain`` the requests already accepted finish first; requests that
        arrive from now on fail with ModelNotReadyError (then ModelNotFoundError once it is gone)."""
        handle = self.get(name)
        if not handle.start_draining():
            return
        deadline = time.monotonic() + timeout_s
        if drain:
            while time.monotonic() < deadline and handle.outstanding():
                time.sleep(0.002)
        self._discard(handle, timeout_s=max(0.0, deadline - time.monotonic()))

    def get(self, name: str) -> ModelHandle:
        """The handle of the model deployed as ``name`` (ModelNotFoundError if none)."""
        return self.catalog.get(name)

    def models(self) -> list[str]:
        """The names of the deployed models, sorted."""
        return self.catalog.names()

    def infer(self, name: str, feeds: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``self.get(name).infer(feeds, **kwargs)``."""
        return self.get(name).infer(feeds, **kwargs)

    def mark_unhealthy(self, device_id: str, reason: str) -> None:
        """Take a device out of service and re-place the models that lived on it."""
        self.failover.device_failed(device_id, reason)

    def close(self) -> None:
        """Unload every model, stop the executors and the prefetch pool; later calls do nothing."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for handle in self.catalog.handles().values():
            handle.start_draining()
            self._discard(handle)
        self.dispatcher.close()
        self.residency.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _discard(self, handle: ModelHandle, *, timeout_s: float = 5.0) -> None:
        self.loader.unload(handle, timeout_s=timeout_s)
        self.catalog.drop(handle)

    # ------------------------------------------------------------------ introspection
    def status(self) -> dict[str, Any]:
        """Per device: budget, used bytes, resident models; per model: state, residency, queue,
        batches, loads and evictions with durations."""
        devices: dict[str, Any] = {}
        for dev_id, figures in self.ledger.snapshot().items():
            reason = self.fleet.unhealthy_reason(dev_id)
            devices[dev_id] = {
                "budget_bytes": figures["capacity_bytes"],
                "used_bytes": figures["used_bytes"],
                "peak_bytes": figures["peak_bytes"],
                "free_bytes": figures["capacity_bytes"] - figures["used_bytes"],
                "healthy": not reason,
                "unhealthy_reason": reason,
                "resident": sorted(e.key for e in self.ledger.entries(dev_id)),
                "simulated": self.fleet.get(dev_id).simulated,
            }
        return {
            "devices": devices,
            "models": {name: h.stats() for name, h in self.catalog.handles().items()},
            "policy": self.residency.policy.name,
            "eviction_decisions": [
                {"reason": why, "victims": list(d.victims), "freed_bytes": d.freed_bytes, "why": list(d.reasons)}
                for why, d in list(self.residency.decisions)
            ],
        }
