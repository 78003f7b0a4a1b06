"""The terminal view of a running server (``aivmm top`` live, ``aivmm status`` once).

Reads the server's JSON status endpoint (``GET /v2/aivmm/status``); throughput is the change in
request counts between two polls. Rendering is a pure function of two status documents, so it
is tested without a terminal.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from aivmm.errors import ConfigError, ServingError

STATUS_PATH = "/v2/aivmm/status"


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "//" not in url:
        url = f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must be an http(s) URL of an aivmm server, got {url!r}")
    return url


def fetch_status(url: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    target = normalise_url(url) + STATUS_PATH
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise ServingError(f"{target}: HTTP {exc.code} (is this an aivmm server?)") from exc
    except (OSError, ValueError) as exc:
        raise ServingError(f"cannot read {target}: {exc}") from exc
    if not isinstance(doc, dict) or "server" not in doc:
        raise ServingError(f"{target} did not return an aivmm status document")
    doc["_fetched"] = time.monotonic()
    return doc


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _per_second(
    doc: Mapping[str, Any], previous: Mapping[str, Any] | None, counts: Callable[[Mapping[str, Any]], dict[str, float]]
) -> dict[str, float]:
    """The change of each count per second between two status documents."""
    if previous is None:
        return {}
    dt = doc.get("_fetched", 0.0) - previous.get("_fetched", 0.0)
    if dt <= 0:
        return {}
    before = counts(previous)
    return {k: max(0.0, (v - before.get(k, v)) / dt) for k, v in counts(doc).items()}


def rates(doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, float]:
    """Requests per second per model (name:version) between two status documents."""
    return _per_second(
        doc,
        previous,
        lambda d: {f"{m['name']}:{m.get('version', '')}": m.get("requests", 0) for m in d.get("models", [])},
    )


def token_rates(doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, float]:
    """Generated tokens per second per LLM (name:version) between two status documents."""
    return _per_second(
        doc,
        previous,
        lambda d: {
            f"{m['name']}:{m.get('version', '')}": m["llm"].get("completion_tokens_total", 0)
            for m in d.get("models", [])
            if isinstance(m.get("llm"), Mapping)
        },
    )


def _llm_table(doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> Any:
    from rich.table import Table

    rows = [m for m in doc.get("models", []) if isinstance(m.get("llm"), Mapping)]
    if not rows:
        return None
    rate = token_rates(doc, previous)
    table = Table(title="text generation", expand=True, title_justify="left")
    for col in (
        "model",
        "ver",
        "running",
        "waiting",
        "KV used",
        "KV %",
        "tok/s",
        "TTFT p50 ms",
        "TPOT p50 ms",
        "tokens",
        "cancelled",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in rows:
        llm = m["llm"]
        used, cap = llm.get("kv_tokens_used"), llm.get("kv_tokens_capacity")
        pct = 100 * used / cap if isinstance(used, int | float) and isinstance(cap, int | float) and cap else None
        table.add_row(
            m["name"],
            str(m.get("version", "")),
            _num(llm.get("running"), "{:.0f}"),
            _num(llm.get("waiting"), "{:.0f}"),
            f"{_num(used, '{:.0f}')}/{_num(cap, '{:.0f}')}",
            _num(pct, "{:.0f}%"),
            _num(rate.get(f"{m['name']}:{m.get('version', '')}"), "{:.1f}"),
            _num(llm.get("ttft_ms_p50")),
            _num(llm.get("tpot_ms_p50")),
            _num(llm.get("completion_tokens_total"), "{:.0f}"),
            _num(llm.get("cancelled"), "{:.0f}"),
        )
    return table


def render(doc: Mapping[str, Any], previous: Mapping[str, Any] | None = None, *, url: str = "") -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    server = doc.get("server", {})
    rate = rates(doc, previous)
    total_rate = sum(rate.values()) if rate else None
    head = Text.assemble(
        ("aivmm ", "bold"),
        (f"{server.get('version', '?')} ", ""),
        (url or "", "cyan"),
        (f"  up {server.get('uptime_s', 0):.0f} s", ""),
        ("  ready" if server.get("ready") else "  NOT READY", "green" if server.get("ready") else "bold red"),
        (f"  requests {server.get('requests_total', 0)}", ""),
        (f"  {total_rate:.1f}/s" if total_rate is not None else "", "bold"),
        (f"  repository {server.get('repository', '')}", "dim"),
    )
    devices = Table(title="devices", expand=True, title_justify="left")
    for col in ("device", "memory used", "free", "total", "util", "power", "resident"):
        devices.add_column(col, justify="left" if col in ("device", "resident") else "right")
    for d in doc.get("devices", []):
        used, total = d.get("memory_used_bytes"), d.get("memory_total_bytes")
        pct = f" ({100 * used / total:.0f}%)" if isinstance(used, int | float) and total else ""
        util = d.get("utilization")
        devices.add_row(
            str(d.get("id")),
            _bytes(used) + pct,
            _bytes(d.get("memory_free_bytes")),
            _bytes(total),
            f"{100 * util:.0f}%" if isinstance(util, int | float) else "-",
            f"{d['power_w']:.0f} W" if isinstance(d.get("power_w"), int | float) else "-",
            str(len(d.get("resident", []) or [])),
        )
    vmm_models = (doc.get("vmm") or {}).get("models", {}) or {}
    models = Table(title="models", expand=True, title_justify="left")
    for col in (
        "model",
        "ver",
        "state",
        "placement",
        "in flight",
        "queued",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "batch",
    ):
        models.add_column(col, justify="left" if col in ("model", "state", "placement") else "right")
    for m in doc.get("models", []):
        key = f"{m['name']}:{m.get('version', '')}"
        info = vmm_models.get(m.get("vmm_name", ""), {}) if isinstance(vmm_models, Mapping) else {}
        lat = m.get("latency_ms") or {}
        batches = info.get("batches") or {}
        state = str(m.get("state", ""))
        models.add_row(
            m["name"],
            str(m.get("version", "")),
            Text(state, style="green" if state == "READY" else "yellow"),
            str(m.get("placement", "-")),
            str(m.get("inflight", 0)),
            _num(info.get("queue_length"), "{:.0f}"),
            _num(rate.get(key), "{:.1f}"),
            _num(lat.get("p50")),
            _num(lat.get("p99")),
            str(m.get("errors", 0)),
            _num(batches.get("mean_size"), "{:.1f}") if batches.get("count") else "-",
        )
    llm = _llm_table(doc, previous)
    return Group(head, devices, models, *([llm] if llm is not None else []))
