"""The planner: constraints, candidates with rejection reasons, cost model, profiling, plan cache.

``plan(spec, devices, constraints)`` returns a :class:`Plan` saying where the model runs, with
predicted and measured figures, the ranked alternatives and every rejected candidate with why.
"""

from aivmm.planner._bench import Bench, Held
from aivmm.planner._plan import Plan
from aivmm.planner._planner import identity, plan, upgrade_executor
from aivmm.planner._values import Candidate, Measurement, Prediction, Rejection, RejectReason
from aivmm.planner.constraints import Constraints, HardwareSelector, Objective, PrecisionPolicy

__all__ = [
    "Bench",
    "Candidate",
    "Constraints",
    "HardwareSelector",
    "Held",
    "Measurement",
    "Objective",
    "Plan",
    "PrecisionPolicy",
    "Prediction",
    "RejectReason",
    "Rejection",
    "identity",
    "plan",
    "upgrade_executor",
]
