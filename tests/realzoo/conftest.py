"""The real-model zoo lives in ``benchmarks/realzoo`` (shared with the benchmarks, not installed):
put ``benchmarks/`` on the import path."""

from __future__ import annotations

import pathlib
import sys

_BENCHMARKS = str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)
