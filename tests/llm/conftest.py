"""Deployed tiny LLMs shared by the tests of one module (deploying measures nothing: measure=False)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

import aivmm


@pytest.fixture(scope="module")
def vmm() -> Iterator[aivmm.VMM]:
    v = aivmm.VMM()
    yield v
    v.close()


@pytest.fixture(scope="module")
def llama(vmm: aivmm.VMM, tiny_llama_dir: pathlib.Path) -> Any:
    return vmm.deploy(tiny_llama_dir, name="llama", measure=False)


@pytest.fixture(scope="module")
def gpt2(vmm: aivmm.VMM, tiny_gpt2_dir: pathlib.Path) -> Any:
    return vmm.deploy(tiny_gpt2_dir, name="gpt2", measure=False)


@pytest.fixture(scope="session")
def hf_reference(tiny_llama_dir: pathlib.Path, tiny_gpt2_dir: pathlib.Path) -> Any:
    """HF ``generate(do_sample=False)`` on the PyTorch weights the ONNX files were exported from."""
    import torch
    import transformers

    models = {
        "llama": transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir / "hf").eval(),
        "gpt2": transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir / "hf").eval(),
    }

    def generate(which: str, ids: list[int], n: int) -> list[int]:
        with torch.no_grad():
            out = models[which].generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=n,
                do_sample=False,
            )
        return [int(t) for t in out[0, len(ids) :]]

    return generate
