"""The Ray edge: joining a cluster as Ray users do, and turning Ray's errors into aivmm's.

Joining follows Ray's own rules: ``None`` joins ``$RAY_ADDRESS`` or starts a local instance,
``"auto"`` joins ``$RAY_ADDRESS`` or the cluster ``ray start`` last started on this machine,
``HOST:PORT`` that GCS. The driver attaches to the raylet Ray finds on this machine (the one with
``node_ip_address`` when given), exactly as ``ray.init`` does; nothing is forced.

Before ``ray.init`` (which retries a GCS that is down or refuses it for about 20 s, then says only
"Failed to connect"), one GCS call with a 5 s deadline says which step fails: nothing answers,
the token is missing or wrong, or the cluster runs another Ray or Python version.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
from collections.abc import Iterator
from typing import Any

from aivmm.errors import (
    AivmmError,
    BackendUnavailableError,
    ClusterAuthError,
    ClusterError,
    ClusterUnreachableError,
    ClusterVersionError,
    ConfigError,
    DeadlineExceededError,
    ServingError,
)

PROBE_TIMEOUT_S = 5.0
# Where Ray keeps the cluster's versions in the GCS key-value store (written by the head at start).
_METADATA_KEY, _METADATA_NAMESPACE = b"CLUSTER_METADATA", b"cluster"


def ray_module() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise BackendUnavailableError('aivmm.cluster needs Ray: pip install "aivmm[ray]" (or pip install ray)') from exc


def resolve_address(address: str | None) -> str | None:
    """The GCS address ``ray.init(address)`` would join (None: it would start a local instance)."""
    ray_module()
    from ray._private import services

    env = os.environ.get("RAY_ADDRESS") or None
    if address in (None, "", "auto"):
        if env:
            return env
        if address is None or address == "":
            return None
        try:
            found = services.get_ray_address_from_environment("auto", None)
        except ConnectionError as exc:  # several clusters on this machine, none named
            raise ClusterError(f"--ray auto: {exc}") from None
        if not found or found == "auto":
            raise ClusterUnreachableError(
                "--ray auto found no Ray cluster: RAY_ADDRESS is unset and no `ray start` cluster runs on this "
                "machine; start one (`ray start --head`) or give its address (HOST:PORT)"
            )
        return str(found)
    if address == "local":
        return None
    return address


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad Ray address {address!r}: expected HOST:PORT such as 127.0.0.1:6379, or 'auto'")
    return host.strip("[]"), int(port)


def _token() -> tuple[str | None, str]:
    """The token Ray would send (only in token mode) and where it comes from, as Ray looks it up."""
    from ray._raylet import (  # type: ignore[attr-defined]  # Ray's token loader, compiled
        AuthenticationMode,
        AuthenticationTokenLoader,
        get_authentication_mode,
    )

    loader = AuthenticationTokenLoader.instance()
    source = (
        "$RAY_AUTH_TOKEN"
        if os.environ.get("RAY_AUTH_TOKEN")
        else f"{os.environ['RAY_AUTH_TOKEN_PATH']}"
        if os.environ.get("RAY_AUTH_TOKEN_PATH")
        else "~/.ray/auth_token"
    )
    if not loader.has_token(ignore_auth_mode=True):
        return None, ""
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return None, source  # Ray sends no token unless RAY_AUTH_MODE=token (or a local cluster found by auto)
    return str(loader.get_raw_token(ignore_auth_mode=True)), source


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """One GCS call: the cluster's metadata (Ray and Python versions), or the aivmm error for why not."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    host, port = _split(address)
    token, source = _token()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    kv_get: Any = getattr(gcs_service_pb2, "InternalKVGetRequest")  # noqa: B009  (generated protobuf: no stubs)
    request = kv_get(key=_METADATA_KEY, namespace=_METADATA_NAMESPACE)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
                request, timeout=timeout_s, metadata=metadata
            )
        except grpc.RpcError as exc:
            code = exc.code()
            detail = exc.details()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                if token:
                    raise ClusterAuthError(
                        f"the Ray cluster at {address} rejected this process's token (from {source}): {detail}"
                    ) from None
                hint = (
                    f"a token is at {source} but RAY_AUTH_MODE is not 'token', and Ray sends it only then"
                    if source
                    else "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN)"
                )
                raise ClusterAuthError(
                    f"the Ray cluster at {address} requires token authentication and this process sent no token: {hint}"
                ) from None
            raise ClusterUnreachableError(
                f"cannot reach the Ray cluster at {address}: {code.name}: {detail} "
                "(is `ray start --head` running there, on that IP and port?)"
            ) from None
    try:
        return dict(json.loads(reply.value)) if reply.value else {}
    except ValueError:
        return {}


def check_versions(address: str, metadata: dict[str, Any]) -> None:
    """Refuse at once a cluster of another Ray or Python version (Ray would refuse it later, less clearly)."""
    ray = ray_module()
    theirs_ray, theirs_py = metadata.get("ray_version"), metadata.get("python_version")
    ours_py = platform.python_version()
    level = os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch")
    depth = 2 if level == "minor" else 3
    if theirs_ray and theirs_ray != ray.__version__:
        raise ClusterVersionError(
            f"the Ray cluster at {address} runs Ray {theirs_ray}, this process Ray "
            f"{ray.__version__}: install the same version on both"
        )
    if theirs_py and theirs_py.split(".")[:depth] != ours_py.split(".")[:depth]:
        raise ClusterVersionError(
            f"the Ray cluster at {address} runs Python {theirs_py}, this process Python "
            f"{ours_py} (Ray requires the same {level} version)"
        )


def connect(address: str | None, *, node_ip_address: str | None, namespace: str) -> bool:
    """Join the cluster at ``address`` (see the module docstring); returns True when this call
    initialised Ray (so closing should shut it down)."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    target = resolve_address(address)
    if target is not None and "://" not in target:
        check_versions(target, probe(target))
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False, "configure_logging": False}
    if node_ip_address:
        kwargs["_node_ip_address"] = node_ip_address
    if target is None:
        kwargs["include_dashboard"] = False
    loopback = _is_localhost(target) or (node_ip_address is not None and _is_localhost(node_ip_address))
    try:
        with _keep_loopback() if loopback else contextlib.nullcontext():
            ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise _join_error(target, node_ip_address, exc) from exc
    return True


def _join_error(target: str | None, node_ip: str | None, exc: BaseException) -> ClusterError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "No node info found matching" in text:
        where = f"with node IP {node_ip}" if node_ip else "on this machine"
        return ClusterError(
            f"reached the Ray cluster at {target} but found no node of it {where} to attach to: a driver "
            "needs a local node (`ray start --address ...` on this machine first)"
            + ("; --ray-node-ip must be the IP that node was started with" if node_ip else "")
        )
    if "Version mismatch" in text:
        return ClusterVersionError(f"cannot join the Ray cluster at {target}: {first}")
    return ClusterError(f"cannot join the Ray cluster at {target or '(new local instance)'}: {first}")


def _is_localhost(address: str | None) -> bool:
    """The names Ray rewrites to this host's outward IP (127.0.0.2 and the like are left alone)."""
    if not address:
        return False
    host = address.rsplit(":", 1)[0].strip("[]") if address.count(":") <= 1 else address.strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def _keep_loopback() -> Iterator[None]:
    """Let ``ray.init`` use 127.0.0.1 as given.

    Ray rewrites ``127.0.0.1``/``localhost`` in the bootstrap and node addresses to this host's
    outward IP (ray-project/ray#59110), so a node started with ``--node-ip-address 127.0.0.1``
    cannot be joined. Ray resolves the "local" IP through ``ENABLE_RAY_CLUSTER`` (False: the
    loopback IP); it is switched only for the duration of the call, and only when the caller
    named such an address.
    """
    constants: Any = importlib.import_module("ray._private.ray_constants")
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def is_node_loss(exc: BaseException) -> bool:
    """True for errors that mean the agent (its process or its node) is gone, not that the request was bad."""
    from ray import exceptions as rex

    lost = tuple(
        getattr(rex, n)
        for n in (
            "RayActorError",
            "ActorDiedError",
            "ActorUnavailableError",
            "NodeDiedError",
            "WorkerCrashedError",
            "OwnerDiedError",
            "ObjectLostError",
        )
        if hasattr(rex, n)
    )
    return isinstance(exc, lost)


def unwrap(exc: BaseException) -> BaseException:
    """The aivmm error a remote call raised, without Ray's wrapper; other errors as ServingError."""
    from ray import exceptions as rex

    if isinstance(exc, rex.GetTimeoutError):
        return DeadlineExceededError(f"no answer from the node agent in time: {exc}")
    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AivmmError):
            return cause
        return ServingError(f"node agent failed: {cause!r}" if cause is not None else str(exc).splitlines()[0])
    return exc
