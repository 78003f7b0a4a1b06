"""``aivmm bench TARGET``: load-test a model file, a zoo model or a running server.

    aivmm bench resnet50 --size full --concurrency 1,2,4 --duration 5
    aivmm bench http://127.0.0.1:8000 --model resnet50 --rate 20,40 --plot out/
    aivmm bench grpc://127.0.0.1:8001 --model resnet50

Closed loop: N workers each send the next request when the last is answered (a concurrency
sweep). Open loop: Poisson arrivals at a given rate, latency counted from the scheduled arrival.
Durations are bounded; the report gives p50/p90/p99 and throughput per level.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from typing import Any

import numpy as np

from aivmm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="an ONNX file, a zoo model name, or a server URL (http://…, grpc://…)")
    parser.add_argument("--model", help="model name on the server (default: the only one loaded)")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="zoo model size (default tiny)")
    parser.add_argument("--batch", type=int, default=1, help="items per request (default 1)")
    parser.add_argument(
        "--concurrency", default="1,2,4", help="closed-loop levels, comma-separated (default 1,2,4; '' to skip)"
    )
    parser.add_argument("--rate", default="", help="open-loop Poisson rates in requests/s, comma-separated")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per level (default 5, at most 600)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per closed-loop level")
    parser.add_argument("--json-tensors", action="store_true", help="HTTP: send JSON tensors instead of binary")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--plot", type=pathlib.Path, metavar="DIR", help="write latency_cdf.png and throughput.png (needs matplotlib)"
    )
    parser.add_argument("--no-measure", action="store_true", help="in-process: plan without measuring")
    parser.add_argument("--device", help="in-process: pin a device id")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="LLM mode: prompt length (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="LLM mode: tokens per request (default 64)")
    parser.add_argument(
        "--llm",
        action="store_true",
        help="LLM mode against a server URL (OpenAI /v1/completions, streamed; needs --model)",
    )


def _levels(text: str, kind: type, flag: str) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ConfigError(f"{flag} values must be positive")
    return values


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://", "grpc://"))


def _server_model(url: str, name: str | None) -> tuple[str, dict[str, Any]]:
    import urllib.request

    base = url.rstrip("/")
    if name is None:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/v2/repository/index", data=b"{}"), timeout=30) as r:
            ready = [m["name"] for m in json.load(r) if m.get("state") == "READY"]
        if len(ready) != 1:
            raise ConfigError(f"--model is needed: the server has {len(ready)} ready models {sorted(set(ready))}")
        name = ready[0]
    try:
        with urllib.request.urlopen(f"{base}/v2/models/{name}", timeout=30) as r:
            return name, json.load(r)
    except OSError as exc:
        raise ConfigError(f"cannot read the metadata of model {name!r} at {base}: {exc}") from exc


def _feeds_from_metadata(name: str, meta: dict[str, Any], batch: int, size: str) -> dict[str, np.ndarray]:
    from aivmm.dtypes import DType
    from aivmm.models import zoo

    if name in zoo.names():
        return zoo.sample_inputs(name, size, batch=batch)
    rng = np.random.default_rng(0)
    feeds = {}
    for t in meta["inputs"]:
        shape = tuple(batch if (d < 0 and j == 0) else (1 if d < 0 else d) for j, d in enumerate(t["shape"]))
        dtype = DType.from_kserve(t["datatype"])
        if dtype.is_float:
            feeds[t["name"]] = rng.standard_normal(shape).astype(dtype.to_numpy())
        elif dtype is DType.BOOL:
            feeds[t["name"]] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[t["name"]] = rng.integers(0, 2, shape).astype(dtype.to_numpy())
    return feeds


def _target(args: argparse.Namespace) -> tuple[str, Any, Any]:
    """(label, request factory, resource to close)."""
    from aivmm.serve import loadgen as lg

    if _is_url(args.target):
        http_url = args.target if args.target.startswith("http") else None
        if http_url is None:
            if args.model is None:
                raise ConfigError("--model is needed with a grpc:// target")
            import tritonclient.grpc as tg

            client = tg.InferenceServerClient(args.target.split("//", 1)[1])
            meta = client.get_model_metadata(args.model, as_json=True)
            meta["inputs"] = [{**i, "shape": [int(d) for d in i["shape"]]} for i in meta["inputs"]]
            feeds = _feeds_from_metadata(args.model, meta, args.batch, args.size)
            return f"{args.model} via {args.target}", lg.grpc_target(args.target, args.model, feeds), None
        name, meta = _server_model(http_url, args.model)
        feeds = _feeds_from_metadata(name, meta, args.batch, args.size)
        return (f"{name} via {http_url}", lg.http_target(http_url, name, feeds, binary=not args.json_tensors), None)
    from aivmm.models import zoo
    from aivmm.vmm import VMM

    path = pathlib.Path(args.target)
    if path.is_file():
        from aivmm.cli.run import random_inputs
        from aivmm.models import load

        spec = load(str(path))
        feeds = random_inputs(spec)
        if args.batch != 1 and spec.batch_dim is not None:
            feeds = {k: np.repeat(v, args.batch, axis=spec.batch_dim) for k, v in feeds.items()}
        source: Any = str(path)
    elif args.target in zoo.names():
        source = zoo.build(args.target, args.size)
        feeds = zoo.sample_inputs(args.target, args.size, batch=args.batch)
    else:
        raise ConfigError(f"{args.target!r} is not a file, a zoo model ({', '.join(zoo.names())}) or a URL")
    vmm = VMM()
    model = vmm.deploy(source, device=args.device, measure=not args.no_measure)
    chosen = model.plan.chosen.config.label() if model.plan.chosen else "?"
    return f"{args.target} in-process on {chosen}", lg.in_process(model, feeds), vmm


def run(args: argparse.Namespace) -> int:
    from aivmm.serve import loadgen as lg

    concurrency = _levels(args.concurrency, int, "--concurrency")
    rates = _levels(args.rate, float, "--rate")
    if not concurrency and not rates:
        raise ConfigError("nothing to run: give --concurrency and/or --rate levels")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60 or args.batch < 1:
        raise ConfigError("--duration must be in (0, 600], --warmup in [0, 60], --batch >= 1")
    if (args.llm and _is_url(args.target)) or (not _is_url(args.target) and _is_llm(args.target)):
        return _run_llm(args, concurrency)
    label, factory, resource = _target(args)
    results = []
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        err = Console(stderr=True)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=err, transient=True
        ) as progress:
            for c in concurrency:
                task = progress.add_task(f"closed loop, concurrency {c}", total=1.0)
                results.append(
                    lg.closed_loop(
                        factory,
                        c,
                        args.duration,
                        warmup_s=args.warmup,
                        label=label,
                        progress=functools.partial(_advance, progress, task),
                    )
                )
            for r in rates:
                task = progress.add_task(f"open loop, {r:g}/s", total=1.0)
                results.append(
                    lg.open_loop(
                        factory, r, args.duration, label=label, progress=functools.partial(_advance, progress, task)
                    )
                )
    finally:
        if resource is not None:
            resource.close()
    if args.json:
        print(json.dumps({"target": label, "results": [r.to_json() for r in results]}, indent=2))
    else:
        _print_table(label, results)
    if args.plot is not None:
        for path in plot(results, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if all(r.latencies for r in results) else 1


def _is_llm(target: str) -> bool:
    from aivmm.llm import is_llm_source

    return is_llm_source(target)


def _run_llm(args: argparse.Namespace, concurrency: list[int]) -> int:
    """LLM mode: concurrent generations; TTFT and time per output token percentiles, tokens/s."""
    from rich.console import Console
    from rich.table import Table

    from aivmm.errors import UnsupportedModelError
    from aivmm.llm import DeployedLLM, closed_loop
    from aivmm.vmm import VMM

    if not concurrency:
        raise ConfigError("LLM mode needs --concurrency levels (open-loop rates are not supported for LLMs)")
    kw = {"prompt_tokens": args.prompt_tokens, "new_tokens": args.max_new_tokens}
    if _is_url(args.target):
        from aivmm.llm import closed_loop_openai

        if args.model is None:
            raise ConfigError("--model is needed with --llm against a server")
        label = f"{args.model} via {args.target} (OpenAI completions, streamed)"
        closed_loop_openai(args.target, args.model, 1, min(args.warmup, args.duration), **kw)
        results = [closed_loop_openai(args.target, args.model, n, args.duration, **kw) for n in concurrency]
    else:
        with VMM() as vmm:
            llm = vmm.deploy(
                args.target,
                device=args.device,
                measure=not args.no_measure,
                batching={"max_batch_size": max(concurrency)},
            )
            if not isinstance(llm, DeployedLLM):
                raise UnsupportedModelError(f"{args.target} is not a decoder with a KV cache")
            label = f"{args.target} in-process on {llm.generation_plan.chosen.label}"
            closed_loop(llm, 1, min(args.warmup, args.duration), **kw)
            results = [closed_loop(llm, n, args.duration, **kw) for n in concurrency]
    if args.json:
        print(json.dumps({"target": label, "mode": "llm", "results": [r.to_json() for r in results]}, indent=2))
        return 0 if all(r.requests for r in results) else 1
    table = Table(
        title=f"aivmm bench (LLM): {label}, {args.prompt_tokens}-token prompts, {args.max_new_tokens} new tokens"
    )
    for col in ("streams", "requests", "errors", "tokens/s", "TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms"):
        table.add_column(col, justify="right")
    for r in results:
        j = r.to_json()
        table.add_row(
            str(r.concurrency),
            str(r.requests),
            str(r.errors),
            f"{r.tokens_per_s:.1f}",
            "/".join(f"{j['ttft_ms'][q]:.2f}" for q in ("p50", "p90", "p99")),
            "/".join(f"{j['tpot_ms'][q]:.3f}" for q in ("p50", "p90", "p99")),
        )
    Console().print(table)
    return 0 if all(r.requests for r in results) else 1


def _print_table(label: str, results: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"aivmm bench: {label}")
    for col in ("mode", "level", "requests", "errors", "throughput/s", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for r in results:
        j = r.to_json()
        level = f"{int(r.level)} workers" if r.mode == "closed" else f"{r.level:g}/s"
        table.add_row(
            r.mode,
            level,
            str(j["requests"]),
            str(j["errors"]),
            f"{j['throughput']:.1f}",
            f"{j['p50_ms']:.2f}",
            f"{j['p90_ms']:.2f}",
            f"{j['p99_ms']:.2f}",
        )
    Console().print(table)
    for r in results:
        for sample in r.error_samples[:2]:
            Console(stderr=True).print(
                f"[red]error[/red] ({r.mode} {r.level:g}): {sample}", markup=True, highlight=False
            )


def plot(results: list[Any], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """latency_cdf.png (every level) and, for closed loops, throughput.png against concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'aivmm[plots]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if not r.latencies:
            continue
        lat = np.sort(np.asarray(r.latencies)) * 1e3
        name = f"closed, {int(r.level)} workers" if r.mode == "closed" else f"open, {r.level:g}/s"
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=name)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("latency CDF")
    path = out_dir / "latency_cdf.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    closed = [r for r in results if r.mode == "closed"]
    if closed:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot([r.level for r in closed], [r.throughput for r in closed], "o-", label="throughput")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("requests / s")
        ax2 = ax.twinx()
        ax2.plot(
            [r.level for r in closed], [r.percentile(99) * 1e3 for r in closed], "s--", color="tab:red", label="p99"
        )
        ax2.set_ylabel("p99 latency (ms)")
        ax.set_title("throughput against concurrency")
        ax.grid(True, alpha=0.3)
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _advance(progress: Any, task: Any, fraction: float) -> None:
    """A load generator's progress callback (fraction done) onto one rich progress bar."""
    progress.update(task, completed=fraction)
