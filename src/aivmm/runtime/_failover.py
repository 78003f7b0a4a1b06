"""Failover: a device taken out of service gives its models new placements on healthy devices.

The replicas on the failed device are retired (closed in the background, memory released even if
closing fails); a model left without replicas is re-placed by ``replan`` (by default: the same
backend, or the device's first runtime, on the healthy device with the most free budget); requests
that waited on the failed device are queued again on the new replicas.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from aivmm.backends import Config
from aivmm.devices import Device
from aivmm.errors import AivmmError, DeviceUnhealthyError
from aivmm.memory import Ledger
from aivmm.models import ModelSpec
from aivmm.runtime._catalog import ModelCatalog
from aivmm.runtime._dispatch import Dispatcher
from aivmm.runtime._fleet import DeviceFleet
from aivmm.runtime._handle import ModelHandle
from aivmm.runtime._loading import ModelLoader, Placement
from aivmm.runtime._replica import Replica
from aivmm.runtime._request import settle
from aivmm.runtime._residency import ResidencyManager
from aivmm.runtime._states import ModelState

log = logging.getLogger(__name__)

Replanner = Callable[[ModelSpec, Sequence[Device], Config], Sequence[Placement]]


class Failover:
    """Takes devices out of service and moves their models (see the module docstring)."""

    def __init__(
        self,
        fleet: DeviceFleet,
        catalog: ModelCatalog,
        ledger: Ledger,
        residency: ResidencyManager,
        dispatcher: Dispatcher,
        loader: ModelLoader,
        *,
        replan: Replanner | None = None,
    ) -> None:
        self._fleet = fleet
        self._catalog = catalog
        self._ledger = ledger
        self._residency = residency
        self._dispatcher = dispatcher
        self._loader = loader
        self._replan = replan

    def device_failed(self, device_id: str, reason: str) -> None:
        """Take ``device_id`` out of service (once) and re-place the models that lived on it."""
        if not self._fleet.take_out_of_service(device_id, reason):
            return
        log.warning("device %s taken out of service: %s", device_id, reason)
        self._ledger.set_capacity(device_id, 0)
        for handle in self._catalog.handles().values():
            lost = handle.drop_replicas_on(device_id)
            if not lost:
                continue
            if not handle.replicas:
                self._replace(handle, lost[0])
            for r in lost:
                waiting = self._dispatcher.detach(r)
                threading.Thread(target=self._retire, args=(r,), daemon=True).start()
                for req in waiting:
                    try:
                        self._dispatcher.submit(handle, req)
                    except BaseException as err:
                        settle(req, error=err)

    def _retire(self, replica: Replica) -> None:
        try:
            self._residency.unload(replica, timeout_s=5.0)
        except Exception:
            log.exception("closing %s on a failed device", replica.key)
            self._ledger.release(replica.key)

    def _placements(self, handle: ModelHandle, old: Replica) -> list[Placement]:
        healthy = [self._fleet.get(i) for i in self._fleet.healthy_ids()]
        if self._replan is not None:
            return list(self._replan(handle.spec, healthy, old.config))
        for dev in sorted(healthy, key=lambda d: -self._ledger.free(d.id)):
            try:
                return [(self._fleet.config_for(dev, old.config), dev)]
            except DeviceUnhealthyError:
                continue
        return []

    def _replace(self, handle: ModelHandle, old: Replica) -> None:
        try:
            placements = self._placements(handle, old)
            if not placements:
                raise DeviceUnhealthyError("no healthy device can run it")
            base = max((r.index for r in [old, *handle.replicas]), default=0) + 1
            for i, (cfg, dev) in enumerate(placements):
                self._loader.add_replica(handle, base + i, cfg, dev)
            handle.events.append(
                f"re-placed from {old.device.id} (unhealthy) to {', '.join(c.label() for c, _ in placements)}"
            )
            handle.refresh_fast_path()
        except AivmmError as exc:
            handle.events.append(f"could not re-place after {old.device.id} failed: {exc}")
            handle.state = ModelState.FAILED
            handle.refresh_fast_path()
