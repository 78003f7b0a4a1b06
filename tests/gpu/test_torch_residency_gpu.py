"""The torch backend's residency hooks on a real GPU: pinned upload at load, pinned host tier on eviction."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_offload_frees_device_memory_and_reload_is_bit_identical():
    torch = pytest.importorskip("torch")
    from aivmm.backends import Config, registry
    from aivmm.devices import discover
    from aivmm.models import load, zoo

    device = next(d for d in discover() if d.id == "nvidia:0")
    spec = load(zoo.build("resnet50", size="full"))
    feeds = zoo.sample_inputs("resnet50", size="full")
    with registry.get("torch").load(spec, device, Config("torch", device.id)) as session:
        assert any("pinned staging" in n for n in session.report.notes), session.report.notes
        before = session.run(feeds)["logits"]
        resident = torch.cuda.memory_allocated()
        assert session.offload_to_host() is True
        offloaded = torch.cuda.memory_allocated()
        assert resident - offloaded >= 0.9 * spec.parameter_bytes, (resident, offloaded, spec.parameter_bytes)
        session.reload_to_device()
        np.testing.assert_array_equal(session.run(feeds)["logits"], before)
