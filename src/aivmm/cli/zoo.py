"""``aivmm zoo [list|build [NAME...] [--size tiny|full]]``: the built-in model zoo."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=("list", "build"),
        default="list",
        help="list the models (default) or build them into the cache",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="models to build (default: all)")
    parser.add_argument(
        "--size",
        choices=("tiny", "full"),
        default="tiny",
        help="tiny (tests, demos) or full (the real architecture's size, for benchmarks)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from aivmm.errors import ConfigError
    from aivmm.models import zoo

    if args.action == "list":
        if args.names:
            raise ConfigError("'aivmm zoo list' takes no names; use 'aivmm zoo build NAME...'")
        rows = []
        for name in zoo.names():
            entry = zoo.info(name)
            row = entry.to_json()
            row["default"] = name == zoo.default_model()
            row["cached"] = {size: zoo.path(name, size).is_file() for size in zoo.SIZES}
            rows.append(row)
        if args.json:
            print(json.dumps({"cache_dir": str(zoo.cache_dir()), "models": rows}, indent=2))
            return 0
        print(f"{'NAME':<10} {'CATEGORY':<14} {'CACHED':<10} DESCRIPTION")
        for row in rows:
            cached = ",".join(s for s, ok in row["cached"].items() if ok) or "-"
            category = "+".join(row["categories"]) + ("*" if row["default"] else "")
            print(f"{row['name']:<10} {category:<14} {cached:<10} {row['description']}")
        print(f"* default model; cache: {zoo.cache_dir()}")
        return 0
    names = args.names or zoo.names()
    for name in names:
        zoo.info(name)  # refuse an unknown name before building anything
    built = []
    for name in names:
        start = time.perf_counter()
        path = zoo.build(name, args.size, force=args.force)
        built.append(
            {
                "name": name,
                "size": args.size,
                "path": str(path),
                "bytes": path.stat().st_size,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        if not args.json:
            row = built[-1]
            print(f"{name:<10} {args.size:<5} {row['bytes'] / 1e6:9.1f} MB  {row['seconds']:6.2f} s  {path}")
    if args.json:
        print(json.dumps({"built": built}, indent=2))
    return 0
