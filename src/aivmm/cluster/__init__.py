"""aivmm on a Ray cluster: one registry for the whole cluster, a node agent per node, routing.

    from aivmm.cluster import ClusterVMM
    with ClusterVMM("auto") as vmm:                  # $RAY_ADDRESS, or HOST:PORT of `ray start --head`
        model = vmm.deploy("model.onnx", {"max_latency_ms": 20}, replicas=2)
        outputs = model.execute(x)                  # any other client sees it: vmm.get(name)

``aivmm serve --ray [ADDRESS]`` runs the KServe v2 server on it; ``aivmm cluster resources`` prints
a node's devices for ``ray start --resources``. See docs/cluster.md.
Importing this package does not import Ray; constructing a ClusterVMM does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aivmm._lazy import LazyExports
from aivmm.cluster._resources import node_resources

if TYPE_CHECKING:
    from aivmm.cluster._model import ClusterModel
    from aivmm.cluster._vmm import ClusterVMM

__all__ = ["ClusterModel", "ClusterVMM", "node_resources"]

__getattr__ = LazyExports(
    __name__,
    {"ClusterModel": "aivmm.cluster._model:ClusterModel", "ClusterVMM": "aivmm.cluster._vmm:ClusterVMM"},
)
