"""The torch backend on a GPU against plain PyTorch written by hand for the same models.

For the ResNet-50-class and BERT-base-class zoo models (size ``full``), at batch 1 and a large batch,
this measures the median latency (and the throughput it implies) of:

* ``aivmm eager``        the ONNX model lowered by aivmm, run eagerly;
* ``aivmm compile``      the same with ``torch.compile`` (option ``compile``);
* ``aivmm cuda graphs``  the same replayed from captured CUDA graphs (option ``cuda_graphs``);
* ``hand eager``         an ``nn.Module`` written by hand for the same architecture, loaded with the
                         same weights (read from the ONNX initializers), run eagerly;
* ``hand cuda graphs``   that module replayed from a CUDA graph captured by hand.

Inputs already live on the GPU and outputs stay there (``output="native"``), so every row times the
same work: no host transfers. Each row's ratio is its latency over hand eager (below 1: faster).
Before timing, aivmm's and the hand-written module's outputs are compared (they must agree within the
precision's tolerance), so both run the same model.

Run on the GPU machine (about 5 minutes on an H100)::

    python benchmarks/torch_gpu.py --out benchmarks/results/torch_gpu.json

Smoke test on a CPU (tiny models, no CUDA graphs): ``python benchmarks/torch_gpu.py --device cpu --size tiny
--batches 1 2 --iters 5 --out /tmp/torch_gpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from aivmm.backends import Config, registry
from aivmm.devices._types import Device, DeviceKind, Vendor
from aivmm.dtypes import Precision
from aivmm.models import load, zoo
from aivmm.models.zoo._language import BERT
from aivmm.models.zoo._vision import EXPANSION, RESNET

TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 8e-2}  # relative to max |output|: the same model, not bit-equal


# -- hand-written models ------------------------------------------------------------------------


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, downsample: bool) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = nn.Conv2d(cin, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1)
        self.conv3 = nn.Conv2d(width, cout, 1)
        self.down = nn.Conv2d(cin, cout, 1, stride) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet(nn.Module):
    """ResNet-50 as torchvision writes it, batch norm folded into the convolutions (as the zoo's export)."""

    def __init__(self, size: str) -> None:
        super().__init__()
        c = RESNET[size]
        self.pool = c.stem_pool
        self.stem = nn.Conv2d(3, c.stem, c.stem_kernel, 2 if c.stem_pool else 1, c.stem_kernel // 2)
        blocks: list[nn.Module] = []
        cin = c.stem
        for stage, (width, count) in enumerate(zip(c.widths, c.blocks)):
            for block in range(count):
                blocks.append(Bottleneck(cin, width, 2 if block == 0 and stage > 0 else 1, block == 0))
                cin = width * EXPANSION
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, c.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        if self.pool:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def convs(self) -> list[nn.Conv2d]:
        """In the order the zoo's builder emits them: stem, then per block conv1, conv2, conv3, shortcut."""
        out = [self.stem]
        for b in self.blocks:
            out += [b.conv1, b.conv2, b.conv3] + ([b.down] if b.down is not None else [])
        return out


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.ln1 = nn.LayerNorm(hidden, eps=1e-5)
        self.ff1, self.ff2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        x = self.ln1(self.o(ctx.transpose(1, 2).reshape(b, s, h)) + x)
        return self.ln2(self.ff2(F.gelu(self.ff1(x))) + x)


class Bert(nn.Module):
    """A BERT-base encoder as one writes it with nn.Linear, nn.LayerNorm and scaled_dot_product_attention."""

    def __init__(self, size: str) -> None:
        super().__init__()
        c = BERT[size]
        self.word = nn.Embedding(c.vocab, c.hidden)
        self.position = nn.Embedding(c.positions, c.hidden)
        self.token_type = nn.Embedding(2, c.hidden)
        self.ln = nn.LayerNorm(c.hidden, eps=1e-5)
        self.layers = nn.ModuleList(EncoderLayer(c.hidden, c.heads, c.ffn) for _ in range(c.layers))
        self.pooler = nn.Linear(c.hidden, c.hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = input_ids.shape[1]
        x = self.ln(self.word(input_ids) + self.position.weight[:s] + self.token_type.weight[0])
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))

    def linears(self) -> list[nn.Linear]:
        """In the zoo's order: per layer q, k, v, o, ff1, ff2."""
        return [m for layer in self.layers for m in (layer.q, layer.k, layer.v, layer.o, layer.ff1, layer.ff2)]

    def norms(self) -> list[nn.LayerNorm]:
        return [self.ln] + [m for layer in self.layers for m in (layer.ln1, layer.ln2)]


# -- weights from the ONNX initializers -----------------------------------------------------------


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _set(param: nn.Parameter, value: np.ndarray) -> None:
    if tuple(param.shape) != value.shape:
        raise SystemExit(f"weight shape mismatch: module {tuple(param.shape)} vs ONNX {value.shape}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.array(value, copy=True)))


def resnet_from_onnx(model: onnx.ModelProto, size: str) -> ResNet:
    module = ResNet(size)
    inits = _initializers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    targets = module.convs()
    if len(convs) != len(targets):
        raise SystemExit(f"{len(convs)} Conv nodes in the ONNX model, {len(targets)} convolutions by hand")
    for node, conv in zip(convs, targets):
        _set(conv.weight, inits[node.input[1]])
        _set(conv.bias, inits[node.input[2]])
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    _set(module.fc.weight, inits[gemm.input[1]])  # transB=1: already [out, in]
    _set(module.fc.bias, inits[gemm.input[2]])
    return module


def bert_from_onnx(model: onnx.ModelProto, size: str) -> Bert:
    module = Bert(size)
    inits = _initializers(model)
    nodes = list(model.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    for node in nodes:
        if node.op_type == "Gather" and node.input[0] in inits:
            table = node.input[0]
            target = {"word": module.word, "position": module.position, "token": module.token_type}
            key = next(k for k in target if table.startswith(k))
            _set(target[key].weight, inits[table])
    matmuls = [n for n in nodes if n.op_type == "MatMul" and n.input[1] in inits]
    linears = module.linears()
    if len(matmuls) != len(linears):
        raise SystemExit(f"{len(matmuls)} weight MatMuls in the ONNX model, {len(linears)} nn.Linear by hand")
    for node, linear in zip(matmuls, linears):
        _set(linear.weight, inits[node.input[1]].T)  # MatMul(x, W[in, out]); nn.Linear holds [out, in]
        add = consumers[node.output[0]][0]
        _set(linear.bias, inits[next(i for i in add.input if i in inits)])
    norms = [n for n in nodes if n.op_type == "LayerNormalization"]
    for node, norm in zip(norms, module.norms(), strict=True):
        _set(norm.weight, inits[node.input[1]])
        _set(norm.bias, inits[node.input[2]])
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    _set(module.pooler.weight, inits[gemm.input[1]])
    _set(module.pooler.bias, inits[gemm.input[2]])
    return module


# -- timing -------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def hand_graph(module: nn.Module, inputs: list[torch.Tensor], device: torch.device) -> Callable[[], Any]:
    """A CUDA graph of the hand-written module, captured the usual way (warm up on a side stream)."""
    static = [t.clone() for t in inputs]
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            module(*static)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = module(*static)

    def replay() -> Any:
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        graph.replay()
        return out

    return replay


def _hand_eager(module: nn.Module, inputs: list[torch.Tensor]) -> Any:
    with torch.inference_mode():
        return module(*inputs)


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return next(iter(out.values()))
    if isinstance(out, list | tuple):
        return out[0]
    return out


def run_model(name: str, args: argparse.Namespace, device: Device, tdev: torch.device) -> list[dict[str, Any]]:
    path = zoo.build(name, size=args.size)
    spec = load(str(path))
    proto = onnx.load(str(path))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    hand = (resnet_from_onnx if name == "resnet50" else bert_from_onnx)(proto, args.size)
    hand = hand.to(device=tdev, dtype=dtype).eval()
    backend = registry.get("torch")
    precision = Precision.parse(args.precision)
    variants: dict[str, dict[str, Any]] = {"aivmm eager": {}}
    if not args.skip_compile:
        variants["aivmm compile"] = {"compile": args.compile_mode}
    if tdev.type == "cuda":
        variants["aivmm cuda graphs"] = {"cuda_graphs": True}
    sessions = {
        label: backend.load(spec, device, Config("torch", device.id, precision, options=opts))
        for label, opts in variants.items()
    }
    rows = []
    try:
        for batch in args.batches:
            feeds = zoo.sample_inputs(name, size=args.size, batch=batch, seed=0)
            on_device = {k: torch.from_numpy(v).to(tdev) for k, v in feeds.items()}
            hand_inputs = [
                on_device[t.name].to(dtype) if on_device[t.name].is_floating_point() else on_device[t.name]
                for t in spec.inputs
            ]
            # aivmm gets the very same tensors (already in the compute type: no cast, no copy per run).
            on_device = {t.name: x for t, x in zip(spec.inputs, hand_inputs)}
            with torch.inference_mode():
                want = _first(hand(*hand_inputs)).float()
            got = _first(sessions["aivmm eager"].run(on_device, output="native")).float()
            error = float((got - want).abs().max() / max(1.0, float(want.abs().max())))
            if error > TOLERANCE[args.precision]:
                raise SystemExit(
                    f"{name} batch {batch}: aivmm and the hand-written model disagree "
                    f"(max relative error {error:.2e}); the comparison would not be fair"
                )
            # Large batches take longer per run and vary less: fewer runs keep the whole script short.
            small = batch == 1
            warmup = args.warmup if small else max(3, args.warmup // 4)
            iters = args.iters if small else max(5, args.iters // 3)
            timings: dict[str, float] = {}
            for label, session in sessions.items():
                timings[label] = median_ms(
                    lambda s=session, f=on_device: s.run(f, output="native"), tdev, warmup, iters
                )
            timings["hand eager"] = median_ms(lambda i=hand_inputs: _hand_eager(hand, i), tdev, warmup, iters)
            if tdev.type == "cuda":
                timings["hand cuda graphs"] = median_ms(hand_graph(hand, hand_inputs, tdev), tdev, warmup, iters)
            base = timings["hand eager"]
            for label, ms in timings.items():
                rows.append(
                    {
                        "model": name,
                        "size": args.size,
                        "batch": batch,
                        "variant": label,
                        "precision": args.precision,
                        "latency_ms": round(ms, 4),
                        "throughput_per_s": round(batch / ms * 1e3, 1),
                        "ratio_vs_hand_eager": round(ms / base, 3),
                        "check_rel_error": error,
                    }
                )
                print(f"  {name} b{batch} {label:18s} {ms:9.3f} ms", file=sys.stderr, flush=True)
    finally:
        for session in sessions.values():
            session.close()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | batch | variant | latency ms (median) | items/s | vs hand eager |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['size']}, {r['precision']}) | {r['batch']} | {r['variant']} | "
            f"{r['latency_ms']:.3f} | {r['throughput_per_s']:.1f} | {r['ratio_vs_hand_eager']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON results")
    parser.add_argument("--models", nargs="+", default=["resnet50", "bert-base"], choices=["resnet50", "bert-base"])
    parser.add_argument("--size", default="full", choices=zoo.SIZES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run this on the GPU machine (or pass --device cpu for a smoke test)")
        free, total = torch.cuda.mem_get_info(0)
        device = Device("nvidia:0", DeviceKind.GPU, Vendor.NVIDIA, torch.cuda.get_device_name(0), total, free)
        tdev = torch.device("cuda", 0)
    else:
        device = Device("cpu:0", DeviceKind.CPU, Vendor.OTHER, platform.processor() or "cpu", 0, 0)
        tdev = torch.device("cpu")
    # cuDNN picks its fastest algorithms for every variant alike.
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.models:
        rows += run_model(name, args, device, tdev)
    table = markdown(rows)
    print(table)
    result = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
