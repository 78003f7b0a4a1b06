"""Continuous batching, KV accounting in the ledger, cancellation, admission limits, prefix reuse."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import threading
import time
from typing import Any

import pytest

import aivmm
from aivmm.errors import OutOfMemoryError, OverloadedError
from aivmm.llm import FinishReason

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "one two",
    "Python, Rust, C++",
    "Once upon a time there was a little robot",
    "seven eight",
    "Memory",
    "Tokenizers turn text",
]


def _kv_entries(vmm: aivmm.VMM, model: str) -> list[Any]:
    return [e for e in vmm.engine.ledger.entries() if e.key.startswith(f"llm:{model}/kv/")]


def _wait_idle(llm: Any) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (llm.stats().running or llm.stats().kv_tokens_used):
        time.sleep(0.005)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_concurrent_requests_equal_solo(which: str, request: pytest.FixtureRequest) -> None:
    llm = request.getfixturevalue(which)
    solo = {p: llm.generate(p, max_new_tokens=20 + i, ignore_eos=True).token_ids for i, p in enumerate(PROMPTS)}
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        futs = {p: pool.submit(llm.generate, p, max_new_tokens=20 + i, ignore_eos=True) for i, p in enumerate(PROMPTS)}
        got = {p: f.result(timeout=60).token_ids for p, f in futs.items()}
    assert got == solo


def test_per_request_sampling_in_one_batch(llama: Any) -> None:
    kinds = [
        {"temperature": 0.0},
        {"temperature": 1.2, "seed": 3},
        {"temperature": 0.8, "top_k": 5, "seed": 4},
        {"repetition_penalty": 1e3},
        {"logprobs": 2},
    ]
    solo = [llama.generate("Hello world", max_new_tokens=16, ignore_eos=True, **kw) for kw in kinds]
    with concurrent.futures.ThreadPoolExecutor(len(kinds)) as pool:
        got = list(pool.map(lambda kw: llama.generate("Hello world", max_new_tokens=16, ignore_eos=True, **kw), kinds))
    assert [g.token_ids for g in got] == [s.token_ids for s in solo]
    assert got[4].top_logprobs is not None and got[0].logprobs is None


def test_kv_is_charged_to_the_ledger_and_released(vmm: aivmm.VMM, llama: Any) -> None:
    _wait_idle(llama)
    bpt = llama.info.kv.bytes_per_token
    stream = llama.stream([5] * 10, max_new_tokens=30, ignore_eos=True)
    next(stream)
    entries = _kv_entries(vmm, "llama")
    assert len(entries) == 1 and entries[0].nbytes == 48 * bpt  # 40 tokens -> 3 blocks of 16
    assert llama.stats().kv_tokens_used == 48 and llama.stats().kv_bytes_used == 48 * bpt
    assert [e for e in vmm.engine.ledger.entries() if e.key == "llm:llama/weights"]
    stream.close()  # cancels: the blocks go back at once
    assert _kv_entries(vmm, "llama") == [] and llama.stats().kv_tokens_used == 0
    llama.generate([5] * 10, max_new_tokens=5)
    assert _kv_entries(vmm, "llama") == []


def test_stream_close_cancels_the_row(llama: Any) -> None:
    _wait_idle(llama)
    s = llama.stream("Hello", max_new_tokens=200, ignore_eos=True)
    for _, _ev in zip(range(3), s, strict=False):
        pass
    s.close()
    _wait_idle(llama)
    assert llama.stats().running == 0


async def test_async_generate_and_stream(llama: Any) -> None:
    solo = [llama.generate(p, max_new_tokens=12, ignore_eos=True) for p in PROMPTS[:4]]
    got = await asyncio.gather(*(llama.agenerate(p, max_new_tokens=12, ignore_eos=True) for p in PROMPTS[:4]))
    assert [g.token_ids for g in got] == [s.token_ids for s in solo]
    events = [ev async for ev in llama.astream(PROMPTS[0], max_new_tokens=12, ignore_eos=True)]
    assert tuple(e.token_id for e in events) == solo[0].token_ids
    assert "".join(e.text for e in events) == solo[0].text
    agen = llama.astream("Hello", max_new_tokens=200, ignore_eos=True)
    await agen.__anext__()
    await agen.aclose()
    assert llama.stats().kv_tokens_used == 0
    task = asyncio.ensure_future(llama.agenerate("Hello", max_new_tokens=200, ignore_eos=True))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llama.stats().kv_tokens_used == 0


def test_admission_waits_or_refuses(tiny_llama_dir: pathlib.Path) -> None:
    with aivmm.VMM() as vmm:
        llm = vmm.deploy(
            tiny_llama_dir,
            name="small",
            measure=False,
            batching={"kv_cache_tokens": 64, "max_batch_size": 1, "max_waiting": 1},
        )
        assert llm.stats().kv_tokens_capacity == 64
        with pytest.raises(OutOfMemoryError, match="64"):
            llm.generate([5] * 10, max_new_tokens=100)
        first = llm.stream([5] * 10, max_new_tokens=40, ignore_eos=True)
        next(first)
        second = llm.stream([6] * 10, max_new_tokens=40, ignore_eos=True)  # waits for the first's blocks
        with pytest.raises(OverloadedError):
            llm.generate([7] * 4, max_new_tokens=4)
        assert llm.stats().waiting == 1 and llm.stats().running == 1
        rest = list(first)
        assert rest[-1].finish_reason is FinishReason.LENGTH
        assert [e.finish_reason for e in second][-1] is FinishReason.LENGTH
        assert llm.stats().kv_tokens_used == 0
    assert not [e for e in vmm.engine.ledger.entries() if e.key.startswith("llm:small/")]


def test_prefix_reuse(vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path) -> None:
    llm = vmm.deploy(tiny_llama_dir, name="prefix", measure=False)
    off = vmm.deploy(tiny_llama_dir, name="noprefix", measure=False, batching={"prefix_cache_blocks": 0})
    try:
        shared = list(range(10, 50))  # 40 tokens: two full 16-token blocks
        a = llm.generate([*shared, 60], max_new_tokens=16, ignore_eos=True)
        assert llm.stats().prefix_hit_tokens_total == 0
        b = llm.generate([*shared, 61, 62], max_new_tokens=16, ignore_eos=True)
        assert llm.stats().prefix_hit_tokens_total == 32
        assert a.token_ids == off.generate([*shared, 60], max_new_tokens=16, ignore_eos=True).token_ids
        assert b.token_ids == off.generate([*shared, 61, 62], max_new_tokens=16, ignore_eos=True).token_ids
        assert off.stats().prefix_hit_tokens_total == 0
        blocks = [e for e in vmm.engine.ledger.entries() if e.key.startswith("llm:prefix/prefix/")]
        assert len(blocks) == 2 and blocks[0].nbytes == 16 * llm.info.kv.bytes_per_token
    finally:
        llm.close()
        off.close()
    assert not [e for e in vmm.engine.ledger.entries() if e.key.startswith(("llm:prefix/", "llm:noprefix/"))]


def test_a_failed_step_fails_its_requests_and_the_model_keeps_serving(llama: Any) -> None:
    from aivmm.errors import ExecutionError

    runner = llama._scheduler.runner
    real = runner.run
    calls = {"n": 0}

    def flaky(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the second decode step of the request below
            raise ExecutionError("injected failure")
        real(*args)

    runner.run = flaky
    try:
        with pytest.raises(ExecutionError, match="injected"):
            llama.generate("Hello", max_new_tokens=10, ignore_eos=True)
    finally:
        del runner.run
    assert llama.stats().kv_tokens_used == 0 and llama.stats().running == 0
    assert llama.generate("Hello", max_new_tokens=4, ignore_eos=True).completion_tokens == 4


def test_bad_llm_options(vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path) -> None:
    from aivmm.errors import ConfigError

    for opts in ({"max_batch_size": 0}, {"block_size": "16"}, {"max_queue_delay_ms": 2}):
        with pytest.raises(ConfigError, match=r"max_batch_size|block_size|unknown LLM batching"):
            vmm.deploy(tiny_llama_dir, name="bad", measure=False, batching=opts)


def test_mixed_concurrent_load_leaves_nothing_behind(vmm: aivmm.VMM, gpt2: Any) -> None:
    import random

    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(6):
                kind = rnd.choice(["generate", "stream", "close", "sample"])
                prompt = [rnd.randrange(3, 500) for _ in range(rnd.randrange(1, 40))]
                n = rnd.randrange(1, 30)
                if kind == "generate":
                    assert gpt2.generate(prompt, max_new_tokens=n, ignore_eos=True).completion_tokens == n
                elif kind == "sample":
                    g = gpt2.generate(prompt, max_new_tokens=n, temperature=0.9, top_p=0.8, seed=seed, logprobs=1)
                    assert g.completion_tokens <= n and g.logprobs is not None
                elif kind == "stream":
                    assert len(list(gpt2.stream(prompt, max_new_tokens=n, ignore_eos=True))) == n
                else:
                    s = gpt2.stream(prompt, max_new_tokens=50, ignore_eos=True)
                    next(s)
                    s.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    _wait_idle(gpt2)
    st = gpt2.stats()
    assert st.running == 0 and st.waiting == 0 and st.kv_tokens_used == 0
    assert _kv_entries(vmm, "gpt2") == []


async def test_prompts_admitted_together_share_one_prefill(llama: Any) -> None:
    sched = llama._scheduler
    real = sched._prefill_batch
    sizes: list[int] = []

    def counting(reqs: list[Any]) -> None:
        sizes.append(len(reqs))
        real(reqs)

    sched._prefill_batch = counting
    try:
        solo = [llama.generate(p, max_new_tokens=8, ignore_eos=True).token_ids for p in PROMPTS]
        for _ in range(5):  # admission together depends on the scheduler thread's timing
            got = await asyncio.gather(*(llama.agenerate(p, max_new_tokens=8, ignore_eos=True) for p in PROMPTS))
            assert [g.token_ids for g in got] == solo
            if sizes:
                break
    finally:
        del sched._prefill_batch
    assert sizes and max(sizes) > 1


def test_close_fails_requests_in_flight_and_frees_everything(vmm: aivmm.VMM, tiny_gpt2_dir: pathlib.Path) -> None:
    from aivmm.errors import ModelClosedError

    m = vmm.deploy(tiny_gpt2_dir, name="closing", measure=False, batching={"max_batch_size": 1})
    running = m.stream([5] * 8, max_new_tokens=200, ignore_eos=True)
    next(running)
    queued = m.stream([6] * 8, max_new_tokens=10, ignore_eos=True)
    m.close()
    with pytest.raises(ModelClosedError):
        list(running)
    with pytest.raises(ModelClosedError):
        list(queued)
    with pytest.raises(ModelClosedError):
        m.generate([5], max_new_tokens=2)
    assert "closing" not in vmm.models()
    assert not [e for e in vmm.engine.ledger.entries() if e.key.startswith("llm:closing/")]


def test_chunked_prefill_interleaves_decode_steps(vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path, llama: Any) -> None:
    """A long prompt prefills 16 tokens at a time between decode steps of a running stream; the tokens of
    both equal those of the model prefilling whole (``llama``: the default chunk exceeds these prompts)."""
    llm = vmm.deploy(tiny_llama_dir, name="chunked", measure=False, batching={"prefill_chunk_tokens": 16})
    long_prompt = [int(t) for t in range(10, 130)]  # 120 tokens: 8 chunks
    runner = llm._scheduler.runner
    calls: list[tuple[int, int, int]] = []
    real = runner.run

    def logged(batch: int, past: int, seq: int, *rest: Any) -> None:
        calls.append((batch, past, seq))
        real(batch, past, seq, *rest)

    runner.run = logged
    try:
        stream = llm.stream("Once upon a time", max_new_tokens=60, ignore_eos=True)
        first = [next(stream)]  # the short request is decoding
        long_gen = llm.generate(long_prompt, max_new_tokens=8, ignore_eos=True)
        short = [*first, *stream]
    finally:
        del runner.run
        llm.close()
    chunks = [i for i, (b, past, seq) in enumerate(calls) if b == 1 and seq == 16]
    assert len(chunks) >= 7 and [calls[i][1] for i in chunks[:3]] == [0, 16, 32]
    between = [c for c in calls[chunks[0] : chunks[-1]] if c[2] == 1]
    assert len(between) >= len(chunks) - 1  # a decode step of the running stream after every chunk
    assert long_gen.token_ids == llama.generate(long_prompt, max_new_tokens=8, ignore_eos=True).token_ids
    whole = llama.generate("Once upon a time", max_new_tokens=60, ignore_eos=True).token_ids
    assert tuple(ev.token_id for ev in short) == whole
