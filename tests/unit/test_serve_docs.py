"""docs/serve.md states the error table and the metric names the code has (no drift)."""

from __future__ import annotations

import pathlib

from aivmm.serve._errors import table
from aivmm.telemetry import METRICS

DOC = pathlib.Path(__file__).parents[2] / "docs" / "serve.md"


def test_error_table_is_documented() -> None:
    text = DOC.read_text()
    for row in table():
        assert f"| `{row['error']}` | {row['http']} | `{row['grpc']}` |" in text, row


def test_every_metric_is_documented() -> None:
    text = DOC.read_text()
    for name, (kind, labels, _) in METRICS.items():
        assert f"| `{name}` | {kind} | {', '.join(labels)} |" in text, name
