"""``aivmm devices``: list devices; ``--bench`` adds measured figures, ``--check`` runs a tiny
computation through every runtime that claims each device. Works with numpy alone (plain text
table when rich is not installed)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aivmm.devices import Device, DiscoveryReport, discover_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of devices")
    parser.add_argument("--bench", action="store_true", help="add measured figures (cached; ~30 s per new device)")
    parser.add_argument("--remeasure", action="store_true", help="with --bench: measure again, ignoring the cache")
    parser.add_argument("--check", action="store_true", help="run a tiny Add model on every device and runtime")
    parser.add_argument("--simulate", metavar="FILE", help="add simulated devices from FILE (like AIVMM_SIMULATE)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="probe deadline in seconds (2)")


def run(args: argparse.Namespace) -> int:
    report = discover_report(args.simulate, timeout_s=args.timeout, refresh=True)
    figures = _bench(report.devices, args.remeasure) if args.bench else {}
    checks = _checks(report.devices) if args.check else {}
    if args.json:
        print(json.dumps(_json(report, figures, checks), indent=2, default=str))
    else:
        _render(report, figures, checks, args.bench, args.check)
    failed = any(r.status.value == "fail" for results in checks.values() for r in results)
    return 1 if failed else 0


def _bench(devices: tuple[Device, ...], remeasure: bool) -> dict[str, tuple[Any, str]]:
    from aivmm.devices import bench

    out: dict[str, tuple[Any, str]] = {}
    for device in devices:
        ok, why = bench.can_measure(device)
        cached = None if remeasure else bench.figures(device)
        if cached is not None:
            out[device.id] = (cached, "cached")
        elif ok:
            print(f"measuring {device.id} ({device.name}), up to {bench.DEFAULT_BUDGET_S:g} s ...", file=sys.stderr)
            out[device.id] = (bench.measure(device), "measured")
        else:
            out[device.id] = (None, why)
    return out


def _checks(devices: tuple[Device, ...]) -> dict[str, tuple[Any, ...]]:
    from aivmm.devices import check_device

    return {device.id: check_device(device) for device in devices}


def _json(report: DiscoveryReport, figures: dict[str, tuple[Any, str]], checks: dict[str, tuple[Any, ...]]) -> Any:
    out = []
    for device in report.devices:
        entry = device.to_json()
        if device.id in figures:
            fig, why = figures[device.id]
            entry["figures"] = fig.to_json() if fig is not None else None
            if fig is None:
                entry["figures_unavailable"] = why
        if device.id in checks:
            entry["check"] = [r.to_json() for r in checks[device.id]]
        out.append(entry)
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
Table = tuple[str, list[str], list[list[str]]]


def _device_table(report: DiscoveryReport) -> Table:
    header = ["ID", "NAME", "MEMORY GiB free/total", "PRECISIONS", "FEATURES", "RUNTIMES"]
    rows = []
    for d in report.devices:
        precisions = [p for p in _PRECISIONS if p in d.features]
        name = d.name + (" [simulated]" if d.simulated else "")
        memory = f"{_gib(d.memory_free_bytes)}/{_gib(d.memory_total_bytes)}" if d.memory_total_bytes else "unknown"
        rows.append(
            [
                d.id,
                name,
                memory,
                " ".join(precisions),
                " ".join(sorted(d.features - set(precisions))),
                " ".join(d.runtimes) or "-",
            ]
        )
    return f"aivmm devices ({len(rows)})", header, rows


def _figures_table(figures: dict[str, tuple[Any, str]]) -> Table:
    units = [f"{p} {'TOPS' if p == 'int8' else 'TFLOP/s'}" for p in _PRECISIONS]
    header = ["ID", *units, "MEM GB/s", "H2D GB/s pinned", "H2D GB/s pageable", "SOURCE"]
    rows = []
    for device_id, (fig, why) in figures.items():
        if fig is None:
            rows.append([device_id, *("-" for _ in _PRECISIONS), "-", "-", "-", f"not measured: {why}"])
            continue
        cells = [f"{fig.matmul_tflops[p]:.3g}" if p in fig.matmul_tflops else "-" for p in _PRECISIONS]
        numbers = [
            f"{v:.1f}" if v else "-" for v in (fig.memory_bandwidth_gbps, fig.h2d_pinned_gbps, fig.h2d_pageable_gbps)
        ]
        by = ", ".join(f"{p}:{r}" for p, r in fig.measured_by.items())
        rows.append([device_id, *cells, *numbers, f"{why} ({by})"])
    return "measured figures (matmul per precision, copies)", header, rows


def _check_table(checks: dict[str, tuple[Any, ...]]) -> Table:
    rows = [
        [device_id, r.runtime or "-", r.status.value.upper(), r.detail]
        for device_id, results in checks.items()
        for r in results
    ]
    return "check: Add(a, b) on every device through every runtime", ["ID", "RUNTIME", "RESULT", "DETAIL"], rows


def _render(
    report: DiscoveryReport,
    figures: dict[str, tuple[Any, str]],
    checks: dict[str, tuple[Any, ...]],
    bench: bool,
    check: bool,
) -> None:
    tables = [_device_table(report)]
    if bench:
        tables.append(_figures_table(figures))
    if check:
        tables.append(_check_table(checks))
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table as RichTable
    except ImportError:
        for table in tables:
            _plain(*table)
    else:
        console = Console()
        for title, header, rows in tables:
            rich_table = RichTable(title=title, title_justify="left")
            for column in header:
                rich_table.add_column(column, overflow="fold")
            for row in rows:
                rich_table.add_row(*(escape(cell) for cell in row))  # "[simulated]" is text, not markup
            console.print(rich_table)
    for probe in report.probes:
        if probe.reason:
            print(f"  {probe.probe}: {probe.reason}")
    for device_id, (fig, _) in figures.items():
        for note in fig.notes if fig is not None else ():
            print(f"  figures {device_id}: {note}")


def _plain(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(title)
    widths = [max([len(header[i]), *(len(r[i]) for r in rows)]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
