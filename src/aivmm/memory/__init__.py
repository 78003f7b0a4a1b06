"""Memory: the per-device ledger, footprints, eviction policies and the transfer layer
(:func:`transfer_for` picks the device vendor's :class:`Transfer`; pinned weight uploads for CUDA).
Importing this package imports no GPU runtime: torch is imported when a CUDA transfer is made.
"""

from aivmm.memory._budget import BUDGET_ENV, parse_budget_spec, resolve_capacities
from aivmm.memory._cuda_transfer import (
    CudaTransfer,
    PinnedHostTier,
    PinnedUploader,
    UploadReport,
    measure_pinned_peak,
)
from aivmm.memory._footprint import Footprint, estimate, format_bytes
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
from aivmm.memory._transfer import CpuTransfer, Transfer, transfer_for

__all__ = [
    "BUDGET_ENV",
    "Candidate",
    "CostBenefitPolicy",
    "CountLruPolicy",
    "CpuTransfer",
    "CudaTransfer",
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
    "Transfer",
    "UploadReport",
    "estimate",
    "format_bytes",
    "measure_pinned_peak",
    "parse_budget_spec",
    "resolve_capacities",
    "transfer_for",
]
