"""The runtime: deployed models sharing devices (see docs/runtime.md).

``Engine`` admits models through the memory ledger, schedules their requests on per-device
executors with dynamic batching, priorities and deadlines, overcommits device memory with
cost-benefit eviction, isolates models in worker processes on request, and spreads a model over
several devices as replicas or pipeline stages.
"""

from aivmm.runtime._batching import BatchingConfig
from aivmm.runtime._engine import Engine, Placement
from aivmm.runtime._handle import ModelHandle
from aivmm.runtime._request import RequestOptions
from aivmm.runtime._split import SplitPlan, Stage, plan_split
from aivmm.runtime._states import ModelState, Tier

__all__ = [
    "BatchingConfig",
    "Engine",
    "ModelHandle",
    "ModelState",
    "Placement",
    "RequestOptions",
    "SplitPlan",
    "Stage",
    "Tier",
    "plan_split",
]
