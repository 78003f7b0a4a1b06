"""``aivmm top``: a live view of a running server (devices, models, queues, throughput, latency,
memory, power), refreshed every ``--interval`` seconds; ``--count N`` stops after N refreshes."""

from __future__ import annotations

import argparse
import time

from aivmm.errors import ConfigError, ServingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's HTTP address")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--count", type=int, default=None, help="stop after N refreshes (default: until Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from aivmm.telemetry import fetch_status, normalise_url, render_status

    if args.interval <= 0 or (args.count is not None and args.count < 1):
        raise ConfigError("--interval must be positive and --count at least 1")
    url = normalise_url(args.url)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe: wide enough that no column is cut
    previous = None
    frames = 0
    # A terminal gets a live in-place view; a pipe gets one frame per refresh (scripts, tests).
    with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _Plain() as live:
        while args.count is None or frames < args.count:
            try:
                doc = fetch_status(url)
                view = render_status(doc, previous, url=url)
                previous = doc
            except ServingError as exc:
                view = Text(f"{url}: {exc} (retrying)", style="bold red")
            if isinstance(live, Live):  # a terminal
                live.update(view, refresh=True)
            else:
                console.print(view)
            frames += 1
            if args.count is None or frames < args.count:
                time.sleep(args.interval)
    return 0


class _Plain:
    def __enter__(self) -> _Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
