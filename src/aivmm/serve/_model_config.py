"""Per-model configuration in a repository: Triton's ``config.pbtxt`` and aivmm's ``config.json``.

Both are accepted as they are and turned into one :class:`ModelConfig` value. ``config.pbtxt`` is
parsed with protobuf's own text-format parser against Triton's field numbers (see
``proto/model_config.proto``): sections aivmm does not use are accepted and ignored, fields it
reads are type-checked by protobuf. ``config.json`` keys (all optional)::

    {"constraints": {...aivmm.Constraints fields...}, "batching": {"max_batch_size": 8,
     "max_queue_delay_ms": 2, "preferred_sizes": [4, 8], "max_queue_size": 1024},
     "instances": 1, "device": "cpu:0", "backend": "onnxruntime", "strict": false,
     "versions": "latest" | "all" | [1, 3], "filename": "model.onnx",
     "replan_on_first_request": false}

``replan_on_first_request``: the model is planned on generated inputs at load, then planned again
(measured, in the background) on the first real request's inputs and moved to the new choice
without dropping requests (``VMM.deploy(replan_on_first_request=True)``).

When both exist, ``config.json`` wins field by field (it is the aivmm-specific layer on top).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from aivmm.errors import BackendUnavailableError, ConfigError

# Keys that are deploy options as they are (aivmm.DeployOptions checks them); the others are the
# repository's own (instances are replicas, device is a pin, versions and filename pick files).
_DEPLOY_KEYS = ("constraints", "backend", "strict", "replan_on_first_request")
_JSON_KEYS = frozenset(
    {
        "constraints",
        "batching",
        "instances",
        "device",
        "backend",
        "strict",
        "versions",
        "filename",
        "replan_on_first_request",
    }
)


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions to serve: the newest ``latest`` ones, ``all``, or a ``specific`` list."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            missing = sorted(set(self.versions) - set(ordered))
            if missing:
                raise ConfigError(f"version policy asks for versions {missing} that are not in the repository")
            return sorted(self.versions)
        return ordered[-self.count :]


@dataclasses.dataclass(frozen=True)
class DevicePin:
    """A placement pinned by config: an aivmm device id, or Triton's kind plus GPU ordinals."""

    device_id: str | None = None
    kind: str | None = None  # "gpu" | "cpu"
    gpu_ordinal: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    constraints: Mapping[str, Any] | None = None
    batching: Mapping[str, Any] | None = None
    instances: int = 1
    pin: DevicePin = DevicePin()
    backend: str | None = None
    strict: bool = False
    versions: VersionPolicy = VersionPolicy()
    filename: str = "model.onnx"
    platform: str = "onnxruntime_onnx"
    max_batch_size: int = 0
    replan_on_first_request: bool = False
    sources: tuple[str, ...] = ()  # the config files read, for messages and the status endpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "constraints": dict(self.constraints or {}),
            "batching": dict(self.batching) if self.batching is not None else None,
            "instances": self.instances,
            "device": self.pin.device_id
            or (
                f"{self.pin.kind}" + (f"#{self.pin.gpu_ordinal}" if self.pin.gpu_ordinal is not None else "")
                if self.pin.kind
                else None
            ),
            "backend": self.backend,
            "strict": self.strict,
            "versions": dataclasses.asdict(self.versions),
            "max_batch_size": self.max_batch_size,
            "replan_on_first_request": self.replan_on_first_request,
            "sources": list(self.sources),
        }


def read(model_dir: pathlib.Path, name: str, *, aivmm_json: bool = True, llm: bool = False) -> ModelConfig:
    """The config of a Triton-style model directory (defaults when it has none). ``aivmm_json``
    False: the directory's config.json belongs to someone else (a transformers export). ``llm``:
    the versions are LLM exports, whose ``batching`` keys are the generator's (checked at deploy)."""
    cfg = ModelConfig(name=name)
    pbtxt = model_dir / "config.pbtxt"
    if pbtxt.is_file():
        cfg = from_pbtxt(pbtxt.read_text(errors="replace"), name, source=str(pbtxt))
    js = model_dir / "config.json"
    if aivmm_json and js.is_file():
        cfg = merge_json(cfg, js.read_text(errors="replace"), source=str(js), llm=llm)
    return cfg


def from_pbtxt(text: str, name: str, *, source: str = "config.pbtxt") -> ModelConfig:
    from google.protobuf import text_format

    from aivmm.serve.proto import load

    pb = load()
    msg = pb.ModelConfig()
    try:
        text_format.Parse(text, msg, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: {exc} (aivmm reads the fields listed in docs/serve.md)") from None
    if msg.name and msg.name != name:
        raise ConfigError(
            f"{source}: name {msg.name!r} does not match its directory {name!r} (Triton requires them equal)"
        )
    if msg.platform and msg.platform not in ("onnxruntime_onnx", "openvino"):
        raise ConfigError(f"{source}: platform {msg.platform!r} is not served by aivmm (ONNX models only)")
    if msg.backend:
        _check_backend(msg.backend, source)
    if msg.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size must be >= 0, got {msg.max_batch_size}")
    batching: dict[str, Any] | None = None
    if msg.HasField("dynamic_batching"):
        db = msg.dynamic_batching
        if msg.max_batch_size == 0:
            raise ConfigError(f"{source}: dynamic_batching needs max_batch_size > 0")
        batching = {"max_batch_size": msg.max_batch_size}
        if db.max_queue_delay_microseconds:
            batching["max_queue_delay_ms"] = db.max_queue_delay_microseconds / 1000.0
        if db.preferred_batch_size:
            batching["preferred_sizes"] = list(db.preferred_batch_size)
    instances = 0
    pin = DevicePin()
    for group in msg.instance_group:
        instances += group.count or 1
        kind = pb.ModelInstanceGroup.Kind.Name(group.kind)
        if kind == "KIND_GPU":
            pin = DevicePin(kind="gpu", gpu_ordinal=group.gpus[0] if group.gpus else None)
        elif kind == "KIND_CPU":
            pin = DevicePin(kind="cpu")
        elif kind == "KIND_MODEL":
            raise ConfigError(f"{source}: instance_group kind KIND_MODEL is not supported")
    versions = VersionPolicy()
    if msg.HasField("version_policy"):
        which = msg.version_policy.WhichOneof("policy_choice")
        if which == "all":
            versions = VersionPolicy("all")
        elif which == "specific":
            versions = VersionPolicy("specific", versions=tuple(msg.version_policy.specific.versions))
        elif which == "latest":
            versions = VersionPolicy("latest", count=max(1, msg.version_policy.latest.num_versions))
    return ModelConfig(
        name=name,
        batching=batching,
        instances=max(1, instances),
        pin=pin,
        versions=versions,
        filename=msg.default_model_filename or "model.onnx",
        platform=msg.platform or "onnxruntime_onnx",
        max_batch_size=msg.max_batch_size,
        sources=(source,),
    )


def _check_backend(name: str, source: str) -> None:
    """A config's ``backend`` must be a registered aivmm backend whose BackendInfo says it loads
    ONNX files (a served model is one); only the named backend's info is read (it may import its
    runtime)."""
    from aivmm.backends import registry
    from aivmm.models import ModelFormat

    try:
        formats = registry.get(name).info().formats
    except BackendUnavailableError:
        formats = frozenset()
    if ModelFormat.ONNX not in formats:
        raise ConfigError(
            f"{source}: backend {name!r} is not served by aivmm (ONNX models only, on a registered backend "
            f"whose info lists the ONNX format; registered: {', '.join(registry.names())})"
        )


def merge_json(base: ModelConfig, text: str, *, source: str = "config.json", llm: bool = False) -> ModelConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None
    return merge_mapping(base, data, source=source, llm=llm)


def merge_mapping(base: ModelConfig, data: Any, *, source: str, llm: bool = False) -> ModelConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(_JSON_KEYS)}")
    changes: dict[str, Any] = {"sources": (*base.sources, source)}
    given = {key: data[key] for key in _DEPLOY_KEYS if key in data}
    if given:
        from aivmm.options import DeployOptions

        DeployOptions.from_mapping(given, source=source)  # validate now: a bad file fails at index time
        changes.update(given)
        if "constraints" in given:
            changes["constraints"] = dict(given["constraints"])
    if "batching" in data:
        b = data["batching"]
        if b is not None and not isinstance(b, dict):
            raise ConfigError(f"{source}: 'batching' must be an object or null")
        if b is not None and not llm:
            from aivmm.serve._dataplane import batching_config

            try:
                batching_config(b)  # validate now: a bad file fails at index time, not at first request
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
        changes["batching"] = None if b is None else dict(b)
    if "instances" in data:
        n = data["instances"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
            raise ConfigError(f"{source}: 'instances' must be an integer in [1, 64], got {n!r}")
        changes["instances"] = n
    if "device" in data:
        d = data["device"]
        if d is not None and (not isinstance(d, str) or ":" not in d):
            raise ConfigError(f'{source}: \'device\' must be a device id such as "cpu:0" or "nvidia:0", got {d!r}')
        changes["pin"] = DevicePin(device_id=d)
    for key, typ in (("filename", str),):
        if key in data:
            if not isinstance(data[key], typ):
                raise ConfigError(f"{source}: {key!r} must be a {typ.__name__}, got {data[key]!r}")
            changes[key] = data[key]
    if "filename" in changes and (
        "/" in changes["filename"] or "\\" in changes["filename"] or changes["filename"] in ("", ".", "..")
    ):
        raise ConfigError(f"{source}: 'filename' must be a plain file name, got {changes['filename']!r}")
    if "versions" in data:
        v = data["versions"]
        if v in ("latest", "all"):
            changes["versions"] = VersionPolicy(v)
        elif isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            changes["versions"] = VersionPolicy("specific", versions=tuple(v))
        else:
            raise ConfigError(f'{source}: \'versions\' must be "latest", "all" or a list of positive integers')
    return dataclasses.replace(base, **changes)
