"""The ONNX backend test suite, a fixed subset (one case per operator plus the simple models), in CI.

Every case listed in ``expected_pass_<runner>.txt`` passed when the list was written and must
still pass: a regression fails here with the case name and the reason. The full suite runs with
``python benchmarks/conformance.py --out CONFORMANCE.md`` (see docs/conformance.md); refresh the
lists with ``python benchmarks/conformance.py --runners auto,onnxruntime
--names-file tests/conformance/subset.txt --write-expected tests/conformance``.
"""

from __future__ import annotations

import pathlib

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from aivmm import _conformance
from aivmm._conformance import Status

HERE = pathlib.Path(__file__).parent
SUBSET = _conformance.read_list(HERE / "subset.txt")
RUNNERS = ("auto", "onnxruntime")
EXPECTED = {r: _conformance.read_list(HERE / f"expected_pass_{r}.txt") for r in RUNNERS}

_tables: dict[str, dict[str, _conformance.Case]] = {}


def _table(runner: str) -> dict[str, _conformance.Case]:
    if runner not in _tables:
        _tables[runner] = _conformance.cases(_conformance.backend_for(runner), kinds=("node", "simple"))
    return _tables[runner]


def test_lists_are_consistent() -> None:
    assert len(SUBSET) == len(set(SUBSET)) >= 150
    for runner, names in EXPECTED.items():
        assert set(names) <= set(SUBSET), f"{runner}: expected-pass names outside the subset"
        assert len(names) >= 0.8 * len(SUBSET), f"{runner}: the expected-pass list shrank below 80% of the subset"


@pytest.mark.parametrize(("runner", "name"), [(r, n) for r in RUNNERS for n in EXPECTED[r]])
def test_still_passes(runner: str, name: str) -> None:
    case = _table(runner).get(name)
    assert case is not None, f"{name} is not in the installed onnx's backend suite (onnx version changed?)"
    out = _conformance.run_case(case)
    assert out.status is Status.PASS, f"{runner}: {name} regressed: {out.status.value}: {out.reason} ({out.detail})"


def test_auto_passes_at_least_what_onnxruntime_alone_passes() -> None:
    # The point of auto placement: it never does worse than its best single backend on the subset.
    assert set(EXPECTED["onnxruntime"]) <= set(EXPECTED["auto"])


def test_cases_won_back_stay_in_ci() -> None:
    # Cases auto once lost although one of its backends passed them (a backend that answers wrong,
    # ai.onnx.ml-only models): each must stay in the subset and on the auto expected-pass list.
    assert set(_conformance.WON_BACK) <= set(SUBSET)
    assert set(_conformance.WON_BACK) <= set(EXPECTED["auto"])
