"""Issue 17: aivmm on a GPU against the best PyTorch written by hand, in one process.

Models: torchvision's ResNet-50 and a transformers BERT-base encoder (sequence 128), random weights,
built on the GPU machine and exported to ONNX there (``torch.onnx.export``). For each, at batch 1
and batch 256, the median latency (synchronised after every call; throughput = batch / latency) of:

* ``hand eager fp32``: the torch module as written, eager, torch's default settings (cuDNN TF32 on);
* ``hand best``: the same module in bf16, channels-last (CNN), ``torch.compile(mode="reduce-overhead")``;
* ``aivmm auto <policy>``: ``VMM.deploy(onnx_file, {"precision": policy, "batch_size": b, ...})``,
  timed through ``DeployedModel.execute`` with the inputs already on the GPU and ``output="native"``
  (like the hand rows: no host copies); the plan's choice and deploy seconds are recorded.

Every aivmm output is compared with the hand fp32 output (max abs error relative to max |ref|).
``--second-deploy`` also times a deploy of the same model in a new process (plan cache and torch
compile caches on disk). Results: ``OUT/issue17.json`` (rows, plans) and ``OUT/issue17.md``.

On the GPU machine::

    python benchmarks/gpu/issue17.py --out OUT --models resnet50
    python benchmarks/gpu/issue17.py --out OUT --models bert

CPU smoke test (tiny models, no CUDA): ``python benchmarks/gpu/issue17.py --device cpu --size tiny --out /tmp/i17``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

BATCH_LATENCY, BATCH_THROUGHPUT = 1, 256
SEQ = 128


# -- models ---------------------------------------------------------------------------------------


def build_resnet(size: str) -> torch.nn.Module:
    try:
        from torchvision.models import resnet18, resnet50
    except ImportError:  # the development VM has no torchvision: the benchmark's own ResNet
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from torch_gpu import ResNet

        return ResNet(size)
    return resnet50() if size == "full" else resnet18(num_classes=10)


class BertEncoder(torch.nn.Module):
    """transformers' BertModel returning (last_hidden_state, pooler_output) as a tuple (for export)."""

    def __init__(self, size: str, attention: str) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = (
            BertConfig()
            if size == "full"
            else BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        )
        cfg._attn_implementation = attention
        self.bert = BertModel(cfg).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def inputs_for(name: str, batch: int, device: torch.device, vocab: int = 30522) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    if name == "resnet50":
        return [torch.randn(batch, 3, 224, 224, generator=g).to(device)]
    ids = torch.randint(0, vocab, (batch, SEQ), generator=g)
    mask = torch.ones(batch, SEQ, dtype=torch.int64)
    mask[:, SEQ * 3 // 4 :] = 0  # a padded quarter: the mask matters
    return [ids.to(device), mask.to(device)]


def export(name: str, module: torch.nn.Module, work: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    path = work / f"{name}.onnx"
    example = inputs_for(name, 2, torch.device("cpu"))
    if name == "resnet50":
        ins, outs = ["input"], ["logits"]
    else:
        ins, outs = ["input_ids", "attention_mask"], ["last_hidden_state", "pooler_output"]
    axes = {n: {0: "batch"} for n in ins + outs}
    if not path.is_file():
        t0 = time.perf_counter()
        torch.onnx.export(
            copy.deepcopy(module).cpu(),
            tuple(example),
            str(path),
            input_names=ins,
            output_names=outs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        log(f"exported {name} to ONNX in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
    return path, ins


def describe_graph(path: pathlib.Path, dest: pathlib.Path) -> None:
    """The exported graph's operators and aivmm's lowering of it (to see what runs), as text."""
    import collections

    import onnx

    from aivmm.backends.torch.lowering import lower

    proto = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    gm = lower(proto, float_dtype=torch.float32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"operators: {dict(ops.most_common())}\nfused: {gm.fused}\n\n{gm.code}")


# -- timing ---------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], device: torch.device, batch: int, quick: bool) -> float:
    warm, iters = (3, 5) if quick else ((30, 200) if batch == 1 else (5, 25))
    for _ in range(warm):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        out = out[0]
    return torch.as_tensor(out).float()


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got = got.to(want.device)
    return float((got.float() - want.float()).abs().max() / max(1.0, float(want.abs().max())))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- aivmm ----------------------------------------------------------------------------------------


def aivmm_deploy(vmm: Any, path: pathlib.Path, policy: str, batch: int, device_id: str, tag: str) -> tuple[Any, float]:
    cons = {"precision": policy, "batch_size": batch, "objective": "latency" if batch == 1 else "throughput"}
    t0 = time.perf_counter()
    model = vmm.deploy(str(path), cons, device=device_id, name=f"{tag}-{policy}-b{batch}")
    return model, time.perf_counter() - t0


def plan_rows(plan: Any) -> list[dict[str, Any]]:
    rows = []
    for c in (*plan.ranked(), *plan.rejected):
        m = c.measurement
        rows.append(
            {
                "label": c.label,
                "p50_ms": None if m is None else round(m.p50_ms, 4),
                "load_s": None if m is None else round(m.load_seconds, 2),
                "rejected": [str(r) for r in c.rejections][:2],
            }
        )
    return rows


def second_deploy(args: argparse.Namespace, name: str, policy: str, batch: int) -> dict[str, Any]:
    """The same deploy in a fresh process (caches on disk only); returns its timings."""
    cmd = [
        sys.executable,
        __file__,
        "--out",
        str(args.out),
        "--models",
        name,
        "--size",
        args.size,
        "--device",
        args.device,
        "--deploy-only",
        f"{policy}:{batch}",
        "--started",
        repr(time.time()),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    wall = time.perf_counter() - t0
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("{")), "{}")
    result = json.loads(line)
    result["process_wall_s"] = round(wall, 1)
    if done.returncode:
        result["error"] = done.stderr[-2000:]
    return result


def deploy_only(args: argparse.Namespace, device: torch.device, device_id: str) -> int:
    import aivmm

    name = args.models[0]
    policy, batch = args.deploy_only.split(":")
    path = pathlib.Path(args.work) / f"{name}.onnx"
    marks = {"python_and_imports_s": time.time() - args.started}
    t0 = time.perf_counter()
    vmm = aivmm.VMM()
    marks["discover_s"] = time.perf_counter() - t0
    model, seconds = aivmm_deploy(vmm, path, policy, int(batch), device_id, "second")
    marks["deploy_s"] = seconds
    feeds = dict(zip([t.name for t in model.spec.inputs], inputs_for(name, int(batch), device)))
    t1 = time.perf_counter()
    model.execute(feeds, output="native")
    sync(device)
    marks["first_execute_s"] = time.perf_counter() - t1
    marks["process_start_to_first_result_s"] = time.time() - args.started
    root = pathlib.Path(os.environ.get("AIVMM_CACHE_DIR", "~/.cache/aivmm")).expanduser() / "torch-compile"
    files = [f for f in root.rglob("*") if f.is_file()] if root.is_dir() else []
    print(
        json.dumps(
            {
                **{k: round(v, 2) for k, v in marks.items()},
                "cache_hit": model.plan.cache_hit,
                "chosen": model.plan.chosen.label,
                "compile_cache_files": len(files),
                "compile_cache_dirs": sorted({str(f.relative_to(root)).split("/")[0] for f in files}),
            }
        )
    )
    vmm.close()
    return 0


# -- one model ------------------------------------------------------------------------------------


def run_model(name: str, args: argparse.Namespace, device: torch.device, device_id: str, out: dict) -> None:
    import aivmm

    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cnn = name == "resnet50"
    module = build_resnet(args.size) if cnn else BertEncoder(args.size, "eager")
    module = module.eval()
    path, input_names = export(name, module, work)
    describe_graph(path, args.out / f"{name}_graph.txt")
    if not cnn:  # the hand-written encoder uses PyTorch's fused attention (same weights)
        fast = BertEncoder(args.size, "sdpa")
        fast.load_state_dict(module.state_dict())
        module = fast.eval()
    module = module.to(device)
    hand_fp32 = module
    best = copy.deepcopy(module).to(torch.bfloat16)
    if cnn:
        best = best.to(memory_format=torch.channels_last)
    vmm = aivmm.VMM()
    for batch in args.batches:
        measure_batch(Case(name, batch, args, device, device_id, path, input_names, hand_fp32, best, vmm, out))
        if args.second_deploy and batch in args.second_deploy_batches:
            for policy in args.second_deploy_policies:
                r = second_deploy(args, name, policy, batch)
                log(f"{name} b{batch} second deploy {policy}: {r}")
                out.setdefault("second_deploy", []).append({"model": name, "batch": batch, "policy": policy, **r})
                save(args, out)
    vmm.close()


@dataclasses.dataclass
class Case:
    """One model at one batch size, and what every row of it shares."""

    name: str
    batch: int
    args: argparse.Namespace
    device: torch.device
    device_id: str
    path: pathlib.Path
    input_names: list[str]
    hand_fp32: torch.nn.Module
    best: torch.nn.Module
    vmm: Any
    out: dict

    def add(self, variant: str, ms: float, err: float | None, **extra: Any) -> None:
        row = {
            "model": self.name,
            "batch": self.batch,
            "variant": variant,
            "latency_ms": round(ms, 4),
            "throughput_per_s": round(self.batch / ms * 1e3, 1),
            "rel_error_vs_hand_fp32": err,
            **extra,
        }
        self.out.setdefault("rows", []).append(row)
        log(f"{self.name} b{self.batch} {variant:28s} {ms:9.3f} ms {row['throughput_per_s']:10.1f}/s err {err}")
        save(self.args, self.out)

    def time(self, fn: Callable[[], Any]) -> float:
        return median_ms(fn, self.device, self.batch, self.args.quick)


def measure_batch(case: Case) -> None:
    xs = inputs_for(case.name, case.batch, case.device)
    cuda = case.device.type == "cuda"

    def hand_eager() -> Any:
        with torch.inference_mode():
            return case.hand_fp32(*xs)

    want = first(hand_eager())
    case.add("hand eager fp32", case.time(hand_eager), 0.0)
    if cuda:  # the same with IEEE fp32 (torch's default TF32 convolutions off)
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            case.add("hand eager fp32 (TF32 off)", case.time(hand_eager), rel_error(first(hand_eager()), want))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    xb = [x.to(torch.bfloat16) if x.is_floating_point() else x for x in xs]
    if case.name == "resnet50":
        xb = [x.contiguous(memory_format=torch.channels_last) for x in xb]
    t0 = time.perf_counter()
    fn = torch.compile(case.best, mode="reduce-overhead" if cuda else None, dynamic=False)

    def hand_best() -> Any:
        with torch.inference_mode():
            return fn(*xb)

    got = first(hand_best())
    sync(case.device)
    compile_s = time.perf_counter() - t0
    case.add("hand best (bf16, RO compile)", case.time(hand_best), rel_error(got, want), compile_s=round(compile_s, 1))
    feeds = dict(zip(case.input_names, xs))
    for policy in case.args.policies:
        try:
            model, seconds = aivmm_deploy(case.vmm, case.path, policy, case.batch, case.device_id, case.name)
        except Exception as exc:  # recorded: a failed deploy is a result too
            case.add(f"aivmm auto {policy}", float("nan"), None, error=f"{type(exc).__name__}: {exc}"[:500])
            continue
        case.out.setdefault("plans", {})[f"{case.name}-{policy}-b{case.batch}"] = plan_rows(model.plan)
        got = first(model.execute(feeds, output="native"))
        ms = case.time(lambda m=model: m.execute(feeds, output="native"))
        case.add(
            f"aivmm auto {policy}", ms, rel_error(got, want), chosen=model.plan.chosen.label, deploy_s=round(seconds, 1)
        )
        model.close()


def markdown(out: dict) -> str:
    lines = [
        "| model | batch | variant | latency ms | items/s | vs hand best | rel. error | aivmm choice | deploy s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    best = {
        (r["model"], r["batch"]): r["latency_ms"] for r in out.get("rows", []) if r["variant"].startswith("hand best")
    }
    for r in out.get("rows", []):
        ref = best.get((r["model"], r["batch"]))
        ratio = f"{ref / r['latency_ms']:.2f}x" if ref and r["latency_ms"] == r["latency_ms"] else ""
        err = r.get("rel_error_vs_hand_fp32")
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} | {r['latency_ms']:.3f} | "
            f"{r['throughput_per_s']:.0f} | {ratio} | {'' if err is None else f'{err:.1e}'} | "
            f"{r.get('chosen', r.get('error', ''))} | {r.get('deploy_s', r.get('compile_s', ''))} |"
        )
    for s in out.get("second_deploy", []):
        lines.append(f"\nsecond deploy in a new process: {s}")
    return "\n".join(lines)


def save(args: argparse.Namespace, out: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "issue17.json").write_text(json.dumps(out, indent=1, default=str))
    (args.out / "issue17.md").write_text(markdown(out) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--work", default="/tmp/aivmm-issue17", help="where the ONNX exports are kept")
    ap.add_argument("--models", nargs="+", default=["resnet50", "bert"], choices=["resnet50", "bert"])
    ap.add_argument("--size", default="full", choices=["full", "tiny"])
    ap.add_argument("--batches", nargs="+", type=int, default=[BATCH_LATENCY, BATCH_THROUGHPUT])
    ap.add_argument("--policies", nargs="+", default=["fp32", "fp16"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--second-deploy", action="store_true")
    ap.add_argument("--second-deploy-batches", nargs="+", type=int, default=[BATCH_THROUGHPUT])
    ap.add_argument("--second-deploy-policies", nargs="+", default=["fp16"])
    ap.add_argument("--deploy-only", default="", help=argparse.SUPPRESS)
    ap.add_argument("--started", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="few timed runs (smoke test)")
    args = ap.parse_args()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    device_id = "nvidia:0" if args.device == "cuda" else "cpu:0"
    if args.deploy_only:
        return deploy_only(args, device, device_id)
    out: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": os.environ.get("AIVMM_COMMIT", ""),
    }
    for name in args.models:
        run_model(name, args, device, device_id, out)
    print(markdown(out))
    save(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
