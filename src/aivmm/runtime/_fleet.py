"""The engine's devices: which exist, which are in service, and which backend drives each."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from aivmm.backends import Config, registry
from aivmm.devices import Device
from aivmm.errors import AivmmError, ConfigError, DeviceNotFoundError, DeviceUnhealthyError


class DeviceFleet:
    """The devices one engine places models on, and the reason each one out of service left.

    Thread-safe. A device taken out of service stays out for the engine's lifetime.
    """

    def __init__(self, devices: Sequence[Device]) -> None:
        devices = list(devices)
        if not devices:
            raise ConfigError("Engine needs at least one device")
        ids = [d.id for d in devices]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"duplicate device ids: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
        self._devices = {d.id: d for d in devices}
        self._unhealthy: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def devices(self) -> list[Device]:
        """Every device, in the order given (healthy or not)."""
        return list(self._devices.values())

    def get(self, device_id: str) -> Device:
        """The device ``device_id`` (KeyError for one the engine does not have)."""
        return self._devices[device_id]

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def healthy_ids(self) -> list[str]:
        """The ids of the devices in service, in the order given."""
        with self._lock:
            return [d for d in self._devices if d not in self._unhealthy]

    def unhealthy_reason(self, device_id: str) -> str:
        """Why ``device_id`` is out of service; "" while it serves."""
        with self._lock:
            return self._unhealthy.get(device_id, "")

    def take_out_of_service(self, device_id: str, reason: str) -> bool:
        """Record ``reason``; False when the device is unknown or already out (nothing to do)."""
        with self._lock:
            if device_id in self._unhealthy or device_id not in self._devices:
                return False
            self._unhealthy[device_id] = reason
            return True

    def check_placement(self, name: str, config: Config, device: Device) -> None:
        """Refuse a placement on a device this engine does not have, or one out of service."""
        if not isinstance(config, Config) or not isinstance(device, Device):
            raise ConfigError(f"model {name!r}: placements are (Config, Device) pairs, got {(config, device)!r}")
        if device.id not in self._devices:
            raise DeviceNotFoundError(f"model {name!r}: device {device.id} is not one of {sorted(self._devices)}")
        reason = self.unhealthy_reason(device.id)
        if reason:
            raise DeviceUnhealthyError(f"device {device.id} is out of service: {reason}")
        if config.device != device.id:
            raise ConfigError(f"model {name!r}: config {config.label()} names {config.device}, paired with {device.id}")

    @staticmethod
    def config_for(device: Device, like: Config) -> Config:
        """The same backend when it drives ``device``, else the device's first runtime that does."""
        names = [like.backend, *device.runtimes] + (["simulated"] if device.simulated else [])
        for backend_name in names:
            try:
                backend = registry.get(backend_name)
            except AivmmError:
                continue
            if backend.drives(device):
                return Config(backend_name, device.id, like.precision, dict(like.options))
        raise DeviceUnhealthyError(f"no installed backend drives {device.id} (tried {names})")
