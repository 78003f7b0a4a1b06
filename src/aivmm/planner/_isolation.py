"""The first run of a model on an accelerator, in a worker process.

A GPU kernel that fails an assertion (an index out of range in a gather, say) leaves the CUDA
context of its process unusable: every later call in that process fails, whatever it runs. So
before the planner measures candidates on a GPU in its own process, it runs one candidate once in
a worker process on the same device with the same inputs; only when that worker succeeds does
measuring go on in-process. A candidate whose worker fails is rejected with the worker's error.

The worker is a fresh interpreter (``_worker(REQUEST.json)`` in ``python -c``): a forked
child would inherit the parent's CUDA state, which CUDA does not support. It reads the model from
its file, so only file-backed models can be isolated; others are measured in-process as before
and the plan's candidate says so.

``AIVMM_ISOLATION_FAULT=abort`` makes the worker abort before running (a simulated hard failure,
for tests on machines without a GPU).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.backends import Config
from aivmm.devices import Device
from aivmm.models import ModelSpec

FAULT_ENV = "AIVMM_ISOLATION_FAULT"
# A worker imports the runtime, loads the model and runs once; compiling runners are not probed.
TIMEOUT_S = 300.0
_MAX_ERROR_CHARS = 600
# Run through -c, not -m: the package imports this module first, and runpy would warn about it.
_WORKER_MAIN = "import sys; from aivmm.planner._isolation import _worker; raise SystemExit(_worker(sys.argv[1]))"


# What a kernel fault on the device looks like in the runtimes' error text (CUDA, HIP): inputs that
# fault one candidate fault the others too, so the planner stops sending workers to that device.
_DEVICE_FAULTS = (
    "device-side assert",
    "illegal memory access",
    "misaligned address",
    "unspecified launch failure",
    "hipErrorIllegalAddress",
)


def is_device_fault(error: str) -> bool:
    return any(text in error for text in _DEVICE_FAULTS)


def model_file(spec: ModelSpec) -> pathlib.Path | None:
    src = spec.source
    if isinstance(src, str | os.PathLike) and pathlib.Path(src).is_file():
        return pathlib.Path(src)
    return None


def first_run_in_worker(
    spec: ModelSpec, device: Device, config: Config, feeds: Mapping[str, Any], *, timeout_s: float = TIMEOUT_S
) -> str | None:
    """Load ``spec`` with ``config`` on ``device`` in a worker process and run ``feeds`` once.

    Returns None when the run succeeded, else why it failed (the worker's error, or how it died).
    """
    path = model_file(spec)
    if path is None:
        raise ValueError(f"{spec.name!r} has no model file to load in a worker")
    with tempfile.TemporaryDirectory(prefix="aivmm-isolated-") as tmp:
        inputs = pathlib.Path(tmp) / "feeds.npz"
        # numpy's stub lets the **arrays fill savez's allow_pickle: bool, so an array dict is refused.
        np.savez(inputs, **{name: np.asarray(value) for name, value in feeds.items()})  # type: ignore[arg-type]
        request = pathlib.Path(tmp) / "request.json"
        request.write_text(
            json.dumps(
                {
                    "model": str(path),
                    "name": spec.name,
                    "device": device.to_json(),
                    "config": config.to_json(),
                    "feeds": str(inputs),
                }
            )
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", _WORKER_MAIN, str(request)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=os.environ.copy(),
            )
        except subprocess.TimeoutExpired:
            return f"the isolated first run did not finish within {timeout_s:.0f} s"
    if done.returncode == 0:
        return None
    reported = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if reported:
        return str(json.loads(reported[-1]).get("error", "failed"))[:_MAX_ERROR_CHARS]
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    how = f"died with signal {-done.returncode}" if done.returncode < 0 else f"exited with status {done.returncode}"
    return f"the isolated worker {how}" + (f": {tail}" if tail else "")[:_MAX_ERROR_CHARS]


def _worker(request_path: str) -> int:
    from aivmm.backends import registry
    from aivmm.models import load

    request = json.loads(pathlib.Path(request_path).read_text())
    try:
        device = Device.from_json(request["device"])
        config = Config.from_json(request["config"])
        spec = load(request["model"], name=request["name"])
        with np.load(request["feeds"]) as data:
            feeds = {name: data[name] for name in data.files}
        session = registry.get(config.backend).load(spec, device, config)
        if os.environ.get(FAULT_ENV) == "abort":
            os.abort()
        try:
            session.run(feeds)  # numpy out: the device's work has finished when it returns
        finally:
            session.close()
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 0
