"""The one error table: every aivmm error class maps to a sensible HTTP status and gRPC code."""

from __future__ import annotations

import inspect

import pytest

from aivmm import errors as e
from aivmm.serve._errors import PayloadTooLargeError, message_for, status_for, table

EXPECTED = {
    e.InputError: (400, "INVALID_ARGUMENT"),
    e.ConfigError: (400, "INVALID_ARGUMENT"),
    e.ModelNotFoundError: (404, "NOT_FOUND"),
    e.ModelNotReadyError: (503, "UNAVAILABLE"),
    e.OverloadedError: (429, "RESOURCE_EXHAUSTED"),
    e.DeadlineExceededError: (504, "DEADLINE_EXCEEDED"),
    e.PermissionDeniedError: (403, "PERMISSION_DENIED"),
    e.OutOfMemoryError: (503, "RESOURCE_EXHAUSTED"),
    e.InfeasibleError: (400, "FAILED_PRECONDITION"),
    e.ExecutionError: (500, "INTERNAL"),
    e.AivmmError: (500, "INTERNAL"),
    PayloadTooLargeError: (413, "RESOURCE_EXHAUSTED"),
}


@pytest.mark.parametrize(("cls", "want"), list(EXPECTED.items()), ids=lambda x: getattr(x, "__name__", str(x)))
def test_status_of_each_class(cls: type[Exception], want: tuple[int, str]) -> None:
    s = status_for(cls("boom"))
    assert (s.http, s.grpc) == want


def test_every_error_class_has_a_valid_grpc_code() -> None:
    grpc = pytest.importorskip("grpc")
    classes = [c for _, c in inspect.getmembers(e, inspect.isclass) if issubclass(c, e.AivmmError)]
    for cls in classes:
        try:
            exc = cls("x") if cls is not e.SimulationSpecError else cls("f", "x", "y")
        except TypeError:
            continue
        s = status_for(exc)
        assert hasattr(grpc.StatusCode, s.grpc), cls
        assert 400 <= s.http < 600


def test_non_aivmm_errors_are_internal_and_do_not_leak_details() -> None:
    assert status_for(KeyError("secret")).http == 500
    assert "secret" not in message_for(KeyError("secret"))
    assert message_for(e.InputError("input 'x' wrong")) == "input 'x' wrong"


def test_table_rows_most_specific_first() -> None:
    rows = table()
    seen: list[type] = []
    by_name = {c.__name__: c for c in [*EXPECTED, e.ServingError, e.ModelClosedError]}
    for row in rows:
        cls = by_name.get(row["error"]) or getattr(e, row["error"], None)
        assert cls is not None
        assert not any(issubclass(cls, earlier) for earlier in seen), f"{cls.__name__} is shadowed"
        seen.append(cls)
