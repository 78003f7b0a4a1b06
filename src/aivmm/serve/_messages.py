"""Transport-neutral inference requests and responses: what HTTP and gRPC decode into."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.dtypes import DType


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: follow the request's binary_data_output


@dataclasses.dataclass(frozen=True)
class InferRequest:
    model: str
    version: str  # "" for the default (latest) version
    inputs: Mapping[str, np.ndarray]
    datatypes: Mapping[str, DType]  # the datatype each input was sent as
    outputs: tuple[RequestedOutput, ...] = ()  # empty: every output
    id: str = ""
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def binary_output(self) -> bool:
        return self.parameters.get("binary_data_output") is True


@dataclasses.dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: tuple[tuple[str, np.ndarray], ...]
    binary: tuple[bool, ...]  # per output: send as binary data (HTTP only)
