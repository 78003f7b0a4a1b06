"""The ``simulated`` backend: a stand-in for hardware this machine lacks.

It drives every :class:`~aivmm.devices.Device` with ``simulated=True``. The numbers are real: the
model runs on ONNX Runtime's CPU provider. What is simulated is where it lives: the session charges
its footprint (weights at the configured precision plus activations) against the simulated
device's memory, refuses with :class:`~aivmm.errors.OutOfMemoryError` when that memory is full,
and can emulate the device's speed and failures from ``Device.properties``:

``simulated_latency_scale``   multiply each run's measured time (2.0 = half as fast as this CPU)
``simulated_latency_ms``      add a fixed time to each run (the added device time is serialised
                              per device: concurrent requests queue for it as on a real device)
``simulated_h2d_bytes_per_s`` time weight uploads (load and reload) as if over a bus this fast
                              (one bus per device: concurrent uploads are serialised)
``fail_after``                after this many runs on the device, every run raises DeviceError

``AIVMM_SIMULATED_FAIL="nvidia:1=3,amd:0=0"`` sets ``fail_after`` per device without editing the
simulation file. The session itself is an ``onnxruntime`` session on the host CPU, so operator coverage, error
translation and output frameworks are exactly that backend's. A precision ONNX Runtime's CPU
provider does not offer is accounted, not emulated: the arithmetic stays fp32 (said in the load
report's notes).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from aivmm.backends._base import Backend, BackendInfo, Config, Session, Support
from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import AivmmError, ConfigError, DeviceError, ExecutionError, OutOfMemoryError
from aivmm.memory import estimate
from aivmm.models import ModelSpec

FAIL_ENV = "AIVMM_SIMULATED_FAIL"

# Simulated device memory and run counts are per device, not per session: a device that fails keeps
# failing when a model is reloaded onto it, and two sessions share one device's memory.
_state_lock = threading.Lock()
_allocated: dict[str, int] = {}
_runs: dict[str, int] = {}


_busy_locks: dict[str, threading.Lock] = {}


def _busy(device_id: str) -> threading.Lock:
    with _state_lock:
        return _busy_locks.setdefault(device_id, threading.Lock())


def allocated_bytes(device_id: str) -> int:
    """Bytes simulated sessions hold on a device now (for tests and status)."""
    with _state_lock:
        return _allocated.get(device_id, 0)


def reset_device(device_id: str) -> None:
    """Forget a device's run count (a 'repaired' device in tests)."""
    with _state_lock:
        _runs.pop(device_id, None)


def _fail_after(device: Device) -> int | None:
    env = os.environ.get(FAIL_ENV, "")
    for item in env.split(","):
        dev, sep, count = item.strip().partition("=")
        if sep and dev.strip() == device.id:
            try:
                return int(count)
            except ValueError:
                raise ConfigError(f"{FAIL_ENV}: bad run count {count!r} for {dev}") from None
    value = device.properties.get("fail_after")
    return None if value is None else int(value)


def _number(device: Device, key: str, default: float) -> float:
    value = device.properties.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{device.id}: property {key} must be a non-negative number, got {value!r}")
    return float(value)


class SimulatedSession(Session):
    """An ONNX Runtime CPU session wearing the simulated device's memory, speed and failures."""

    def __init__(self, model: ModelSpec, device: Device, config: Config, inner: Session, nbytes: int) -> None:
        super().__init__(model, device, config)
        self._inner = inner
        self._nbytes = nbytes
        self._resident = True
        self._scale = _number(device, "simulated_latency_scale", 1.0)
        self._extra_s = _number(device, "simulated_latency_ms", 0.0) / 1e3

    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        if not self._resident:
            raise ExecutionError(f"{self.model.name!r} is offloaded from {self.device.id}; reload it first")
        limit = _fail_after(self.device)
        with _state_lock:
            count = _runs.get(self.device.id, 0) + 1
            _runs[self.device.id] = count
        if limit is not None and count > limit:
            raise DeviceError(f"simulated device {self.device.id} failed (run {count}, fail_after={limit})")
        start = time.perf_counter()
        out = self._inner.run(feeds, output=output)
        delay = (time.perf_counter() - start) * (self._scale - 1.0) + self._extra_s
        if delay > 0:
            # The emulated device time is serialised per device: one device runs one request at a
            # time, as a GPU's single work queue does, so concurrency cannot multiply its speed.
            with _busy(self.device.id):
                time.sleep(delay)
        return out

    def offload_to_host(self) -> bool:
        # The ORT session stays in host memory: exactly the host tier of a real device.
        with self._lock:
            if self._resident:
                self._resident = False
                _free(self.device.id, self._nbytes)
        return True

    def reload_to_device(self) -> None:
        with self._lock:
            if self._resident:
                return
            _charge(self.device, self._nbytes, self.model.name)
            self._resident = True
        _emulate_upload(self.device, self.model.parameter_bytes)

    def memory_bytes(self) -> int:
        return self._nbytes if self._resident else 0

    def _close(self) -> None:
        with self._lock:
            if self._resident:
                self._resident = False
                _free(self.device.id, self._nbytes)
        self._inner.close()


def _charge(device: Device, nbytes: int, what: str) -> None:
    with _state_lock:
        used = _allocated.get(device.id, 0)
        if used + nbytes > device.memory_total_bytes:
            raise OutOfMemoryError(
                f"simulated {device.id}: {what} needs {nbytes} bytes of memory, {device.memory_total_bytes - used}"
                f" free of {device.memory_total_bytes}"
            )
        _allocated[device.id] = used + nbytes


def _free(device_id: str, nbytes: int) -> None:
    with _state_lock:
        _allocated[device_id] = max(0, _allocated.get(device_id, 0) - nbytes)


def _emulate_upload(device: Device, nbytes: int) -> None:
    bandwidth = _number(device, "simulated_h2d_bytes_per_s", 0.0)
    if bandwidth > 0 and nbytes > 0:
        # One bus per device: concurrent uploads share its bandwidth (serialised), while compute
        # (the device-time lock) overlaps with them, as a copy engine does on a GPU.
        with _busy(device.id + "/bus"):
            time.sleep(nbytes / bandwidth)


@functools.cache
def _host() -> Device:
    """The host CPU as the inner ONNX Runtime backend sees it."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pages = 0
    return Device(
        "cpu:0",
        DeviceKind.CPU,
        Vendor.OTHER,
        "host CPU (for simulated devices)",
        pages,
        pages,
        runtimes=("onnxruntime",),
        source="simulated-host",
    )


class SimulatedBackend(Backend):
    name: ClassVar[str] = "simulated"
    extra: ClassVar[str] = "onnxruntime"

    @staticmethod
    def _ort() -> Backend:
        from aivmm.backends import registry

        return registry.get("onnxruntime")

    def available(self) -> Support:
        try:
            return self._ort().available()
        except AivmmError as exc:
            return Support.no(str(exc))

    def info(self) -> BackendInfo:
        inner = self._ort().info()
        # The options, their effects, the call overhead and the versions are the inner runtime's.
        return dataclasses.replace(
            inner,
            name=self.name,
            device_kinds=frozenset(DeviceKind),
            # Lower precisions the CPU provider lacks are accounted for memory, computed in fp32.
            precisions=frozenset({Precision.FP32, Precision.FP16, Precision.BF16}) | inner.precisions,
        )

    def versions(self) -> dict[str, str]:
        return self._ort().versions()

    def drives(self, device: Device) -> Support:
        if not device.simulated:
            return Support.no(f"{device.id} is a real device; the simulated backend drives simulated devices only")
        return Support.yes()

    def _inner_config(self, config: Config) -> tuple[Config, list[str]]:
        ort_precisions = self._ort().info().precisions
        notes = []
        precision = config.precision
        if precision not in ort_precisions:
            notes.append(f"computes in fp32; {precision.value} is accounted for memory only")
            precision = Precision.FP32
        options = {k: v for k, v in config.options.items() if k not in ("max_batch",)}
        return Config("onnxruntime", _host().id, precision, options), notes

    def _requirements(
        self, model: ModelSpec, device: Device, config: Config
    ) -> Iterator[tuple[Support, type[AivmmError]]]:
        failed = False
        for support, error in super()._requirements(model, device, config):
            failed = failed or not support
            yield support, error
        if failed:
            return
        inner, _ = self._inner_config(config)
        # Operator coverage, int8 rules and option checks are ONNX Runtime's, on the host CPU.
        for support, error in self._ort()._requirements(model, _host(), inner):
            if error is not OutOfMemoryError:
                yield support, error

    def _load(self, model: ModelSpec, device: Device, config: Config) -> Session:
        inner_config, notes = self._inner_config(config)
        batch = int(config.options.get("max_batch", 1))
        nbytes = estimate(model, config.precision, batch).total
        _charge(device, nbytes, model.name)
        try:
            inner = self._ort().load(model, _host(), inner_config)
            _emulate_upload(device, model.parameter_bytes)
        except BaseException:
            _free(device.id, nbytes)
            raise
        session = SimulatedSession(model, device, config, inner, nbytes)
        session.report = dataclasses.replace(
            inner.report,
            device_memory_bytes=nbytes,
            notes=(f"runs on ONNX Runtime CPU; memory charged to simulated {device.id}", *notes, *inner.report.notes),
        )
        return session
