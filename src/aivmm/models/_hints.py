"""What a model's categories suggest to the planner and the runtime, as data.

Each category carries a preferred batching policy, the precisions it tolerates (best first) and
the runtimes worth trying first; a hybrid model gets the most conservative combination of its
confident categories. These are starting points, never overrides: the planner still measures
every candidate and the user's constraints still bind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aivmm.dtypes import Precision
from aivmm.models._categorize import CAUSAL_DECODER_LLM
from aivmm.models._spec import Category, ModelSpec

_FP16, _BF16, _INT8, _FP32 = Precision.FP16, Precision.BF16, Precision.INT8, Precision.FP32
_CONFIDENT = 0.5


@dataclasses.dataclass(frozen=True)
class CategoryHints:
    category: Category  # the primary category these hints start from
    max_batch: int  # the largest dynamic batch worth forming
    batch_timeout_ms: float  # how long the first request of a batch may wait for others
    precisions: tuple[Precision, ...]  # precisions that keep accuracy, preferred first; FP32 always included
    memory_bound: bool  # weights or embeddings, not arithmetic, bound the speed: weigh bandwidth and capacity
    sequential: bool  # time steps run one after another: wide accelerators gain little at small batch
    runtimes: tuple[str, ...]  # backends worth measuring first, best first
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category.value,
            "max_batch": self.max_batch,
            "batch_timeout_ms": self.batch_timeout_ms,
            "precisions": [p.value for p in self.precisions],
            "memory_bound": self.memory_bound,
            "sequential": self.sequential,
            "runtimes": list(self.runtimes),
            "reasons": list(self.reasons),
        }


_TABLE: dict[Category, CategoryHints] = {
    Category.CNN: CategoryHints(
        Category.CNN,
        32,
        5.0,
        (_FP16, _BF16, _INT8, _FP32),
        False,
        False,
        ("openvino", "onnxruntime", "torch"),
        ("convolutions are compute-bound and batch well; fp16/bf16 and calibrated int8 keep CNN accuracy",),
    ),
    Category.TRANSFORMER: CategoryHints(
        Category.TRANSFORMER,
        16,
        5.0,
        (_FP16, _BF16, _FP32),
        False,
        False,
        ("onnxruntime", "torch", "openvino"),
        ("attention and dense layers batch well and tolerate fp16/bf16; int8 needs per-model calibration",),
    ),
    Category.RNN: CategoryHints(
        Category.RNN,
        8,
        2.0,
        (_FP32, _FP16),
        False,
        True,
        ("onnxruntime", "openvino", "torch"),
        ("recurrences run step by step: small batches, short waits; gate saturation makes fp32 the safe default",),
    ),
    Category.RECOMMENDER: CategoryHints(
        Category.RECOMMENDER,
        256,
        2.0,
        (_FP32, _FP16),
        True,
        False,
        ("onnxruntime", "openvino", "torch"),
        (
            "embedding lookups are memory-bound and cheap per sample: large batches, short waits, host memory "
            "capacity matters more than FLOPs",
        ),
    ),
    Category.SCIENTIFIC: CategoryHints(
        Category.SCIENTIFIC,
        64,
        10.0,
        (_FP32,),
        False,
        False,
        ("onnxruntime", "torch", "openvino"),
        ("PDE surrogates and spectral transforms lose accuracy in half precision: fp32 only",),
    ),
    Category.OTHER: CategoryHints(
        Category.OTHER,
        8,
        5.0,
        (_FP32,),
        False,
        False,
        ("onnxruntime", "openvino", "torch"),
        ("unknown workload: conservative batching and exact precision",),
    ),
}

_DECODER = CategoryHints(
    Category.TRANSFORMER,
    8,
    2.0,
    (_BF16, _FP16, _FP32),
    True,
    True,
    ("torch", "onnxruntime", "openvino"),
    ("a causal decoder LLM is weight-bandwidth bound when generating: moderate batches, bf16 keeps its range",),
)


def category_hints(spec: ModelSpec) -> CategoryHints:
    """The hints for ``spec``: its primary category's, narrowed by every other confident category."""
    ranked = sorted(spec.categories, key=lambda c: -c.confidence) or []
    confident = [c for c in ranked if c.confidence >= _CONFIDENT] or ranked[:1]
    if not confident:
        base = _TABLE[Category.OTHER]
        parts = [base]
    else:
        parts = [_DECODER if c.subtype == CAUSAL_DECODER_LLM else _TABLE[c.category] for c in confident]
        base = parts[0]
    precisions = tuple(p for p in base.precisions if all(p in h.precisions for h in parts))
    hints = CategoryHints(
        category=base.category,
        max_batch=min(h.max_batch for h in parts),
        batch_timeout_ms=min(h.batch_timeout_ms for h in parts),
        precisions=precisions if _FP32 in precisions else (*precisions, _FP32),
        memory_bound=any(h.memory_bound for h in parts),
        sequential=any(h.sequential for h in parts),
        runtimes=base.runtimes,
        reasons=tuple(r for h in parts for r in h.reasons),
    )
    if spec.batch_dim is None:
        hints = dataclasses.replace(
            hints, max_batch=1, reasons=(*hints.reasons, "no batch dimension: requests run one at a time")
        )
    return hints
