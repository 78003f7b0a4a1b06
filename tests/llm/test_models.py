"""The tiny LLM test models are what the contract says: Optimum with-past exports plus tokenizer files."""

from __future__ import annotations

import json
import pathlib

import onnx
import pytest


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_tiny_llm_dirs(fixture: str, request: pytest.FixtureRequest) -> None:
    d: pathlib.Path = request.getfixturevalue(fixture)
    m = onnx.load(str(d / "model.onnx"), load_external_data=False)
    inputs = {i.name for i in m.graph.input}
    outputs = [o.name for o in m.graph.output]
    assert {"input_ids", "attention_mask", "position_ids", "past_key_values.0.key"} <= inputs
    assert outputs[0] == "logits" and "present.1.value" in outputs
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert tok.get_vocab_size() == json.loads((d / "config.json").read_text())["vocab_size"] == 512
    assert tok.decode(tok.encode("Hello world!").ids) == "Hello world!"
    assert (d / "hf" / "config.json").is_file()
