"""Record ``aivmm devices --json --bench --check`` on a GPU machine and compare with the datasheet.

Usage (on the H100 machine)::

    python benchmarks/devices_gpu.py tests/fixtures/devices/nvidia/aivmm_devices_h100.json

Writes the CLI's JSON to the given file (measuring afresh, ignoring the figures cache) and prints
each NVIDIA GPU's measured figures beside the H100 SXM datasheet: bf16 dense 989 TFLOP/s, HBM3
3.35 TB/s, PCIe Gen5 x16 ~63 GB/s per direction. Exit status is the CLI's (1 if a check failed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

from aivmm.cli.main import main as aivmm_main

DATASHEET_H100 = {"bf16_tflops": 989.0, "memory_bandwidth_gbps": 3350.0, "pcie_gbps": 63.0}


def run(output: Path) -> int:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = aivmm_main(["devices", "--json", "--bench", "--remeasure", "--check"])
    text = buffer.getvalue()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    devices = json.loads(text)
    print(f"wrote {len(devices)} devices to {output} (aivmm devices exit status {code})")
    for device in devices:
        figures = device.get("figures") or {}
        print(f"\n{device['id']}  {device['name']}  runtimes={device['runtimes']}")
        for check in device.get("check", []):
            print(f"  check {check['runtime'] or '-'}: {check['status']} {check['detail']}")
        if not figures:
            print(f"  figures: none ({device.get('figures_unavailable', '')})")
            continue
        for precision, value in sorted(figures["matmul_tflops"].items()):
            print(f"  matmul {precision:5s} {value:9.1f} {'TOPS' if precision == 'int8' else 'TFLOP/s'}")
        for key in ("memory_bandwidth_gbps", "h2d_pinned_gbps", "h2d_pageable_gbps", "d2h_pinned_gbps"):
            if figures.get(key) is not None:
                print(f"  {key:22s} {figures[key]:9.1f} GB/s")
        if device["vendor"] == "nvidia" and "H100" in device["name"]:
            rows = [
                ("bf16 dense matmul TFLOP/s", figures["matmul_tflops"].get("bf16"), DATASHEET_H100["bf16_tflops"]),
                ("HBM bandwidth GB/s", figures.get("memory_bandwidth_gbps"), DATASHEET_H100["memory_bandwidth_gbps"]),
                ("H2D pinned GB/s", figures.get("h2d_pinned_gbps"), DATASHEET_H100["pcie_gbps"]),
            ]
            print("  measured vs datasheet (H100 SXM5 80GB):")
            for label, measured, sheet in rows:
                ratio = f"{measured / sheet:.2f}" if measured else "-"
                print(f"    {label:28s} measured {measured or 0:9.1f}  datasheet {sheet:9.1f}  ratio {ratio}")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the JSON")
    sys.exit(run(parser.parse_args().output))
