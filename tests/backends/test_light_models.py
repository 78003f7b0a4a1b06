"""Every light model of the ONNX package (onnx/backend/test/data/light) loads and runs on ONNX Runtime and
OpenVINO, and OpenVINO agrees with ONNX Runtime in fp32.

The light models keep their initializers inline (no external weights to generate); they are real
architectures (AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19,
ZFNet-512) with simplified weights, at opset 9.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from _backend_models import host_cpu, random_inputs, spec_of

from aivmm.backends import Config, registry
from aivmm.backends.tensors import validate_feeds

LIGHT = sorted((pathlib.Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))
# SqueezeNet's light weights drive its logits to ~7e9: every layer agrees within 1e-5 relative (fp32
# rounding), but at that scale 1e-5 is ~7e4 absolute, so the final Softmax turns ONNX Runtime's equal logits
# into uniform 0.001 and OpenVINO's into mass on 8 classes. Ill-conditioned model, not a runtime bug: the
# output comparison is expected to fail (strict, so a change is noticed); loading and running must not.
OPENVINO_DISAGREES = {"light_squeezenet"}


def test_light_models_are_present():
    assert len(LIGHT) >= 9, f"expected the ONNX package's light models, found {[p.name for p in LIGHT]}"


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem for p in LIGHT])
def test_light_model_runs_on_onnxruntime_and_openvino(path, request):
    cpu = host_cpu()
    spec = spec_of(path)
    feeds = validate_feeds(spec, random_inputs(spec, batch=1, seed=3))
    outputs = {}
    for name in ("onnxruntime", "openvino"):
        backend = registry.get(name)
        if not backend.available():
            continue
        config = Config(name, cpu.id)
        support = backend.check(spec, cpu, config)
        assert support, f"{name} refuses {path.stem}: {support.reasons}"
        with backend.load(spec, cpu, config) as session:
            outputs[name] = session.run(feeds)
        for out in spec.outputs:
            value = outputs[name][out.name]
            assert value.dtype == out.dtype.to_numpy() and np.all(np.isfinite(value)), f"{name} {out.name}"
    assert "onnxruntime" in outputs
    if "openvino" in outputs:
        if path.stem in OPENVINO_DISAGREES:
            request.applymarker(pytest.mark.xfail(strict=True, reason="softmax of ~7e9 logits amplifies fp32 rounding"))
        for name, ref in outputs["onnxruntime"].items():
            scale = max(1.0, float(np.max(np.abs(ref))))
            np.testing.assert_allclose(outputs["openvino"][name], ref, rtol=1e-4, atol=1e-5 * scale)
