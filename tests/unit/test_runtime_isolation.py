"""Isolation: a model in a worker process returns all of its memory when unloaded; a crashed worker
is restarted and its request retried once, or failed with a clear error - never lost."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from aivmm.backends._base import Config
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.errors import ExecutionError
from aivmm.options import DeployOptions
from aivmm.runtime import Engine, ModelState
from aivmm.runtime._toy import inputs, mlp
from aivmm.runtime._worker import WorkerSession, rss_bytes

CPU = Device("cpu:0", DeviceKind.CPU, Vendor.OTHER, "host", 2**34, 2**34, runtimes=("onnxruntime",))
WEIGHTS = 6 * (1024 * 1024 + 1024) * 4  # 24 MiB of fp32 parameters


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    return mlp(tmp_path_factory.mktemp("iso") / "heavy.onnx", width=1024, layers=6, name="heavy")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); its state says it is gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_isolated_model_returns_its_memory_and_survives_a_crash(heavy):
    import onnxruntime as ort

    x = inputs(heavy, 2, seed=1)
    want = ort.InferenceSession(heavy.source, providers=["CPUExecutionProvider"]).run(None, x)[0]
    parent_before = rss_bytes()
    with Engine([CPU]) as engine:
        h = engine.add("heavy", heavy, [(Config("onnxruntime", "cpu:0"), CPU)], DeployOptions(isolation=True))
        np.testing.assert_allclose(h.infer(x)["y"], want, rtol=1e-5, atol=1e-5)
        session = h.replicas[0].session
        assert isinstance(session, WorkerSession)
        pid = session.pid
        assert rss_bytes(pid) > WEIGHTS  # the weights live in the worker...
        assert rss_bytes() - parent_before < WEIGHTS // 2  # ...not in this process

        os.kill(pid, signal.SIGKILL)  # crash it: the next request restarts it and is retried
        np.testing.assert_allclose(h.infer(x)["y"], want, rtol=1e-5, atol=1e-5)
        assert session.restarts == 1 and session.pid != pid

        os.kill(session.pid, signal.SIGKILL)
        with pytest.raises(ExecutionError, match="not idempotent, so it was not retried"):
            h.infer(x, idempotent=False)
        assert session.restarts == 2
        np.testing.assert_allclose(h.infer(x)["y"], want, rtol=1e-5, atol=1e-5)

        last = session.pid
        engine.remove("heavy")
        assert h.state is ModelState.UNLOADED
        assert not _alive(last)  # unloading ended the process: every byte it held is back
        assert engine.ledger.used("cpu:0") == 0


def test_worker_load_error_is_reported(tmp_path):
    from aivmm.errors import ModelLoadError, UnsupportedModelError

    spec = mlp(tmp_path / "m.onnx", width=8, layers=1)
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with Engine([CPU]) as engine, pytest.raises((ModelLoadError, UnsupportedModelError, ExecutionError)):
        engine.add("m", spec, [(Config("onnxruntime", "cpu:0"), CPU)], DeployOptions(isolation=True))
