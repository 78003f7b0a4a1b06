"""The other KV layouts (Optimum merged, ONNX Runtime GenAI) and the generation planner."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

import aivmm
from _llm_models import write_genai_config, write_merged
from aivmm.errors import FallbackError
from aivmm.llm import KVStyle, detect_kv_layout


def test_genai_layout(vmm: aivmm.VMM, llama: Any, tiny_llama_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    folder = write_genai_config(tiny_llama_dir, tmp_path / "genai")
    layout = detect_kv_layout(folder)
    assert layout is not None and layout.style is KVStyle.GENAI and layout.source.endswith("genai_config.json")
    assert (layout.layers, layout.kv_heads, layout.head_dim, layout.context_length) == (2, 2, 16, 256)
    m = vmm.deploy(folder, name="genai-layout", measure=False)
    try:
        assert (
            m.generate("Hello world", max_new_tokens=16).token_ids
            == llama.generate("Hello world", max_new_tokens=16).token_ids
        )
    finally:
        m.close()


def test_merged_layout(vmm: aivmm.VMM, gpt2: Any, tiny_gpt2_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    folder = write_merged(tiny_gpt2_dir, tmp_path / "merged")
    layout = detect_kv_layout(folder)
    assert layout is not None and layout.style is KVStyle.OPTIMUM_MERGED and layout.use_cache_branch
    m = vmm.deploy(folder, name="merged-layout", measure=False)
    try:
        assert (
            m.generate("Hello world", max_new_tokens=16, ignore_eos=True).token_ids
            == gpt2.generate("Hello world", max_new_tokens=16, ignore_eos=True).token_ids
        )
    finally:
        m.close()


def test_planner_measures_decode_steps(vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path) -> None:
    m = vmm.deploy(tiny_llama_dir, name="planned")
    try:
        gp = m.generation_plan
        assert gp.measured and {c.backend for c in gp.candidates} == {"onnxruntime", "openvino"}
        ok = [c for c in gp.candidates if c.error is None]
        assert len(ok) == 4
        for c in ok:
            assert c.prefill_ms and len(c.decode_ms) == 3 and all(ms > 0 for _, ms in c.decode_ms)
            assert gp.chosen.score_ms <= c.score_ms  # type: ignore[operator]
        assert "lowest cost" in gp.reasons[0] and gp.chosen.label in gp.reasons[0]
        assert gp.to_json()["chosen"]["label"] == gp.chosen.label
        assert m.plan.chosen.config.backend == gp.chosen.backend and "lowest cost" in m.plan.explain()
    finally:
        m.close()


def test_backend_pin(vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path, llama: Any) -> None:
    m = vmm.deploy(tiny_llama_dir, name="on-openvino", backend="openvino", measure=False)
    try:
        assert m.generation_plan.chosen.backend == "openvino"
        assert m.generate("Hello", max_new_tokens=8).token_ids == llama.generate("Hello", max_new_tokens=8).token_ids
    finally:
        m.close()
    with pytest.raises(FallbackError, match="no generation runner for backend"):
        vmm.deploy(tiny_llama_dir, name="x", backend="tensorrt", strict=True)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_hf_directory_through_pytorch(
    which: str, vmm: aivmm.VMM, request: pytest.FixtureRequest, hf_reference: Any
) -> None:
    import concurrent.futures

    folder = request.getfixturevalue(f"tiny_{which}_dir") / "hf"
    m = vmm.deploy(folder, name=f"hf-{which}")
    try:
        assert isinstance(m, aivmm.DeployedLLM) and m.generation_plan.chosen.backend == "torch"
        assert m.info.kv.style is KVStyle.TRANSFORMERS and m.info.kv.layers == 2
        ids = m.tokenize("Hello world")
        assert list(m.generate(ids, max_new_tokens=12).token_ids) == hf_reference(which, ids, 12)
        prompts = ["Hello", "The quick brown fox", "one two three four five"]
        solo = [m.generate(p, max_new_tokens=10, ignore_eos=True).token_ids for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda p: m.generate(p, max_new_tokens=10, ignore_eos=True).token_ids, prompts))
        assert got == solo
        assert any(e.key.startswith(f"llm:hf-{which}/weights") and e.nbytes > 0 for e in vmm.engine.ledger.entries())
        with pytest.raises(aivmm.errors.UnsupportedModelError, match="generates only"):
            m.execute({})
    finally:
        m.close()


def test_state_follows_the_lifecycle(vmm: aivmm.VMM, tiny_gpt2_dir: pathlib.Path) -> None:
    from aivmm.llm._deployed import is_llm_source

    assert is_llm_source(tiny_gpt2_dir) and is_llm_source(tiny_gpt2_dir / "hf")
    assert not is_llm_source(tiny_gpt2_dir / "tokenizer.json")
    m = vmm.deploy(tiny_gpt2_dir, name="lifecycle", measure=False)
    assert m.state.value == "ready"
    m.close()
    assert m.state.value == "unloaded" and m.closed
