"""Generation on real Optimum exports: greedy equals HF generate, streaming, sampling, stops, logprobs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

import aivmm
from aivmm.errors import ContextLengthError, InputError
from aivmm.llm import FinishReason, KVStyle, SamplingParams, detect_kv_layout

PROMPTS = ["Hello world", "The quick brown fox", "Memory bandwidth bounds decoding, compute bounds prefill."]


def test_kv_layout_of_both_exports(tiny_llama_dir: Any, tiny_gpt2_dir: Any) -> None:
    llama = detect_kv_layout(tiny_llama_dir)
    gpt2 = detect_kv_layout(tiny_gpt2_dir / "model.onnx")
    assert llama is not None and gpt2 is not None
    assert (llama.style, llama.layers, llama.kv_heads, llama.head_dim, llama.dtype) == (
        KVStyle.OPTIMUM_WITH_PAST,
        2,
        2,
        16,
        "float32",
    )
    assert (gpt2.layers, gpt2.kv_heads, gpt2.head_dim, gpt2.context_length) == (2, 4, 16, 256)
    assert llama.bytes_per_token == 2 * 2 * 2 * 16 * 4 and llama.position_ids == "position_ids"
    assert llama.vocab_size == 512 and llama.context_length == 256


def test_info(llama: Any) -> None:
    assert isinstance(llama, aivmm.DeployedLLM) and isinstance(llama, aivmm.DeployedModel)
    info = llama.info
    assert info.eos_token_ids == (2,) and info.has_tokenizer and info.has_chat_template
    assert info.kv.layers == 2 and info.context_length == 256


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_greedy_equals_hf_generate(which: str, request: pytest.FixtureRequest, hf_reference: Any) -> None:
    model = request.getfixturevalue(which)
    for prompt in PROMPTS:
        ids = model.tokenize(prompt)
        ref = hf_reference(which, ids, 24)
        got = model.generate(ids, max_new_tokens=24)
        assert list(got.token_ids) == ref, prompt
        assert got.prompt_tokens == len(ids) and got.completion_tokens == len(ref)
        assert got.finish_reason is (FinishReason.STOP if ref[-1] == 2 else FinishReason.LENGTH)
        assert got.text == model.detokenize(ref)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_fixed_shape_sessions_give_hf_tokens(which: str, request: pytest.FixtureRequest, hf_reference: Any) -> None:
    """Decode steps on sessions built for their exact (batch, past) shape choose the same tokens."""
    model = request.getfixturevalue(which)
    fixed = model._runner.fixed
    assert fixed is not None and any("fixed" in r for r in model.generation_plan.reasons)
    for shape in ((1, 32), (1, 64)):
        fixed.request(shape)
    assert fixed.wait_idle(60) and not fixed.failed
    assert {(1, 32), (1, 64)} <= set(fixed.ready)
    charged = {e.key: e.nbytes for e in model._vmm.engine.ledger.entries() if "/shape/" in e.key}
    weights = next(e.nbytes for e in model._vmm.engine.ledger.entries() if e.key == f"llm:{which}/weights")
    assert charged[f"llm:{which}/shape/1x32"] == charged[f"llm:{which}/shape/1x64"] == weights
    before = sum(b.steps for b in fixed.ready.values())
    ids = model.tokenize(PROMPTS[0])
    got = model.generate(ids, max_new_tokens=40, ignore_eos=True)
    assert sum(b.steps for b in fixed.ready.values()) - before >= 30  # most steps ran on them
    ref = hf_reference(which, ids, 40)  # HF stops at EOS, ignore_eos goes on
    assert list(got.token_ids[: len(ref)]) == ref
    model._runner.fixed = None  # the symbolic session alone, past EOS too
    try:
        assert model.generate(ids, max_new_tokens=40, ignore_eos=True).token_ids == got.token_ids
    finally:
        model._runner.fixed = fixed


def test_stream_matches_generate(llama: Any) -> None:
    g = llama.generate("Once upon a time", max_new_tokens=30, ignore_eos=True)
    events = list(llama.stream("Once upon a time", max_new_tokens=30, ignore_eos=True))
    assert [e.token_id for e in events] == list(g.token_ids)
    assert [e.index for e in events] == list(range(30))
    assert "".join(e.text for e in events) == g.text
    assert [e.finish_reason for e in events[:-1]] == [None] * 29 and events[-1].finish_reason is FinishReason.LENGTH


def test_sampling(llama: Any) -> None:
    a = llama.generate("Hello", max_new_tokens=20, temperature=1.5, seed=7, ignore_eos=True)
    b = llama.generate("Hello", max_new_tokens=20, temperature=1.5, seed=7, ignore_eos=True)
    c = llama.generate("Hello", max_new_tokens=20, temperature=1.5, seed=8, ignore_eos=True)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = llama.generate("Hello", max_new_tokens=20, ignore_eos=True)
    assert (
        llama.generate("Hello", max_new_tokens=20, temperature=1.0, top_k=1, seed=1, ignore_eos=True).token_ids
        == greedy.token_ids
    )
    assert (
        llama.generate("Hello", max_new_tokens=20, temperature=1.0, top_p=1e-6, seed=1, ignore_eos=True).token_ids
        == greedy.token_ids
    )
    pen = llama.generate("Hello", max_new_tokens=20, repetition_penalty=1e3, ignore_eos=True)
    assert len(set(pen.token_ids)) == 20  # a huge penalty never repeats a token
    assert len(set(greedy.token_ids)) < 20


def test_bad_sampling_values(llama: Any) -> None:
    for kw in (
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"max_new_tokens": 0},
        {"repetition_penalty": 0},
        {"stop": [""]},
        {"nonsense": 1},
    ):
        with pytest.raises(InputError):
            llama.generate("Hello", **kw)


def test_stop_strings(llama: Any) -> None:
    full = llama.generate("Hello world", max_new_tokens=30, ignore_eos=True)
    stop = full.text[6:9]
    assert stop and stop in full.text
    g = llama.generate("Hello world", max_new_tokens=30, ignore_eos=True, stop=stop)
    cut = full.text.index(stop)
    assert g.text == full.text[:cut] and g.finish_reason is FinishReason.STOP
    streamed = "".join(e.text for e in llama.stream("Hello world", max_new_tokens=30, ignore_eos=True, stop=[stop]))
    assert streamed == full.text[:cut]
    first = full.token_ids[3]
    k = full.token_ids.index(first)
    g = llama.generate("Hello world", max_new_tokens=30, ignore_eos=True, stop_token_ids=(first,))
    assert g.token_ids == full.token_ids[: k + 1] and g.finish_reason is FinishReason.STOP


def test_logprobs(llama: Any) -> None:
    g = llama.generate("Hello", max_new_tokens=8, ignore_eos=True, logprobs=3)
    assert g.logprobs is not None and g.top_logprobs is not None and len(g.logprobs) == 8
    for tok, lp, tops in zip(g.token_ids, g.logprobs, g.top_logprobs, strict=True):
        assert len(tops) == 3 and tops[0][0] == tok and tops[0][1] == pytest.approx(lp)
        assert tops[0][1] >= tops[1][1] >= tops[2][1] and lp < 0
    ids = llama.tokenize("Hello")
    logits = llama.execute(_feeds(llama, ids))["logits"][0, -1].astype(np.float64)
    ref = logits[g.token_ids[0]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    assert g.logprobs[0] == pytest.approx(ref, abs=1e-5)
    g0 = llama.generate("Hello", max_new_tokens=2, logprobs=0, ignore_eos=True)
    assert g0.logprobs is not None and g0.top_logprobs is None


def _feeds(llm: Any, ids: list[int]) -> dict[str, np.ndarray]:
    kv = llm.info.kv
    n = len(ids)
    feeds = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
    }
    for name in (*kv.past_key_names, *kv.past_value_names):
        feeds[name] = np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)
    return feeds


def test_context_and_vocabulary_errors(llama: Any) -> None:
    with pytest.raises(ContextLengthError, match="256"):
        llama.generate([5] * 256)
    with pytest.raises(ContextLengthError, match="at most 56 new tokens"):
        llama.generate([5] * 200, max_new_tokens=57)
    with pytest.raises(InputError, match="outside the vocabulary"):
        llama.generate([5, 512])
    with pytest.raises(InputError, match="empty"):
        llama.generate([])
    g = llama.generate([5] * 250, ignore_eos=True)  # no max_new_tokens: the context bounds it
    assert g.completion_tokens == 6 and g.finish_reason is FinishReason.LENGTH


def test_chat_prompt(llama: Any) -> None:
    text = llama.chat_prompt([{"role": "user", "content": "Hi"}])
    assert text == "<s><|user|>Hi</s><|assistant|>"
    assert llama.generate(text, max_new_tokens=4).completion_tokens >= 1


def test_model_without_tokenizer(vmm: aivmm.VMM, tiny_gpt2_dir: Any, tmp_path: Any) -> None:
    for name in ("model.onnx", "config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((tiny_gpt2_dir / name).read_bytes())
    m = vmm.deploy(tmp_path, name="bare", measure=False)
    try:
        assert not m.info.has_tokenizer
        with pytest.raises(InputError, match="tokenizer"):
            m.generate("text")
        g = m.generate([5, 6, 7], max_new_tokens=3, ignore_eos=True)
        assert g.completion_tokens == 3 and g.text == ""
    finally:
        m.close()


def test_model_without_kv_cache_cannot_generate(vmm: aivmm.VMM, tmp_path: Any) -> None:
    from aivmm.models import zoo

    path = zoo.build("bert-base", size="tiny")
    (tmp_path / "model.onnx").write_bytes(path.read_bytes())
    with pytest.raises(aivmm.errors.UnsupportedModelError, match="KV cache"):
        vmm.deploy(tmp_path)


def test_sampling_params_object(llama: Any) -> None:
    p = SamplingParams(max_new_tokens=5, stop="zz", ignore_eos=True)
    assert p.stop == ("zz",)
    assert llama.generate("Hello", p).completion_tokens == 5
    assert llama.generate("Hello", dataclasses.replace(p, max_new_tokens=3)).completion_tokens == 3


def test_generation_defaults_from_config(llama: Any) -> None:
    cfg = json.loads((llama.codec is not None) and "{}")
    assert cfg == {}
    assert llama.defaults.max_new_tokens == 32 and llama.defaults.eos_token_ids == (2,)
    assert llama.generate([5, 6], ignore_eos=True).completion_tokens == 32


def test_fixed_shape_sessions_are_bounded_and_given_back(vmm: aivmm.VMM, tiny_gpt2_dir: Any) -> None:
    llm = vmm.deploy(tiny_gpt2_dir, name="fixed1", measure=False, batching={"fixed_shape_sessions": 1})
    fixed = llm._runner.fixed
    try:
        fixed.request((1, 32))
        assert fixed.wait_idle(60) and set(fixed.ready) == {(1, 32)}
        fixed.request((2, 32))  # the cap is one: the least used goes, its ledger entry with it
        assert fixed.wait_idle(60) and set(fixed.ready) == {(2, 32)}
        keys = [e.key for e in vmm.engine.ledger.entries() if e.key.startswith("llm:fixed1/shape/")]
        assert keys == ["llm:fixed1/shape/2x32"]
    finally:
        llm.close()
    assert not [e for e in vmm.engine.ledger.entries() if e.key.startswith("llm:fixed1/")]
