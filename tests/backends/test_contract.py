"""The contract every backend must pass: every available backend × every device it drives × models.

Reference: ONNX Runtime on the CPU in fp32 (``graph_optimization_level=disable``, so the reference is the
plain operator semantics). Tolerances, per precision the configuration computes in, compared elementwise
as ``|got - ref| <= atol * scale + rtol * |ref|`` with ``scale = max(1, max |ref|)``:

=========  ======  ======  ===================================================================
precision  rtol    atol    why
=========  ======  ======  ===================================================================
fp32       1e-4    1e-5    same arithmetic, different kernels / summation order
fp16       1e-2    1e-2    10-bit mantissa, errors accumulate over a few layers
bf16       4e-2    4e-2    7-bit mantissa
=========  ======  ======  ===================================================================

Integer outputs must match exactly. Models: this suite's own onnx.helper models and, once
``aivmm.models.zoo`` provides ``names()``, every zoo model at size "tiny".
"""

from __future__ import annotations

import concurrent.futures
import functools
import pathlib

import numpy as np
import pytest
from _backend_models import host_cpu, random_inputs, spec_of

from aivmm.backends import Config, registry
from aivmm.backends.tensors import validate_feeds
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.errors import AivmmError, BackendError, BackendUnavailableError, ModelClosedError, ModelError
from aivmm.models._spec import ModelSpec

TOLERANCE = {Precision.FP32: (1e-4, 1e-5), Precision.FP16: (1e-2, 1e-2), Precision.BF16: (4e-2, 4e-2)}
OWN_MODELS = ("one_op", "mlp", "small_cnn", "int_ops")


def _zoo_names() -> list[str]:
    try:
        from aivmm.models import zoo
    except ImportError:
        return []
    names = getattr(zoo, "names", None)
    return list(names()) if callable(names) else []


ZOO = _zoo_names()
MODELS = [f"own:{n}" for n in OWN_MODELS] + [f"zoo:{n}" for n in ZOO]


@pytest.fixture(scope="module")
def resolve(specs: dict[str, ModelSpec]):
    """model id -> (spec, sample feeds); zoo models are built once per module."""

    @functools.cache
    def get(model_id: str) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        kind, _, name = model_id.partition(":")
        if kind == "own":
            spec = specs[name]
            return spec, random_inputs(spec, batch=2, seed=7)
        from aivmm.models import zoo

        spec = spec_of(pathlib.Path(zoo.build(name, size="tiny")))
        return spec, zoo.sample_inputs(name, size="tiny", batch=1, seed=0)

    return get


_REFERENCES: dict[str, dict[str, np.ndarray]] = {}


def reference(model_id: str, spec: ModelSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime CPU fp32 outputs, unoptimised graph, computed once per model (feeds are fixed per model)."""
    if model_id not in _REFERENCES:
        cpu = host_cpu()
        config = Config("onnxruntime", cpu.id, options={"graph_optimization_level": "disable"})
        with registry.get("onnxruntime").load(spec, cpu, config) as session:
            _REFERENCES[model_id] = session.run(validate_feeds(spec, feeds))
    return _REFERENCES[model_id]


def offered(case, spec: ModelSpec) -> list[Precision]:
    backend = registry.get(case.backend)
    return [
        p
        for p in (Precision.FP32, Precision.FP16, Precision.BF16)
        if backend.check(spec, case.device, Config(case.backend, case.device.id, p))
    ]


def assert_close(got: dict, ref: dict, precision: Precision, where: str) -> None:
    rtol, atol = TOLERANCE[precision]
    assert list(got) == list(ref), f"{where}: output names/order {list(got)} != {list(ref)}"
    for name, expected in ref.items():
        actual = np.asarray(got[name])
        assert actual.shape == expected.shape, f"{where}: {name} shape {actual.shape} != {expected.shape}"
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(actual, expected, err_msg=f"{where}: {name}")
            continue
        scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
        np.testing.assert_allclose(
            actual.astype(np.float64),
            expected.astype(np.float64),
            rtol=rtol,
            atol=atol * scale,
            err_msg=f"{where}: {name} at {precision.value}",
        )


@pytest.mark.parametrize("model_id", MODELS)
def test_outputs_match_onnxruntime_cpu_fp32(case, model_id, resolve):
    spec, feeds = resolve(model_id)
    ref = reference(model_id, spec, feeds)
    precisions = offered(case, spec)
    assert Precision.FP32 in precisions or case.device.kind is DeviceKind.NPU, (
        f"{case.id} offers no fp32 for {model_id}: {precisions}"
    )
    backend = registry.get(case.backend)
    for precision in precisions:
        with backend.load(spec, case.device, Config(case.backend, case.device.id, precision)) as session:
            got = session.run(validate_feeds(spec, feeds))
        assert_close(got, ref, precision, f"{case.id} {model_id}")


@pytest.mark.parametrize("model_id", MODELS)
def test_outputs_follow_the_signature(case, model_id, resolve):
    spec, feeds = resolve(model_id)
    backend = registry.get(case.backend)
    with backend.load(spec, case.device, Config(case.backend, case.device.id)) as session:
        got = session.run(validate_feeds(spec, feeds))
    assert list(got) == [o.name for o in spec.outputs]
    for out in spec.outputs:
        array = got[out.name]
        assert isinstance(array, np.ndarray), f"{out.name}: {type(array)}"
        assert array.dtype == out.dtype.to_numpy(), f"{out.name}: {array.dtype} != {out.dtype.value}"
        assert array.ndim == out.rank
        for got_dim, want in zip(array.shape, out.shape):
            if isinstance(want, int) and want > 0:
                assert got_dim == want, f"{out.name}: shape {array.shape} vs {out.describe()}"


def test_concurrent_runs_give_serial_results(case, specs):
    spec = specs["mlp"]
    backend = registry.get(case.backend)
    batches = [random_inputs(spec, batch=1 + i % 3, seed=i) for i in range(8)]
    with backend.load(spec, case.device, Config(case.backend, case.device.id)) as session:
        serial = [session.run(validate_feeds(spec, b)) for b in batches]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            for _round in range(3):
                parallel = list(pool.map(lambda b: session.run(validate_feeds(spec, b)), batches))
                for s, p in zip(serial, parallel):
                    for name in s:
                        np.testing.assert_array_equal(s[name], p[name])


def test_run_after_close_raises(case, specs):
    spec = specs["one_op"]
    session = registry.get(case.backend).load(spec, case.device, Config(case.backend, case.device.id))
    feeds = validate_feeds(spec, random_inputs(spec))
    session.run(feeds)
    session.close()
    session.close()  # idempotent
    assert session.closed
    with pytest.raises(ModelClosedError, match="closed"):
        session.run(feeds)


def test_unrunnable_model_is_refused_by_check_and_load(case, specs):
    spec = specs["custom_op"]
    backend = registry.get(case.backend)
    config = Config(case.backend, case.device.id)
    support = backend.check(spec, case.device, config)
    assert not support
    assert any("FancyOp" in r for r in support.reasons), support.reasons
    with pytest.raises((ModelError, BackendError), match="FancyOp"):
        backend.load(spec, case.device, config)


@pytest.mark.parametrize("model_id", ["own:mlp", "own:int_ops", "own:qdq"])
@pytest.mark.parametrize("precision", list(Precision))
def test_check_agrees_with_load(case, model_id, precision, specs):
    spec = specs[model_id.partition(":")[2]]
    backend = registry.get(case.backend)
    config = Config(case.backend, case.device.id, precision)
    support = backend.check(spec, case.device, config)
    if support:
        with backend.load(spec, case.device, config) as session:
            session.run(validate_feeds(spec, random_inputs(spec)))
    else:
        assert support.reasons and all(support.reasons)
        with pytest.raises(AivmmError):
            backend.load(spec, case.device, config)


def test_device_not_driven_is_refused(case, specs):
    alien = Device("other-npu:0", DeviceKind.NPU, Vendor.OTHER, "unknown accelerator", 1 << 30, 1 << 30)
    backend = registry.get(case.backend)
    config = Config(case.backend, alien.id)
    support = backend.check(specs["one_op"], alien, config)
    assert not support and support.reasons
    with pytest.raises(BackendUnavailableError):
        backend.load(specs["one_op"], alien, config)


def test_not_enough_memory_is_refused_before_loading(case, specs):
    spec = specs["small_cnn"]
    assert spec.parameter_bytes > 64
    starved = case.device.with_(memory_free_bytes=64)
    support = registry.get(case.backend).check(spec, starved, Config(case.backend, starved.id))
    assert not support
    assert any("memory" in r for r in support.reasons), support.reasons


def test_torch_inputs_and_outputs(case, specs):
    torch = pytest.importorskip("torch")
    spec = specs["mlp"]
    feeds = random_inputs(spec)
    backend = registry.get(case.backend)
    with backend.load(spec, case.device, Config(case.backend, case.device.id)) as session:
        expected = session.run(validate_feeds(spec, feeds))
        got = session.run(validate_feeds(spec, {k: torch.from_numpy(v) for k, v in feeds.items()}), output="torch")
    for name, value in expected.items():
        assert isinstance(got[name], torch.Tensor)
        np.testing.assert_array_equal(got[name].cpu().numpy(), value)


def test_zoo_is_covered_when_it_lands():
    try:
        from aivmm.models import zoo
    except ImportError:
        pytest.skip("aivmm.models.zoo is not importable yet")
    if not callable(getattr(zoo, "names", None)):
        pytest.skip("aivmm.models.zoo has no names() yet")
    assert ZOO, "the zoo lists no models"


def test_read_only_inputs_are_accepted(case, specs):
    # Servers hand over np.frombuffer views of request bodies: read-only memory.
    spec = specs["mlp"]
    feeds = random_inputs(spec)
    frozen = {k: np.frombuffer(v.tobytes(), dtype=v.dtype).reshape(v.shape) for k, v in feeds.items()}
    assert not any(v.flags.writeable for v in frozen.values())
    backend = registry.get(case.backend)
    with backend.load(spec, case.device, Config(case.backend, case.device.id)) as session:
        expected = session.run(validate_feeds(spec, feeds))
        got = session.run(validate_feeds(spec, frozen))
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
