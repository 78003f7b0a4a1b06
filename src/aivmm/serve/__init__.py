"""``aivmm serve``: the KServe v2 / Open Inference Protocol over HTTP and gRPC, on the VMM.

::

    from aivmm import VMM
    from aivmm.serve import ServeOptions, serve

    with VMM() as vmm:
        serve(ServeOptions(repository="./models", http_port=8000), vmm)   # until SIGTERM

One data plane (``_dataplane``) serves both transports (``_http``: a lean ASGI app on uvicorn;
``_grpc``: grpc.aio from the descriptors in ``proto/``); ``_errors`` is the one table from aivmm
errors to HTTP and gRPC statuses; ``_repository`` and ``_model_config`` read Triton-style model
repositories. Importing this package starts nothing and needs no server dependency.
"""

from __future__ import annotations

from aivmm.serve._host import Limits
from aivmm.serve._server import ServeOptions, Server, serve

__all__ = ["Limits", "ServeOptions", "Server", "serve"]
