"""The device-resident PyTorch path on the CPU: HF directories (and a transformers model in memory)
generate with the KV in preallocated torch tensors, written in place, through DeviceScheduler.

Greedy tokens equal HF ``generate(do_sample=False)`` token for token, also while requests of
different lengths join and leave the batch, with prefix reuse and chunked prefill; the ledger holds
the batch's KV by bytes per token. The CUDA side (fp16, CUDA graphs) is in tests/gpu.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import time
from typing import Any

import pytest

import aivmm
from aivmm.errors import OutOfMemoryError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_models(tiny_llama_dir: pathlib.Path, tiny_gpt2_dir: pathlib.Path) -> dict[str, Any]:
    return {
        "llama": transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir / "hf").eval(),
        "gpt2": transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir / "hf").eval(),
    }


def _hf(model: Any, ids: list[int], n: int) -> list[int]:
    """HF greedy tokens; where HF stops at EOS, aivmm (ignore_eos) goes on: compare that prefix."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
        )
    return [int(t) for t in out[0, len(ids) :]]


def _same(got: Any, want: list[int]) -> bool:
    return list(got)[: len(want)] == want


@pytest.mark.parametrize(("which", "pad"), [("llama", False), ("gpt2", False), ("llama", True)])
def test_greedy_equals_hf_while_rows_join_and_leave(
    which: str, pad: bool, vmm: aivmm.VMM, request: pytest.FixtureRequest, hf_models: dict[str, Any]
) -> None:
    folder = request.getfixturevalue(f"tiny_{which}_dir") / "hf"
    # an 8-token chunk makes the 11-token prompt prefill in chunks between decode steps
    name = f"resident-{which}-{pad}"
    m = vmm.deploy(folder, name=name, batching={"max_batch_size": 4, "prefill_chunk_tokens": 8})
    try:
        runner = m._runner
        assert runner.device_resident and runner.precision == "fp32" and not runner.graphs
        # pad: every step runs over a power-of-two rows bucket, as a captured CUDA graph does (the
        # rows past the batch compute garbage in their own rows, which must not leak into the batch)
        runner.pad_rows = pad
        vocab = m.info.vocab_size
        prompts = [[(7 * i + 3 * j) % (vocab - 3) + 3 for j in range(n)] for i, n in enumerate((3, 11, 5, 1, 7, 2))]
        news = (9, 4, 14, 6, 3, 11)  # different lengths: rows leave at different steps, others join
        want = [_hf(hf_models[which], p, n) for p, n in zip(prompts, news, strict=True)]
        kv = m._scheduler.batch.kv[0]
        ptr = kv.data_ptr()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futs = [
                pool.submit(m.generate, p, max_new_tokens=n, ignore_eos=True)
                for p, n in zip(prompts, news, strict=True)
            ]
            got = [list(f.result(timeout=60).token_ids) for f in futs]
        assert all(_same(g, w) for g, w in zip(got, want, strict=True))
        assert isinstance(kv, torch.Tensor) and kv.device.type == "cpu" and kv.dtype == torch.float32
        assert m._scheduler.batch.kv[0].data_ptr() == ptr  # written in place, never reallocated
        assert m._scheduler.prefill_chunks_total >= 2
        # the same prompt again: its full blocks come from the prefix cache, the tokens do not change
        long = prompts[1] * 3
        first = m.generate(long, max_new_tokens=5, ignore_eos=True).token_ids
        hits = m.stats().prefix_hit_tokens_total
        assert m.generate(long, max_new_tokens=5, ignore_eos=True).token_ids == first
        assert m.stats().prefix_hit_tokens_total > hits
        assert _same(first, _hf(hf_models[which], long, 5))
    finally:
        m.close()


def test_streams_and_sampling_share_steps_with_greedy_rows(
    vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path, hf_models: dict[str, Any]
) -> None:
    m = vmm.deploy(tiny_llama_dir / "hf", name="resident-mixed", batching={"max_batch_size": 4})
    try:
        ids = m.tokenize("Hello world")
        sampled = dict(max_new_tokens=8, temperature=0.9, top_k=20, seed=5, ignore_eos=True)
        alone = m.generate(ids, **sampled).token_ids
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            streamed = pool.submit(lambda: [e.token_id for e in m.stream(ids, max_new_tokens=10, ignore_eos=True)])
            greedy = pool.submit(m.generate, ids, max_new_tokens=12, ignore_eos=True)
            again = pool.submit(m.generate, ids, **sampled)
            assert _same(streamed.result(60), _hf(hf_models["llama"], ids, 10))
            assert _same(greedy.result(60).token_ids, _hf(hf_models["llama"], ids, 12))
            assert again.result(60).token_ids == alone  # seeded sampling: the same in a batch as alone
        it = m.stream(ids, max_new_tokens=50, ignore_eos=True)
        assert [next(it).token_id for _ in range(2)] == _hf(hf_models["llama"], ids, 2)
        it.close()  # cancelled: its row leaves the device batch and its KV tokens go back
        deadline = time.monotonic() + 10
        while (m.stats().running or m._scheduler.batch.rows) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m.stats().kv_tokens_used == 0 and m._scheduler.batch.rows == 0
    finally:
        m.close()


def test_ledger_holds_the_batch_kv_by_bytes_per_token(vmm: aivmm.VMM, tiny_gpt2_dir: pathlib.Path) -> None:
    m = vmm.deploy(tiny_gpt2_dir / "hf", name="resident-ledger", batching={"max_batch_size": 3, "kv_cache_tokens": 96})
    try:
        lay = m.info.kv
        assert lay.dtype == "float32" and lay.bytes_per_token == 2 * lay.layers * lay.kv_heads * lay.head_dim * 4
        entries = {e.key: e.nbytes for e in vmm.engine.ledger.entries()}
        assert entries["llm:resident-ledger/kv/store"] == 3 * 32 * lay.bytes_per_token  # rows x tokens per row
        store = m._scheduler.batch
        assert sum(t.numel() * t.element_size() for t in store.kv) == 3 * 32 * lay.bytes_per_token
        assert m.generate([5, 6, 7], max_new_tokens=20, ignore_eos=True).completion_tokens == 20
        # a request longer than one row (96 / 3 tokens) is refused with the limit, never run out of memory
        with pytest.raises(OutOfMemoryError, match="a row of the decode batch holds 32"):
            m.generate([5] * 20, max_new_tokens=20)
    finally:
        m.close()
    assert not any(e.key.startswith("llm:resident-ledger/") for e in vmm.engine.ledger.entries())


def test_a_model_in_memory_deploys(vmm: aivmm.VMM, hf_models: dict[str, Any]) -> None:
    model = hf_models["gpt2"]
    m = vmm.deploy(model, name="in-memory")
    try:
        assert isinstance(m, aivmm.DeployedLLM) and m.generation_plan.chosen.backend == "torch"
        assert "CUDA graphs off" in m.generation_plan.explain()
        # the figures a GPU plan is made of: the runner times its own store (a CPU plan skips them)
        prefill, decode, batched = m._runner.measure_steps(prompt_tokens=8, past_lengths=(8, 40), repeats=3, batch=3)
        assert prefill > 0 and [p for p, _ in decode] == [8, 40] and all(ms > 0 for _, ms in decode)
        assert batched is not None and batched > 0
        assert _same(m.generate([4, 9, 2], max_new_tokens=6, ignore_eos=True).token_ids, _hf(model, [4, 9, 2], 6))
    finally:
        m.close()


def test_padding_rows_of_a_departed_long_row_stay_harmless(tiny_llama_dir: pathlib.Path) -> None:
    """A rows bucket's padding row may still hold a longer row that left, past the shrunken window:
    the padded step (what a CUDA graph replays) must neither index out of it nor change real rows."""
    from aivmm.llm._torch_runner import TorchRunner, hf_layout

    folder = tiny_llama_dir / "hf"
    runner = TorchRunner(folder, hf_layout(folder))
    got = []
    for pad in (False, True):
        runner.pad_rows = pad
        store = runner.new_batch(4, 200)
        for n in (3, 5, 7, 100):
            present, logits = runner.prefill([[5 + i % 50 for i in range(n)]], None, 0)
            store.add(present, n, int(logits[0].argmax()))
        store.keep([0, 1, 2])  # the 100-token row leaves; the window shrinks to 32 below its slot
        assert store.length == 32
        steps = []
        for _ in range(4):
            runner.decode(store)
            steps.append(runner.host_ids(store))
            store.advanced()
        got.append(steps)
    assert got[0] == got[1]


def test_a_measured_plan_of_the_torch_runner(tiny_gpt2_dir: pathlib.Path) -> None:
    """What a GPU deploy plans by (on the CPU an HF model has one candidate and is not measured)."""
    from aivmm.llm._plan import plan_generation
    from aivmm.llm._torch_runner import hf_layout

    folder = tiny_gpt2_dir / "hf"
    plan, runner = plan_generation(
        folder,
        hf_layout(folder),
        aivmm.DeployOptions(),
        device="cpu:0",
        backends=("torch",),
        batch=2,
        prompt_tokens=8,
        new_tokens=4,
        past_lengths=(8, 12),
    )
    try:
        assert plan.measured and len(plan.candidates) == 1  # no per-thread twin: torch takes no thread setting
        c = plan.chosen
        assert c.precision == "fp32" and c.prefill_ms and c.batched is not None and len(c.decode_ms) >= 2
        assert any("CUDA graphs off" in r for r in plan.reasons)
    finally:
        runner.close()
