"""The runtime on a real NVIDIA GPU: pinned weight uploads, the host tier, and the engine with the
torch backend (batching, overcommit with bit-identical reloads). Skipped without CUDA."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_pinned_uploader_is_bit_exact_for_every_dtype(torch):
    from aivmm.memory import PinnedUploader

    rng = np.random.default_rng(0)
    tensors = {
        "f32": torch.from_numpy(rng.standard_normal((1000, 333)).astype(np.float32)),
        "f16": torch.from_numpy(rng.standard_normal(12345).astype(np.float16)),
        "bf16": torch.randn(77, 129).to(torch.bfloat16),
        "i64": torch.arange(10_000, dtype=torch.int64),
        "bool": torch.from_numpy(rng.random(999) > 0.5),
        "scalar": torch.tensor(3.5),
        "big": torch.from_numpy(rng.standard_normal(9 * 2**20 // 4).astype(np.float32)),  # spans chunks
    }
    up = PinnedUploader(0, chunk_bytes=2**20)
    out, report = up.upload(tensors)
    assert report.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    for name, t in tensors.items():
        assert out[name].is_cuda and out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name].cpu(), t), name
    up.close()


def test_upload_bandwidth_near_pinned_peak(torch):
    from aivmm.memory import PinnedUploader, measure_pinned_peak

    peak = measure_pinned_peak(0, nbytes=1 << 30)
    weights = {f"w{i}": torch.empty(16 * 2**20 // 4, dtype=torch.float32).normal_() for i in range(64)}  # 1 GiB
    up = PinnedUploader(0)
    up.upload({"warm": weights["w0"]})
    _, report = up.upload(weights)
    ratio = report.bytes_per_second / peak
    print(f"pinned peak {peak / 1e9:.1f} GB/s, uploader {report.bytes_per_second / 1e9:.1f} GB/s, ratio {ratio:.2f}")
    # benchmarks/model_load_gpu.py reports the figure (0.70 of peak from pageable memory, 1.01 from the pinned
    # host tier); from fresh pageable tensors the host-side memcpy into the staging buffer bounds it (0.22 seen
    # on the H100 machine). This only catches a broken pipeline: it must beat per-tensor pageable copies (0.14).
    assert ratio > 0.15


def test_host_tier_round_trip(torch):
    from aivmm.memory import PinnedHostTier

    module = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.LayerNorm(256), torch.nn.Linear(256, 3)).cuda()
    module = module.half()
    x = torch.randn(4, 256, device="cuda", dtype=torch.float16)
    want = module(x)
    tier = PinnedHostTier(module)
    free_before = torch.cuda.memory_allocated()
    tier.offload()
    assert torch.cuda.memory_allocated() < free_before
    tier.restore()
    assert torch.equal(module(x), want)


def _gpu_device():
    from aivmm.devices import discover

    for d in discover():
        if d.id.startswith("nvidia:"):
            return d
    pytest.skip("discovery found no nvidia device")


def test_engine_on_gpu_overcommit_reloads_are_bit_identical(torch, tmp_path):
    from aivmm.backends._base import Config
    from aivmm.runtime import Engine
    from aivmm.runtime._toy import inputs, mlp

    gpu = _gpu_device()
    specs = [mlp(tmp_path / f"m{i}.onnx", width=1024, layers=8, seed=i, name=f"m{i}") for i in range(4)]
    per = specs[0].parameter_bytes
    with Engine([gpu], budgets={gpu.id: int(per * 2.5)}) as engine:
        handles = [engine.add(s.name, s, [(Config("torch", gpu.id), gpu)]) for s in specs]
        feeds = [inputs(s, 2, seed=7) for s in specs]
        first = [h.infer(f)["y"] for h, f in zip(handles, feeds)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: handles[i % 4].infer(feeds[i % 4])["y"], range(128)))
        for i, o in enumerate(outs):
            assert np.array_equal(o, first[i % 4])
        st = engine.status()
        assert st["devices"][gpu.id]["peak_bytes"] <= st["devices"][gpu.id]["budget_bytes"]
        assert sum(m["evictions"] for m in st["models"].values()) > 0


def test_engine_on_gpu_batching_matches_single_requests(torch, tmp_path):
    from aivmm.backends._base import Config
    from aivmm.options import DeployOptions
    from aivmm.runtime import BatchingConfig, Engine
    from aivmm.runtime._toy import inputs, mlp

    gpu = _gpu_device()
    spec = mlp(tmp_path / "m.onnx", width=512, layers=4)
    with Engine([gpu]) as engine:
        batched = engine.add("b", spec, [(Config("torch", gpu.id), gpu)], DeployOptions(batching=BatchingConfig(32, 2)))
        single = engine.add("s", spec, [(Config("torch", gpu.id), gpu)])
        feeds = [inputs(spec, 1, seed=i) for i in range(200)]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            outs = list(pool.map(batched.infer, feeds))
        for f, o in zip(feeds, outs):
            np.testing.assert_allclose(o["y"], single.infer(f)["y"], rtol=1e-4, atol=1e-4)
        assert batched.stats()["batches"]["mean_size"] > 2
