"""Candidate enumeration: every (backend, device, precision, options) the registry, the devices and
the model allow, and every one that is not allowed kept with its reasons."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.backends import Backend, BackendInfo, Config, registry
from aivmm.devices import Device
from aivmm.dtypes import Precision
from aivmm.errors import AivmmError
from aivmm.models import ModelFormat, ModelSpec
from aivmm.optimize import Pass, availability, file_sha256
from aivmm.planner._values import Candidate, RejectReason
from aivmm.planner.constraints import Constraints

log = logging.getLogger(__name__)

# The product of option values per (backend, device, precision) is capped so enumeration stays
# small; the first values of each option (the backend's defaults first) are kept.
MAX_OPTION_VARIANTS = 12


def onnx_path(spec: ModelSpec) -> pathlib.Path | None:
    src = spec.source
    if spec.format is ModelFormat.ONNX and isinstance(src, str | pathlib.Path) and pathlib.Path(src).is_file():
        return pathlib.Path(src)
    return None


def option_variants(info: BackendInfo) -> list[dict[str, Any]]:
    names = [k for k in sorted(info.options) if info.options[k]]
    values = [tuple(info.options[k]) for k in names]
    variants = []
    for combo in itertools.product(*values):
        variants.append(dict(zip(names, combo)))
        if len(variants) >= MAX_OPTION_VARIANTS:
            break
    return variants or [{}]


def _precision_routes(info: BackendInfo, spec: ModelSpec) -> list[tuple[Precision, Precision, Pass | None]]:
    """(effective precision, precision passed to the backend, pass) for every route to a precision."""
    routes: list[tuple[Precision, Precision, Pass | None]] = [(Precision.FP32, Precision.FP32, None)]
    is_onnx = onnx_path(spec) is not None
    for p in (Precision.FP16, Precision.BF16):
        if p in info.precisions:
            routes.append((p, p, None))  # the runtime lowers it itself (precision hint, autocast)
        elif p is Precision.FP16 and is_onnx:
            routes.append((p, Precision.FP32, Pass.FP16))  # an fp16 file with fp32 I/O runs as-is
        else:
            routes.append((p, p, None))  # kept to be rejected with the reason
    if is_onnx:
        backend_int8 = Precision.INT8 if Precision.INT8 in info.precisions else Precision.FP32
        routes.append((Precision.INT8, backend_int8, Pass.INT8_DYNAMIC))
        routes.append((Precision.INT8, backend_int8, Pass.INT8_STATIC))
        routes.append((Precision.FP32, Precision.FP32, Pass.GRAPH_EXTENDED))
    else:
        routes.append((Precision.INT8, Precision.INT8, None))
    return routes


def _backend_rejection(name: str) -> tuple[Backend | None, str]:
    try:
        backend = registry.get(name)
    except AivmmError as exc:
        return None, str(exc)
    avail = backend.available()
    if not avail:
        return None, "; ".join(avail.reasons) or f"{name} is not available"
    return backend, ""


def enumerate_candidates(
    spec: ModelSpec, devices: Sequence[Device], constraints: Constraints, backends: Sequence[str] | None = None
) -> list[Candidate]:
    """Every candidate, each either clean or carrying the reasons it cannot be used."""
    names = list(backends) if backends is not None else [n for n in registry.names()]
    out: list[Candidate] = []
    infos: dict[str, BackendInfo] = {}
    for name in names:
        backend, why = _backend_rejection(name)
        if backend is None:
            for dev in devices:
                out.append(Candidate(Config(name, dev.id), spec).reject(RejectReason.BACKEND_UNAVAILABLE, why))
            continue
        infos[name] = backend.info()
        if spec.format not in infos[name].formats:
            for dev in devices:
                out.append(
                    Candidate(Config(name, dev.id), spec).reject(
                        RejectReason.UNSUPPORTED, f"{name} does not run {spec.format.value} models"
                    )
                )
            continue
        for dev in devices:
            drives = backend.drives(dev)
            if not drives:
                # One rejection per (backend, device): enumerating precisions of an undriven device adds noise.
                out.append(
                    Candidate(Config(name, dev.id), spec).reject(
                        RejectReason.DEVICE_NOT_DRIVEN, "; ".join(drives.reasons) or f"{name} cannot drive {dev.id}"
                    )
                )
                continue
            out.extend(_device_candidates(spec, dev, backend, infos[name], constraints))
    return out


def _device_candidates(
    spec: ModelSpec, dev: Device, backend: Backend, info: BackendInfo, constraints: Constraints
) -> list[Candidate]:
    out: list[Candidate] = []
    variants = option_variants(info)
    for effective, passed, p in _precision_routes(info, spec):
        model = provisional(spec, p)
        transform = p.value if p else None
        if p is Pass.GRAPH_EXTENDED:
            opts_list: list[dict[str, Any]] = [{}]
        else:
            # A backend may list the combinations worth measuring here itself (Backend.candidate_options).
            curated = backend.candidate_options(model, dev, passed)
            opts_list = variants if curated is None else curated
        # Reasons that hold for the whole route (policy, exclusion, precision) are given once;
        # check() runs per option variant, since an option can be what a device refuses.
        route = _route_rejections(
            Candidate(Config(backend.name, dev.id, passed, dict(opts_list[0])), model, transform=transform),
            dev,
            backend,
            info,
            constraints,
            effective,
            p,
        )
        if route.rejected:
            out.append(route)
            continue
        for opts in opts_list:
            cand = Candidate(Config(backend.name, dev.id, passed, dict(opts)), model, transform=transform)
            out.append(_check(cand, model, dev, backend))
    return out


def _route_rejections(
    cand: Candidate,
    dev: Device,
    backend: Backend,
    info: BackendInfo,
    constraints: Constraints,
    effective: Precision,
    p: Pass | None,
) -> Candidate:
    if not constraints.allows_device(dev):
        sel = [s.text for s in constraints.exclude if s.matches(dev)]
        cand = cand.reject(RejectReason.EXCLUDED_BY_USER, f"{dev.id} matches exclude={sel}")
    if not constraints.precision.allows(effective):
        cand = cand.reject(
            RejectReason.PRECISION_NOT_ALLOWED,
            f"{effective.value} is not allowed by precision policy {constraints.precision.value!r}",
        )
    if p is None and effective is not Precision.FP32 and effective not in info.precisions:
        cand = cand.reject(
            RejectReason.PRECISION_UNAVAILABLE,
            f"{backend.name} does not compute in {effective.value} and no pass produces it",
        )
    if p is not None:
        avail = availability(p)
        if not avail.available:
            cand = cand.reject(RejectReason.PRECISION_UNAVAILABLE, f"pass {p.value}: {avail.reason}")
    return cand


def _check(cand: Candidate, spec: ModelSpec, dev: Device, backend: Backend) -> Candidate:
    try:
        support = backend.check(spec, dev, cand.config)
    except AivmmError as exc:
        return cand.reject(RejectReason.UNSUPPORTED, f"check failed: {exc}")
    except Exception as exc:  # a backend bug must not stop planning for the others
        log.warning("%s.check raised %s", backend.name, exc)
        return cand.reject(RejectReason.UNSUPPORTED, f"check raised {type(exc).__name__}: {exc}")
    if not support:
        reasons = "; ".join(support.reasons) or "refused by check()"
        low = reasons.lower()
        kind = RejectReason.UNSUPPORTED
        if "precision" in low:
            kind = RejectReason.PRECISION_UNAVAILABLE
        elif "memory" in low:
            kind = RejectReason.DOES_NOT_FIT
        return cand.reject(kind, reasons)
    if support.reasons:
        cand = cand.with_(notes=(*cand.notes, *support.reasons))
    return cand


def variant_key(c: Candidate) -> tuple[str, str, str, str]:
    """The group a candidate belongs to for diverse measurement: backend, device, precision, pass."""
    return (c.config.backend, c.config.device, c.precision.value, c.transform or "")


# The operators each pass introduces, so check() can judge a pass's output before it is produced.
_PASS_OPERATORS = {
    Pass.INT8_DYNAMIC: ("DynamicQuantizeLinear", "MatMulInteger", "DequantizeLinear"),
    Pass.INT8_STATIC: ("QuantizeLinear", "DequantizeLinear"),
}


def provisional(spec: ModelSpec, p: Pass | None) -> ModelSpec:
    """The analysed model as a pass will leave it, for check() before the pass runs (signature unchanged)."""
    if p is None or p not in _PASS_OPERATORS:
        return spec
    return dataclasses.replace(spec, quantized_operators=_PASS_OPERATORS[p])


def analysed(spec: ModelSpec, path: pathlib.Path) -> ModelSpec:
    """The ModelSpec of a pass's output file: the models package's analysis when it is there, else
    the original's with the new source and hash."""
    load: Callable[..., ModelSpec] | None
    try:
        from aivmm.models import load
    except ImportError:
        load = None
    if load is not None:
        try:
            new = load(path, name=spec.name)
            return dataclasses.replace(new, shapes_used=spec.shapes_used or new.shapes_used)
        except AivmmError as exc:
            log.info("re-analysis of %s failed (%s); keeping the original's analysis", path, exc)
    return dataclasses.replace(spec, source=path, sha256=file_sha256(path))


def describe_options(options: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(options.items())) or "defaults"
