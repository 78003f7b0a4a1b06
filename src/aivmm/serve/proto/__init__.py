"""KServe v2 / Triton protocol messages, built in a private descriptor pool.

``load()`` returns a namespace of message classes (``pb.ModelInferRequest``, ``pb.ModelConfig``,
...). The pool is private so aivmm and tritonclient, which both define ``inference.*``, can live
in one process; see ``_build.py`` for why the descriptors are committed instead of ``_pb2`` files.
"""

from __future__ import annotations

import base64
import functools
import types
from typing import Any

SERVICE = "inference.GRPCInferenceService"


@functools.cache
def load() -> types.SimpleNamespace:
    """Message classes by short name (nested ones as ``Outer.Inner`` attributes of the class)."""
    try:
        from google.protobuf import descriptor_pool, message_factory
    except ImportError:
        from aivmm.errors import missing_extra

        raise missing_extra("protobuf", "serve") from None
    from aivmm.serve.proto._descriptors import FILES

    pool = descriptor_pool.DescriptorPool()
    classes: dict[str, Any] = {}
    for text in FILES:
        fd = pool.AddSerializedFile(base64.b64decode(text))
        for name, desc in fd.message_types_by_name.items():
            classes[name] = message_factory.GetMessageClass(desc)
        for name, enum in fd.enum_types_by_name.items():
            classes[name] = enum
    classes["pool"] = pool
    classes["service"] = pool.FindServiceByName(SERVICE)
    return types.SimpleNamespace(**classes)
