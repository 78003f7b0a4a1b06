"""LLM generation: deploy a decoder with a KV cache and generate, stream and batch tokens.

::

    llm = aivmm.VMM().deploy("llama_dir")       # a DeployedLLM (decoder exports with past)
    print(llm.generate("Hello", max_new_tokens=16).text)
    for ev in llm.stream("Hello", temperature=0.7, seed=1):
        print(ev.text, end="")

The package: ``_layout`` finds the KV layout of a graph, ``_text`` the tokenizer, chat template and
generation defaults, ``_runners`` runs one step on aivmm-owned KV buffers (``_kvstore``),
``_blocks`` accounts KV in ledger-charged blocks and keeps the prefix cache, ``_sampling`` picks
tokens, ``_scheduler`` batches requests continuously, ``_plan`` chooses the runner by what a
generation costs, ``_deployed`` is the user-facing handle.
"""

from aivmm.llm._bench import LLMBenchResult, closed_loop, closed_loop_openai
from aivmm.llm._deployed import DeployedLLM, deploy_llm, is_llm_source, is_torch_llm, plan_llm
from aivmm.llm._layout import detect as detect_kv_layout
from aivmm.llm._layout import model_file
from aivmm.llm._plan import GenerationPlan, StepCost
from aivmm.llm._types import (
    FinishReason,
    Generation,
    KVLayout,
    KVStyle,
    LLMInfo,
    LLMStats,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "DeployedLLM",
    "FinishReason",
    "Generation",
    "GenerationPlan",
    "KVLayout",
    "KVStyle",
    "LLMBenchResult",
    "LLMInfo",
    "LLMStats",
    "SamplingParams",
    "StepCost",
    "TokenEvent",
    "closed_loop",
    "closed_loop_openai",
    "deploy_llm",
    "detect_kv_layout",
    "is_llm_source",
    "is_torch_llm",
    "model_file",
    "plan_llm",
]
