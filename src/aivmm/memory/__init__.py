"""Memory: the per-device ledger, footprints, eviction policies and pinned weight transfers."""

from aivmm.memory._budget import BUDGET_ENV, parse_budget_spec, resolve_capacities
from aivmm.memory._footprint import Footprint, estimate
from aivmm.memory._ledger import Entry, EntryState, Ledger
from aivmm.memory._policy import (
    Candidate,
    CostBenefitPolicy,
    CountLruPolicy,
    Eviction,
    EvictionPolicy,
    LruPolicy,
    RateEstimator,
)
from aivmm.memory._transfer import PinnedHostTier, PinnedUploader, UploadReport, measure_pinned_peak

__all__ = [
    "BUDGET_ENV",
    "Candidate",
    "CostBenefitPolicy",
    "CountLruPolicy",
    "Entry",
    "EntryState",
    "Eviction",
    "EvictionPolicy",
    "Footprint",
    "Ledger",
    "LruPolicy",
    "PinnedHostTier",
    "PinnedUploader",
    "RateEstimator",
    "UploadReport",
    "estimate",
    "measure_pinned_peak",
    "parse_budget_spec",
    "resolve_capacities",
]
