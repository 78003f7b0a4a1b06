"""The LLM path takes the same DeployOptions: what generation planning does not apply is said in
the plan, or refused with strict, never dropped."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

import aivmm
from aivmm.errors import FallbackError


def test_options_an_llm_does_not_apply_are_said_or_refused(vmm: aivmm.VMM, tiny_gpt2_dir: pathlib.Path) -> None:
    opts = aivmm.DeployOptions(name="gpt2-opts", measure=False, constraints={"max_latency_ms": 50}, replicas=2,
                               batching={"max_batch_size": 4})  # fmt: skip
    m: Any = vmm.deploy(tiny_gpt2_dir, options=opts)
    try:
        assert m.options == opts
        (note,) = m.plan.fallbacks
        assert "['constraints', 'replicas']" in note
        assert m.generate("Hello", max_new_tokens=2).text is not None
    finally:
        m.close()
    with pytest.raises(FallbackError, match=r"does not apply the deploy option\(s\) \['replicas'\]"):
        vmm.deploy(tiny_gpt2_dir, options=aivmm.DeployOptions(name="gpt2-strict", measure=False, replicas=2,
                                                              strict=True))  # fmt: skip
    plain = vmm.deploy(tiny_gpt2_dir, name="gpt2-plain", measure=False)
    try:
        assert not plain.plan.fallbacks
    finally:
        plain.close()
