"""Run the ONNX backend test suite through aivmm and through onnxruntime, and publish the counts.

    python benchmarks/conformance.py --out CONFORMANCE.md                 # everything (~10-20 min, 2 cores)
    python benchmarks/conformance.py --runners auto,ort-native --filter 'test_(abs|conv)'
    python benchmarks/conformance.py --json results.json --out /tmp/c.md

Runners (see aivmm._conformance.RUNNERS): ``auto`` (VMM placement), ``onnxruntime``, ``openvino``,
``torch`` (each aivmm backend alone) and ``ort-native`` (``onnxruntime.backend``). Suites: node,
simple, pytorch-converted and pytorch-operator tests of the installed onnx package, CPU device.

Each runner's cases run in worker subprocesses (this file with ``--worker``): the parent hands a
worker one case at a time and waits at most ``--timeout`` seconds for its answer; a worker that
hangs is killed (by its pid) and recorded as a timeout, one that dies is recorded as a crash, and
a fresh worker carries on with the next case. ``--jobs`` workers run at once.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from aivmm._conformance import KINDS, RUNNERS, Outcome, Status

HERE = os.path.dirname(os.path.abspath(__file__))
_STARTUP_S = 180.0  # a worker builds the suite (~5 s) and imports its runtime before its first answer


# -- worker side ------------------------------------------------------------------------------
def worker(runner: str, kinds: Sequence[str], device: str) -> int:
    """Read case names on stdin, answer one JSON line each on the protocol fd."""
    # The protocol gets the real stdout; anything a runtime prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from aivmm import _conformance

    if runner in ("auto", "torch"):
        # Device discovery asks each backend under one deadline; importing torch inside it takes
        # seconds on a loaded machine and can miss it, leaving torch off the device's runtimes.
        import torch  # noqa: F401

    backend = _conformance.backend_for(runner)
    reps: list[Any] = []
    if runner == "auto":
        backend.observer = reps.append

    def observe() -> tuple[str, tuple[str, ...]]:
        placement = reps[-1].config if reps else ""
        failed = tuple(f"{a.config} ({a.stage}): {a.error}" for r in reps for a in r.attempts if not a.ok)
        for r in reps:
            r.close()
        reps.clear()
        return placement, failed

    table = _conformance.cases(backend, kinds=kinds, device=device)
    proto.write(json.dumps({"ready": len(table)}) + "\n")
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        case = table.get(name)
        if case is None:
            out = Outcome(name, Status.ERROR, reason="no such case in this onnx version")
        else:
            out = _conformance.run_case(case, observe=observe if runner == "auto" else None)
        proto.write(json.dumps(out.to_json()) + "\n")
    return 0


# -- parent side ------------------------------------------------------------------------------
class _Worker:
    """One worker subprocess and a thread turning its answers into a queue (for timed waits)."""

    def __init__(self, runner: str, kinds: Sequence[str], device: str, log: IO[str]) -> None:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            runner,
            "--kinds",
            ",".join(kinds),
            "--device",
            device,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
        )
        self.answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self._next(_STARTUP_S)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.answers.put(line)
        self.answers.put(None)

    def _next(self, timeout: float) -> dict[str, Any] | None:
        try:
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if line is None else json.loads(line)

    def ask(self, name: str, timeout: float) -> Outcome:
        assert self.proc.stdin is not None
        start = time.perf_counter()
        try:
            self.proc.stdin.write(name + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return Outcome(name, Status.CRASH, reason="worker died", detail=f"exit {self.proc.poll()}")
        answer = self._next(timeout)
        if answer is not None:
            return Outcome.from_json(answer)
        elapsed = time.perf_counter() - start
        if self.proc.poll() is None:
            self.stop()
            return Outcome(name, Status.TIMEOUT, reason=f"no answer within {timeout:g} s", seconds=elapsed)
        code = self.proc.returncode
        return Outcome(name, Status.CRASH, reason=f"worker died (exit {code})", detail=f"exit {code}", seconds=elapsed)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # this worker's own pid, nothing broader
        self.proc.wait(timeout=30)


def run_chunk(
    runner: str, names: list[str], kinds: Sequence[str], device: str, timeout: float, log: IO[str], progress: Any
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    pending = collections.deque(names)
    w: _Worker | None = None
    try:
        while pending:
            if w is None or not w.alive:
                w = _Worker(runner, kinds, device, log)
                if w.ready is None:
                    w.stop()
                    # The runner cannot even start (its runtime missing, say): every case errors the same.
                    outcomes += [Outcome(n, Status.ERROR, reason="runner failed to start (see log)") for n in pending]
                    progress(runner, len(pending))
                    break
            name = pending.popleft()
            out = w.ask(name, timeout)
            outcomes.append(out)
            progress(runner, 1)
    finally:
        if w is not None:
            with_stdin = w.proc.stdin
            if with_stdin is not None and not with_stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    with_stdin.close()
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.stop()
    return outcomes


def list_cases(kinds: Sequence[str], device: str, pattern: str | None) -> dict[str, str]:
    """Case name -> kind, from the suite onnx ships (built against onnxruntime.backend, any backend will do)."""
    from aivmm import _conformance

    table = _conformance.cases(_conformance.backend_for("ort-native"), kinds=kinds, device=device)
    rx = re.compile(pattern) if pattern else None
    return {n: c.kind for n, c in sorted(table.items()) if rx is None or rx.search(n)}


# -- report -----------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("aivmm", "onnx", "onnxruntime", "openvino", "torch", "numpy"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", None) or getattr(m, "get_version", lambda: "?")())
        except Exception as exc:  # a runtime that cannot import is reported, not fatal
            out[mod] = f"unavailable ({type(exc).__name__})"
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def render(results: dict[str, list[Outcome]], kinds_of: dict[str, str], args: argparse.Namespace, wall_s: float) -> str:
    kinds = [k for k in KINDS if k in set(kinds_of.values())]
    runners = list(results)
    lines = [
        "# ONNX backend test suite through aivmm",
        "",
        "The ONNX project's backend test suite (`onnx.backend.test`, the yardstick onnxruntime itself runs),",
        "executed through `aivmm.onnx_backend` in auto placement and with each aivmm backend alone, and",
        "through onnxruntime's own `onnxruntime.backend` for reference. Produced by `benchmarks/conformance.py`;",
        "do not edit by hand.",
        "",
        f"- command: `{args.command_line}`",
        f"- date: {getattr(args, 'date', None) or _now()}",
        f"- machine: {_machine()}; device {args.device}; per-case timeout {args.timeout:g} s; "
        f"{args.jobs} workers; wall time {wall_s / 60:.1f} min",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()),
        f"- cases: {len(kinds_of)} ({', '.join(f'{k} {sum(v == k for v in kinds_of.values())}' for k in kinds)})"
        + (f", filter `{args.filter}`" if args.filter else ""),
        "",
        "## Pass counts",
        "",
        "| runner | what it is | " + " | ".join(kinds) + " | total passed | failed (wrong result) | errors | "
        "timeouts / crashes | skipped |",
        "| --- | --- | " + " | ".join("---:" for _ in kinds) + " | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runners:
        outs = results[r]
        by = collections.Counter(o.status for o in outs)
        per_kind = []
        for k in kinds:
            ks = [o for o in outs if kinds_of.get(o.test) == k]
            per_kind.append(f"{sum(o.status is Status.PASS for o in ks)} / {len(ks)}")
        lines.append(
            f"| `{r}` | {RUNNERS[r]} | "
            + " | ".join(per_kind)
            + f" | **{by[Status.PASS]}** | {by[Status.FAIL]} | {by[Status.ERROR]} | "
            f"{by[Status.TIMEOUT] + by[Status.CRASH]} | {by[Status.SKIP]} |"
        )
    lines += [
        "",
        *_goal(results),
        *_auto_section(results),
        *_only_section(results),
        *_none_section(results, kinds_of),
        *_lowering_section(results),
    ]
    lines += ["", "## Failures by reason", ""]
    for r in runners:
        bad = [o for o in results[r] if o.status not in (Status.PASS,)]
        lines += [f"### `{r}`: {len(bad)} not passed", ""]
        if not bad:
            lines += ["(none)", ""]
            continue
        groups: dict[str, list[Outcome]] = collections.defaultdict(list)
        for o in bad:
            groups[f"{o.status.value}: {o.reason}"].append(o)
        lines += ["| count | reason | examples |", "| ---: | --- | --- |"]
        for reason, outs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            examples = ", ".join(f"`{o.test.removeprefix('test_').removesuffix('_cpu')}`" for o in outs[:6])
            more = f" … (+{len(outs) - 6})" if len(outs) > 6 else ""
            lines.append(f"| {len(outs)} | {_cell(reason)} | {examples}{more} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _passed(results: dict[str, list[Outcome]], runner: str) -> set[str]:
    return {o.test for o in results.get(runner, []) if o.status is Status.PASS}


def _goal(results: dict[str, list[Outcome]]) -> list[str]:
    if "auto" not in results:
        return []
    auto = len(_passed(results, "auto"))
    out = ["## Goal check", ""]
    if "ort-native" in results:
        ort = len(_passed(results, "ort-native"))
        verdict = "met" if auto >= ort else "NOT met"
        out.append(f"- auto passes at least as many as onnxruntime alone: {auto} vs {ort}: **{verdict}**")
    singles = {r: len(_passed(results, r)) for r in ("onnxruntime", "openvino", "torch") if r in results}
    if singles:
        best = max(singles, key=lambda r: singles[r])
        verdict = "met" if auto > singles[best] else "NOT met"
        out.append(
            f"- auto passes more than any single aivmm backend (best: `{best}` {singles[best]}): "
            f"{auto} vs {singles[best]}: **{verdict}**"
        )
        union = set().union(*(_passed(results, r) for r in singles))
        missed = union - _passed(results, "auto")
        verdict = "met" if not missed else "NOT met"
        out.append(
            f"- auto passes every case some aivmm backend passes alone (onnxruntime, openvino, torch: "
            f"{len(union)} cases): **{verdict}**" + (f" ({len(missed)} missed)" if missed else "")
        )
        if "ort-native" in results:
            everyone = union | _passed(results, "ort-native")
            lost = everyone - _passed(results, "auto")
            out.append(
                f"- ... and every case onnxruntime.backend passes too ({len(everyone)} cases in the union): "
                + ("**met**" if not lost else f"**NOT met**, {len(lost)} missed: {_names(lost, 30)}")
            )
        why = collections.Counter(o.reason for o in results["auto"] if o.test in missed)
        out.append(
            f"- passed by at least one aivmm backend alone: {len(union)} (the most a perfect choice per model "
            f"could reach); auto misses {len(missed)} of them"
            + (": " + ", ".join(f"{n} × {_cell(r)}" for r, n in why.most_common()) if missed else "")
        )
        if missed:
            out.append(
                "  (a backend that returns wrong numbers does not fail, so auto keeps it; those cases: "
                + _names(missed, 20)
                + ")"
            )
    return [*out, ""]


def _auto_section(results: dict[str, list[Outcome]]) -> list[str]:
    outs = [o for o in results.get("auto", []) if o.status is Status.PASS]
    if not outs:
        return []
    served = collections.Counter(o.placement.split("@", 1)[0] or "?" for o in outs)
    retried = [o for o in outs if o.attempts]
    lines = ["## Auto placement: who served the passing cases", "", "| backend | passing cases |", "| --- | ---: |"]
    lines += [f"| `{b}` | {n} |" for b, n in served.most_common()]
    lines += [
        "",
        f"{len(retried)} passing cases needed more than one configuration (the planner's first choice "
        "failed on the model; the next one was deployed and the attempt recorded).",
    ]
    for o in retried[:15]:
        lines.append(f"- `{o.test}` → `{o.placement}` after: {_cell('; '.join(o.attempts))[:300]}")
    return [*lines, ""]


def _only_section(results: dict[str, list[Outcome]]) -> list[str]:
    if "auto" not in results or "ort-native" not in results:
        return []
    auto, ort = _passed(results, "auto"), _passed(results, "ort-native")
    lines = [
        "## Auto vs onnxruntime alone, case by case",
        "",
        f"- pass with auto only ({len(auto - ort)}): " + _names(auto - ort),
        f"- pass with onnxruntime.backend only ({len(ort - auto)}): " + _names(ort - auto),
        "",
    ]
    return lines


# Why no runner passes a case, from the auto runner's failure (the one that tried every backend).
_NONE_CLASSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), c)
    for p, c in (
        (
            r"element type \w+ is not supported",
            "element type no aivmm backend takes at the model boundary (float8, float4, int2/int4, e8m0)",
        ),
        (
            r"sequence_type|optional_type",
            "sequence or optional values at the model boundary (aivmm's model spec is tensor-only)",
        ),
        (
            r"wrong values|wrong output shape|wrong output dtype|wrong number",
            "every backend that runs it answers differently from the reference",
        ),
        (
            r"opset newer|cannot run|cannot convert|no candidate|not registered|unsupported|FallbackError|"
            r"no onnxruntime kernel",
            "operator or type no aivmm backend implements",
        ),
        (r"ExecutionError|failed running|RuntimeError", "every backend that loads it fails while running"),
    )
)


def _none_class(o: Outcome) -> str:
    text = f"{o.status.value}: {o.reason} {o.detail}"
    return next((c for p, c in _NONE_CLASSES if p.search(text)), f"other: {o.reason}")


def _none_section(results: dict[str, list[Outcome]], kinds_of: dict[str, str]) -> list[str]:
    """Node cases that no runner passes, each with the class of reason (from auto's failure)."""
    if "auto" not in results:
        return []
    passed = set().union(*(_passed(results, r) for r in results))
    failing = [o for o in results["auto"] if o.test not in passed and kinds_of.get(o.test) == "node"]
    if not failing:
        return []
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for o in failing:
        groups[_none_class(o)].append(o.test.removeprefix("test_").removesuffix("_cpu"))
    lines = [
        "## Node cases no runner passes",
        "",
        f"{len(failing)} node cases pass with no runner here (auto, each aivmm backend alone, "
        "onnxruntime.backend). Reason classes from the auto runner's failure, which tried every backend:",
        "",
        "| reason class | count | cases |",
        "| --- | ---: | --- |",
    ]
    for cls, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"| {_cell(cls)} | {len(names)} | {', '.join(f'`{n}`' for n in sorted(names))} |")
    return [*lines, ""]


_NO_LOWERING = re.compile(r"operator (\w+) \(domain '([^']*)'")


def _lowering_section(results: dict[str, list[Outcome]]) -> list[str]:
    """The torch lowering's to-do list: operators it refuses, by how many cases each would unlock."""
    blocked: collections.Counter[str] = collections.Counter()
    for o in results.get("torch", []):
        m = _NO_LOWERING.search(o.detail)
        if o.status is not Status.PASS and m:
            blocked[f"{m.group(2) + '.' if m.group(2) else ''}{m.group(1)}"] += 1
    if not blocked:
        return []
    top = ", ".join(f"`{op}` {n}" for op, n in blocked.most_common(30))
    return [
        "## Torch lowering: operators it has no lowering for",
        "",
        f"{len(blocked)} operators, blocking {sum(blocked.values())} cases (operator: cases): {top}"
        + (" …" if len(blocked) > 30 else ""),
        "",
    ]


def _names(names: set[str], limit: int = 40) -> str:
    shown = sorted(names)[:limit]
    text = ", ".join(f"`{n}`" for n in shown)
    return text + (f" … (+{len(names) - limit})" if len(names) > limit else "") if names else "none"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the markdown report here (e.g. CONFORMANCE.md)")
    p.add_argument("--json", help="write every outcome as JSON here")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"comma list of {', '.join(RUNNERS)}")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--filter", help="regular expression on case names")
    p.add_argument("--device", default="CPU", help="ONNX device string (CPU, CUDA)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case before the worker is killed")
    p.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="workers at once")
    p.add_argument("--names-file", help="run only the case names listed in this file (one a line)")
    p.add_argument("--write-subset", metavar="FILE", help="write the fixed CI subset (one case per operator) and exit")
    p.add_argument(
        "--write-expected",
        metavar="DIR",
        help="write expected_pass_<runner>.txt (the cases each runner passed) into DIR",
    )
    p.add_argument("--log", help="where the workers' stderr goes (default: a file in the temp directory)")
    p.add_argument("--render", metavar="JSON", help="write the report from an earlier run's --json file; run nothing")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if args.worker:
        return worker(args.worker, kinds, args.device)
    runners = [r for r in args.runners.split(",") if r]
    unknown = [r for r in runners if r not in RUNNERS] + [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown runner/kind {unknown}")
    if args.jobs < 1 or args.timeout <= 0:
        p.error("--jobs and --timeout must be positive")
    args.command_line = "python benchmarks/conformance.py " + " ".join(
        a if re.fullmatch(r"[\w./,=:-]+", a) else f"'{a}'" for a in (argv if argv is not None else sys.argv[1:])
    )
    from aivmm import _conformance

    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        loaded = {r: [Outcome.from_json(o) for o in v] for r, v in saved["results"].items()}
        args.command_line = saved.get("command", args.command_line)
        args.date = saved.get("date")
        report = render(loaded, saved["kinds"], args, float(saved.get("wall_s", 0.0)))
        with open(args.out, "w") if args.out else contextlib.nullcontext(sys.stdout) as f:
            f.write(report)
        return 0
    if args.write_subset:
        subset = _conformance.select_subset()
        header = (
            f"# CI subset of the ONNX backend suite: the first node case of each operator, the simple\n"
            f"# models, and the cases auto placement won back (aivmm._conformance.WON_BACK).\n"
            f"# Written by `{args.command_line}`; onnx {_versions()['onnx']}.\n"
        )
        with open(args.write_subset, "w") as f:
            f.write(header + "\n".join(subset) + "\n")
        print(f"{len(subset)} cases -> {args.write_subset}", file=sys.stderr)
        return 0
    kinds_of = list_cases(kinds, args.device, args.filter)
    if args.names_file:
        wanted = set(_conformance.read_list(args.names_file))
        missing = sorted(wanted - set(kinds_of))
        if missing:
            print(f"warning: {len(missing)} listed cases are not in this onnx version: {missing[:5]}", file=sys.stderr)
        kinds_of = {n: k for n, k in kinds_of.items() if n in wanted}
    names = list(kinds_of)
    print(f"{len(names)} cases x {len(runners)} runners, {args.jobs} workers", file=sys.stderr)
    done: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start = time.perf_counter()

    def progress(runner: str, n: int) -> None:
        with lock:
            done[runner] += n
            total = sum(done.values())
            if total % 200 == 0 or done[runner] == len(names):
                print(
                    f"  [{time.perf_counter() - start:6.0f} s] {runner}: {done[runner]}/{len(names)}", file=sys.stderr
                )

    # Chunks interleave the case list so each worker of a runner sees a mix of slow and fast cases.
    chunks = [(r, names[i :: args.jobs]) for r in runners for i in range(args.jobs)]
    log_path = args.log or os.path.join(tempfile.gettempdir(), "aivmm-conformance-workers.log")
    print(f"workers' stderr -> {log_path}", file=sys.stderr)
    results: dict[str, list[Outcome]] = {r: [] for r in runners}
    with open(log_path, "w") as log, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_chunk, r, c, kinds, args.device, args.timeout, log, progress): r for r, c in chunks}
        for fut in concurrent.futures.as_completed(futures):
            results[futures[fut]] += fut.result()
    wall = time.perf_counter() - start
    for r in runners:
        results[r].sort(key=lambda o: o.test)
        c = collections.Counter(o.status.value for o in results[r])
        print(f"{r:12s} " + " ".join(f"{k}={v}" for k, v in sorted(c.items())), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": args.command_line,
                    "date": _now(),
                    "wall_s": wall,
                    "kinds": kinds_of,
                    "results": {r: [o.to_json() for o in v] for r, v in results.items()},
                },
                f,
                indent=1,
            )
    if args.write_expected:
        for r in runners:
            path = os.path.join(args.write_expected, f"expected_pass_{r.replace('-', '_')}.txt")
            with open(path, "w") as f:
                f.write(
                    f"# Cases the `{r}` runner passed; CI fails when one of them stops passing.\n"
                    f"# Written by `{args.command_line}`.\n"
                )
                f.write("".join(f"{o.test}\n" for o in results[r] if o.status is Status.PASS))
    report = render(results, kinds_of, args, wall)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    else:
        sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
