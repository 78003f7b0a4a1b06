"""Decode rows over two cores: a step split into row groups, or one scheduler per core, gives the
tokens of whole steps on one scheduler."""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
import time
from typing import Any

import pytest

import aivmm
from aivmm.errors import ConfigError

# 16 prompts of different lengths with different max_new_tokens: rows join at different lengths
# and leave at different steps, so the batch (and its row groups) changes size while split
PROMPTS = [[3 + (7 * i + 5 * j) % 500 for j in range(3 + 2 * i)] for i in range(16)]
NEW = [12 + 3 * i for i in range(16)]


def _run_all(llm: Any, stagger_s: float = 0.0) -> list[tuple[int, ...]]:
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        futs = []
        for p, n in zip(PROMPTS, NEW, strict=True):
            futs.append(pool.submit(llm.generate, p, max_new_tokens=n, ignore_eos=True))
            if stagger_s:
                time.sleep(stagger_s)  # later ones join a batch already decoding
        return [f.result(timeout=60).token_ids for f in futs]


@pytest.fixture(scope="module")
def module_vmm() -> Any:
    vmm = aivmm.VMM()
    yield vmm
    vmm.close()


@pytest.fixture(scope="module")
def split_llama(module_vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path) -> Any:
    # decode_cores given: a model deployed beside another would count the shared cores as one
    return module_vmm.deploy(
        tiny_llama_dir, name="split", measure=False, batching={"decode_cores": 2, "split_decode_rows": 2}
    )


def test_split_steps_give_the_tokens_of_whole_steps_and_hf(split_llama: Any, hf_reference: Any) -> None:
    runner = split_llama._runner
    split = split_llama.generation_plan.split
    assert split is not None and split.min_rows == 2 and split.groups == 2
    assert "decode steps of >= 2 rows run as 2 row groups on 2 cores" in split.reason
    assert split.reason in split_llama.generation_plan.reasons
    before = runner.split.steps
    together = _run_all(split_llama)
    staggered = _run_all(split_llama, stagger_s=0.003)
    assert runner.split.steps - before > 50 and runner.split.threads == 1  # one persistent worker
    runner.split_rows(2, None)  # the same model and scheduler, every step whole
    try:
        steps = runner.split.steps
        whole = _run_all(split_llama)
        assert runner.split.steps == steps
    finally:
        runner.split_rows(2, 2)
    assert together == whole and staggered == whole
    for i in (0, 15):
        ref = hf_reference("llama", PROMPTS[i], NEW[i])  # HF stops at EOS, ignore_eos goes on
        assert list(whole[i][: len(ref)]) == ref


def test_split_groups_run_on_fixed_shape_sessions(split_llama: Any) -> None:
    """Each row group of a split step runs on the session built for its own (rows, past) shape."""
    runner = split_llama._runner
    fixed = runner.fixed
    for shape in ((4, 32), (3, 32)):  # a 7-row step at past 32 splits into 4 + 3 rows
        fixed.request(shape)
    assert fixed.wait_idle(60) and not fixed.failed
    prompts, n = PROMPTS[:7], 20
    solo = [split_llama.generate(p, max_new_tokens=n, ignore_eos=True).token_ids for p in prompts]
    steps = {s: fixed.ready[s].steps for s in ((4, 32), (3, 32))}
    start = threading.Barrier(len(prompts))

    def one(p: list[int]) -> tuple[int, ...]:
        start.wait(10)
        return split_llama.generate(p, max_new_tokens=n, ignore_eos=True).token_ids

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(one, prompts))
    assert got == solo
    assert all(fixed.ready[s].steps > steps[s] for s in steps)  # both group shapes ran on theirs
    assert {k[:2] for k in runner._group_fixed} >= {(4, 32), (3, 32)}


def test_close_stops_the_worker(tiny_gpt2_dir: pathlib.Path) -> None:
    vmm = aivmm.VMM()
    llm = vmm.deploy(tiny_gpt2_dir, measure=False, batching={"decode_cores": 2, "split_decode_rows": 2})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: llm.generate(p, max_new_tokens=8, ignore_eos=True), PROMPTS[:4]))
    split = llm._runner.split
    assert split.steps > 0 and split.threads == 1
    vmm.close()
    assert split.threads == 0


@pytest.fixture(scope="module")
def two_schedulers(module_vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path) -> Any:
    return module_vmm.deploy(
        tiny_llama_dir, name="two", measure=False, batching={"decode_cores": 2, "decode_schedulers": 2}
    )


def test_two_schedulers_give_the_tokens_of_one(two_schedulers: Any, split_llama: Any, hf_reference: Any) -> None:
    llm = two_schedulers
    split = llm.generation_plan.split
    assert split.schedulers == 2 and "decode rows spread over 2 schedulers" in split.reason
    assert len(llm._schedulers) == 2 and [s.batch.max_batch for s in llm._schedulers] == [8, 8]
    assert llm._runners[1] is not llm._runner and llm._runners[1].session is not llm._runner.session
    keys = {e.key for e in llm._vmm.engine.ledger.entries()}
    assert {"llm:two/weights", "llm:two/r1/weights"} <= keys  # the second runner's copy is charged
    before = [s.tokens_total for s in llm._schedulers]
    together = _run_all(llm)
    staggered = _run_all(llm, stagger_s=0.003)
    assert all(s.tokens_total > b for s, b in zip(llm._schedulers, before, strict=True))  # both decoded
    runner = split_llama._runner
    runner.split_rows(2, None)
    try:
        whole = _run_all(split_llama)  # one scheduler, whole steps
    finally:
        runner.split_rows(2, 2)
    assert together == whole and staggered == whole
    ref = hf_reference("llama", PROMPTS[3], NEW[3])
    assert list(together[3][: len(ref)]) == ref
    stats = llm.stats()
    assert stats.running == 0 and stats.kv_tokens_capacity == sum(s.pool.capacity_tokens for s in llm._schedulers)
    # a few streams stay on the first scheduler (it has free rows)
    first = [s.requests_total for s in llm._schedulers]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda p: llm.generate(p, max_new_tokens=8, ignore_eos=True), PROMPTS[:3]))
    assert llm._schedulers[0].requests_total == first[0] + 3 and llm._schedulers[1].requests_total == first[1]


def test_one_core_or_shared_cores_never_split(tiny_gpt2_dir: pathlib.Path) -> None:
    vmm = aivmm.VMM()
    try:
        one = vmm.deploy(
            tiny_gpt2_dir,
            name="one",
            measure=False,
            batching={"decode_cores": 1, "split_decode_rows": 2, "decode_schedulers": 2},
        )
        assert one._runner.split is None and one.generation_plan.split.min_rows is None
        assert len(one._schedulers) == 1
        assert "decode steps run whole on one scheduler: 1 core (decode_cores=1)" in one.generation_plan.reasons
        # beside a model holding memory on the CPU, the cores are shared: counted as one
        beside = vmm.deploy(tiny_gpt2_dir, name="beside", measure=False, batching={"split_decode_rows": 2})
        assert beside._runner.split is None
        assert "other models share them (llm:one)" in beside.generation_plan.split.reason
        for bad in ({"decode_cores": 0}, {"decode_schedulers": 0}):
            with pytest.raises(ConfigError, match="must be an integer >= 1"):
                vmm.deploy(tiny_gpt2_dir, name="bad", measure=False, batching=bad)
    finally:
        vmm.close()


def test_plan_measures_and_names_the_split(tiny_gpt2_dir: pathlib.Path) -> None:
    vmm = aivmm.VMM()
    try:
        llm = vmm.deploy(tiny_gpt2_dir, backend="onnxruntime", batching={"decode_cores": 2})
        plan = llm.generation_plan
        one = next(c for c in plan.candidates if c.threads == 1)
        assert one.batched is not None and one.batched_split_ms is not None and one.batched_split_ms > 0
        pool = next(c for c in plan.candidates if c.threads is None)
        assert pool.batched_split_ms is None  # a runtime pool already spreads its step over the cores
        split = plan.split
        assert split is not None and split.cores == 2 and split.reason in plan.reasons
        if plan.chosen.threads == 1:  # measured: whole, row groups by batch size, two schedulers at once
            assert [s[0] for s in split.steps] == [2, 4, 8, 16] and all(w > 0 and x > 0 for _, w, x in split.steps)
            assert split.scheduler_ms is not None and split.scheduler_ms > 0
            assert "batch-16 step" in split.reason and "8 + 8 rows on 2 schedulers at once" in split.reason
            w16, x16 = split.steps[-1][1:]
            if split.schedulers == 2:
                assert split.scheduler_ms <= 0.9 * w16 and len(llm._schedulers) == 2
            elif split.min_rows is not None:
                assert x16 <= 0.9 * w16 and llm._runner.split.min_rows == split.min_rows
            else:
                assert split.reason.startswith("decode steps run whole") and len(llm._schedulers) == 1
        data = plan.to_json()["split"]
        assert data["cores"] == 2 and data["reason"] == split.reason and data["schedulers"] == split.schedulers
    finally:
        vmm.close()
