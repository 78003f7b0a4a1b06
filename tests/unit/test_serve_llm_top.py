"""The text-generation table of ``aivmm top`` from two plain status documents."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from aivmm.telemetry._view import render, token_rates


def _doc(t: float, tokens: int, used: int) -> dict[str, Any]:
    llm = {
        "running": 3,
        "waiting": 1,
        "kv_tokens_used": used,
        "kv_tokens_capacity": 4096,
        "completion_tokens_total": tokens,
        "ttft_ms_p50": 12.5,
        "tpot_ms_p50": 0.75,
        "cancelled": 2,
    }
    return {
        "_fetched": t,
        "server": {"version": "x", "ready": True},
        "devices": [],
        "models": [
            {"name": "llama", "version": "1", "state": "READY", "llm": llm},
            {"name": "double", "version": "1", "state": "READY"},
        ],
    }


def test_token_rates_and_table() -> None:
    before, now = _doc(10.0, 100, 0), _doc(12.0, 500, 1024)
    assert token_rates(now, before) == {"llama:1": 200.0}
    assert token_rates(now, None) == {}
    console = Console(width=220, record=True)
    console.print(render(now, before))
    out = console.export_text()
    row = next(line for line in out.splitlines() if line.startswith("│ llama") and "1024/4096" in line)
    for cell in ("25%", "200.0", "12.50", "0.75", "500"):
        assert cell in row, (cell, row)


def test_no_llm_no_table() -> None:
    doc = _doc(1.0, 0, 0)
    doc["models"] = doc["models"][1:]
    console = Console(width=200, record=True)
    console.print(render(doc))
    assert "text generation" not in console.export_text()
