"""``aivmm status --url URL``: a running server's devices and models, printed once."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's HTTP address")
    parser.add_argument("--json", action="store_true", help="print the raw status document")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from aivmm.telemetry import fetch_status, normalise_url, render_status

    doc = fetch_status(args.url, timeout_s=args.timeout)
    if args.json:
        doc.pop("_fetched", None)
        print(json.dumps(doc, indent=2, default=str))
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe: wide enough that no column is cut
    console.print(render_status(doc, url=normalise_url(args.url)))
    return 0
