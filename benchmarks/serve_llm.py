"""LLM serving overhead: the streaming endpoints against the in-process ``DeployedLLM``.

1. One stream: median time between consecutive tokens through ``/v1/completions`` with
   ``stream=true`` (a lean SSE reader on http.client, and the official openai client) over the
   same figure from ``DeployedLLM.stream`` in this process. Goal: <= 1.5x.
2. ``--concurrency`` (16) streams at once: aggregate generated tokens/s through the server over
   the same number of concurrent in-process streams (threads). Goal: >= 0.8x. Also CPU seconds
   per token (server process + this client against the in-process run): on a machine shared
   with other work wall-clock ratios swing with the load, CPU time much less.

The server's copy and the in-process copy are deployed from the same export directory. Rounds
alternate in-process / server so machine noise hits both alike; the ratios are the medians of
per-round ratios. Greedy decoding with ``ignore_eos``, so every stream makes exactly ``--tokens``.

    python benchmarks/serve_llm.py [--model-dir DIR] [--rounds 5] [--tokens 64] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))

import serve_common

PROMPT = "The quick brown fox jumps over the lazy dog."


def _tpot(stamps: list[float], tokens: int | None = None) -> float:
    """Mean time per output token after the first (the usual TPOT; robust to bursty delivery).
    ``tokens``: how many the stamps stand for when some tokens sent no event of their own."""
    return (stamps[-1] - stamps[0]) / ((tokens or len(stamps)) - 1)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's children so far: the server subprocess."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    me = str(os.getpid())
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _completion_tokens(body: bytes) -> int:
    """The usage chunk's count (events are fewer than tokens: half a UTF-8 character sends nothing)."""
    m = re.search(rb'"completion_tokens":(\d+)', body)
    if m is None:
        raise RuntimeError(f"no usage in the stream: {body[-300:]!r}")
    return int(m.group(1))


def raw_streams(host: str, port: int, body: dict[str, Any], n: int) -> int:
    """``n`` streamed completions at once on raw sockets read by one thread (a client far cheaper
    than the server, so the figure is the server's); returns the token events received."""
    import selectors
    import socket

    payload = json.dumps(body).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    sel = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    for _ in range(n):
        sock = socket.create_connection((host, port), timeout=120)
        sock.sendall(request)
        sel.register(sock, selectors.EVENT_READ)
        received[sock] = bytearray()
    events, open_socks = 0, n
    deadline = time.monotonic() + 600
    while open_socks and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            data = sock.recv(1 << 16)
            buf = received[sock]
            buf += data
            if not data or b"data: [DONE]" in buf[-64:]:  # then only the chunked framing's end follows
                sel.unregister(sock)
                sock.close()
                events += _completion_tokens(bytes(buf))
                open_socks -= 1
    return events


def sse_stream(host: str, port: int, body: dict[str, Any]) -> tuple[list[float], int]:
    """Arrival time of every token event of one streamed completion (lean reader)."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request(
            "POST", "/v1/completions", body=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        stamps, last = [], b""
        while True:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                if line.startswith(b"data: [DONE]"):
                    break
                if b'"choices":[]' in line:  # the usage chunk
                    last = line
                else:
                    stamps.append(time.perf_counter())
        return stamps, _completion_tokens(last)
    finally:
        conn.close()


def openai_stream(client: Any, body: dict[str, Any]) -> float:
    stamps, tokens = [], 0
    for chunk in client.completions.create(
        model=body["model"],
        prompt=body["prompt"],
        max_tokens=body["max_tokens"],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ):
        if chunk.choices:
            stamps.append(time.perf_counter())
        else:
            tokens = chunk.usage.completion_tokens
    return _tpot(stamps, tokens)


def local_stream(llm: Any, tokens: int) -> list[float]:
    stamps = []
    for _ in llm.stream(PROMPT, max_new_tokens=tokens, temperature=0, ignore_eos=True):
        stamps.append(time.perf_counter())
    return stamps


def aggregate(run_one: Callable[[], list[float]], concurrency: int) -> tuple[float, int]:
    """(tokens/s over the wall time, tokens) for ``concurrency`` streams started together."""
    counts = [0] * concurrency
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        start.wait()
        try:
            counts[i] = len(run_one())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / wall, sum(counts)


def build_small_llama() -> pathlib.Path:
    """A Llama of ~3M random parameters through the tests' export pipeline (cached like theirs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import _llm_models as m

    def make(ids: dict[str, int]) -> Any:
        cfg = LlamaConfig(
            vocab_size=m.VOCAB_SIZE,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=m.CONTEXT,
            bos_token_id=ids[m.BOS],
            eos_token_id=ids[m.EOS],
            pad_token_id=ids[m.PAD],
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(cfg)

    return m._build("bench-small-llama-256", make, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", help="an Optimum with-past export (default: built, see --size)")
    ap.add_argument(
        "--size",
        choices=("tiny", "small"),
        default="small",
        help="tiny: the tests' 2-layer Llama (~0.2 ms/token, overhead-bound); small: a 4-layer "
        "hidden-256 Llama with random weights (~ms/token on a CPU core)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    ap.add_argument("--streams", type=int, default=3, help="single streams per round and path")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    import openai

    from aivmm.vmm import VMM

    if args.model_dir:
        src = pathlib.Path(args.model_dir)
    elif args.size == "tiny":
        from _llm_models import build_tiny_llama

        src = build_tiny_llama()
    else:
        src = build_small_llama()
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp) / "repo"
        shutil.copytree(src, repo / "llm", ignore=shutil.ignore_patterns("hf"))
        body = {
            "model": "llm",
            "prompt": PROMPT,
            "max_tokens": args.tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        with (
            VMM() as vmm,
            serve_common.server(
                repo, "--no-measure", "--grpc-port", "-1", "--max-inflight", str(max(64, args.concurrency))
            ) as ready,
        ):
            llm = vmm.deploy(str(repo / "llm"), measure=False)
            host, port = "127.0.0.1", int(ready["http_port"])
            client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused", max_retries=0)
            for _ in range(2):  # warm both paths (first requests pay lazy set-up)
                local_stream(llm, 8)
                sse_stream(host, port, {**body, "max_tokens": 8})
            rows = []
            for r in range(args.rounds):
                loc, srv, oai = [], [], []
                for _ in range(args.streams):
                    loc.append(_tpot(local_stream(llm, args.tokens)))
                    srv.append(_tpot(*sse_stream(host, port, body)))
                    oai.append(openai_stream(client, body))
                c0 = time.process_time()
                loc_tps, n_loc = aggregate(lambda: local_stream(llm, args.tokens), args.concurrency)
                loc_cpu = (time.process_time() - c0) / n_loc
                c0, s0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
                n_srv = raw_streams(host, port, body, args.concurrency)
                srv_tps = n_srv / (time.perf_counter() - t0)
                srv_cpu = (time.process_time() - c0 + _children_cpu() - s0) / n_srv
                row = {
                    "round": r,
                    "local_tpot_ms": statistics.median(loc) * 1e3,
                    "server_tpot_ms": statistics.median(srv) * 1e3,
                    "openai_client_tpot_ms": statistics.median(oai) * 1e3,
                    "local_tokens_per_s": loc_tps,
                    "server_tokens_per_s": srv_tps,
                    "tokens": [n_loc, n_srv],
                    "local_cpu_ms_per_token": loc_cpu * 1e3,
                    "server_cpu_ms_per_token": srv_cpu * 1e3,
                    "load_average": os.getloadavg()[0],
                }
                row["cpu_ratio"] = srv_cpu / loc_cpu
                row["tpot_ratio"] = row["server_tpot_ms"] / row["local_tpot_ms"]
                row["openai_tpot_ratio"] = row["openai_client_tpot_ms"] / row["local_tpot_ms"]
                row["throughput_ratio"] = srv_tps / loc_tps
                rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    summary = {
        "machine": serve_common.machine(),
        "model_dir": str(src),
        "tokens": args.tokens,
        "concurrency": args.concurrency,
        "median_tpot_ratio": statistics.median(r["tpot_ratio"] for r in rows),
        "median_openai_tpot_ratio": statistics.median(r["openai_tpot_ratio"] for r in rows),
        "median_throughput_ratio": statistics.median(r["throughput_ratio"] for r in rows),
        "median_local_tpot_ms": statistics.median(r["local_tpot_ms"] for r in rows),
        "median_server_tpot_ms": statistics.median(r["server_tpot_ms"] for r in rows),
        "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rows),
        "median_load_average": statistics.median(r["load_average"] for r in rows),
        "median_local_tokens_per_s": statistics.median(r["local_tokens_per_s"] for r in rows),
        "median_server_tokens_per_s": statistics.median(r["server_tokens_per_s"] for r in rows),
        "rounds": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))
    print(
        f"one stream, per-token latency server/in-process: {summary['median_tpot_ratio']:.3f} (goal <= 1.5); "
        f"{args.concurrency} streams, tokens/s server/in-process: {summary['median_throughput_ratio']:.3f} "
        f"(goal >= 0.8); CPU per token server+client/in-process: {summary['median_cpu_ratio']:.3f}; "
        f"load average {summary['median_load_average']:.1f} on {os.cpu_count()} cores"
    )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
