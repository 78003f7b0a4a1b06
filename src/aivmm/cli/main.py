"""``aivmm`` command line: a lazy table of subcommands, each a module with ``add_arguments`` and
``run``. Modules are imported only when their subcommand runs, so ``aivmm devices`` works with no
runtime installed."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from aivmm._version import __version__
from aivmm.errors import AivmmError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "devices": ("aivmm.cli.devices", "list devices, optionally benchmark and check them"),
    "zoo": ("aivmm.cli.zoo", "list or build the built-in model zoo"),
    "analyze": ("aivmm.cli.analyze", "analyse a model: signature, parameters, FLOPs, memory, category"),
    "run": ("aivmm.cli.run", "deploy a model and run it (the built-in zoo when no model is given)"),
    "plan": ("aivmm.cli.plan", "plan a model's placement and explain the choice"),
    "serve": ("aivmm.cli.serve", "serve models over KServe v2 HTTP and gRPC"),
    "cluster": ("aivmm.cli.cluster", "this node's devices as Ray resources; the cluster's registry"),
    "status": ("aivmm.cli.status", "show a running server's devices and models"),
    "top": ("aivmm.cli.top", "live view of a running server"),
    "bench": ("aivmm.cli.bench", "load-test a model file or a server"),
    "generate": ("aivmm.cli.generate", "deploy a decoder LLM and stream generated text"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aivmm", description="AI virtual machine manager")
    parser.add_argument("--version", action="version", version=f"aivmm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            try:
                importlib.import_module(module).add_arguments(p)
            except ImportError:
                if name == only:
                    raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except AivmmError as exc:
        print(f"aivmm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
