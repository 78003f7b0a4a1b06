"""The Ray edge: connecting, starting pinned agents, and turning Ray's errors into aivmm's."""

from __future__ import annotations

import contextlib
import importlib
import socket
from collections.abc import Iterator
from typing import Any

from aivmm.errors import AivmmError, BackendUnavailableError, ConfigError, DeadlineExceededError, ServingError


def ray_module() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise BackendUnavailableError('aivmm.cluster needs Ray: pip install "aivmm[ray]" (or pip install ray)') from exc


def connect(address: str | None, *, node_ip_address: str | None, namespace: str) -> bool:
    """Join the cluster at ``address`` (None: a Ray already initialised in this process, or a new local one).

    Returns True when this call initialised Ray (so closing should shut it down).
    """
    ray = ray_module()
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False, "configure_logging": False}
    if node_ip_address is None and address and _is_loopback(address):
        node_ip_address = "127.0.0.1"  # a loopback cluster's raylets registered with it: find ours by it
    if node_ip_address:
        kwargs["_node_ip_address"] = node_ip_address
    if address is None:
        kwargs["include_dashboard"] = False
    try:
        if address and _is_loopback(address):
            with _keep_loopback(ray):
                ray.init(address=address, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as exc:  # reachable but refused: auth token, version mismatch, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot join the Ray cluster at {address}: {first} (with token authentication on, "
                          "this process needs the cluster's token: RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH)") from exc
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once with the address in the message: ``ray.init`` retries an unreachable GCS for minutes."""
    if address in ("auto", "local") or "://" in address:
        return  # resolved by Ray itself (environment, a new local instance, Ray Client)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"bad Ray address {address!r}: expected HOST:PORT such as 127.0.0.1:6379, or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc} (is `ray start --head` running there?)"
                          ) from None


def _is_loopback(address: str) -> bool:
    from aivmm.serve._server import is_loopback

    return is_loopback(address.rsplit(":", 1)[0].strip("[]"))


@contextlib.contextmanager
def _keep_loopback(ray: Any) -> Iterator[None]:
    """Let ``ray.init`` reach a cluster bound to loopback.

    Ray rewrites a loopback bootstrap address to this host's outward IP (ray-project/ray#59110), so
    a cluster started with ``--node-ip-address=127.0.0.1`` cannot be joined at all. Ray resolves the
    "local" IP through ``ENABLE_RAY_CLUSTER`` (False: the loopback IP); it is switched only for the
    duration of the call, and only when the caller asked for a loopback address.
    """
    constants = importlib.import_module("ray._private.ray_constants")
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def is_node_loss(exc: BaseException) -> bool:
    """True for errors that mean the agent (its process or its node) is gone, not that the request was bad."""
    from ray import exceptions as rex

    lost = tuple(getattr(rex, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                                             "NodeDiedError", "WorkerCrashedError", "OwnerDiedError",
                                             "ObjectLostError") if hasattr(rex, n))
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
