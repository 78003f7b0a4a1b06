"""The request path between a ClusterModel and a node agent: one authenticated socket per request in flight.

Ray places and watches the agents and carries control calls (deploy, unload, status); requests
take a direct connection to the agent instead of a Ray actor call. An actor call costs ~1.4 ms
round trip on a busy 2-core host (benchmarks/cluster.py), a socket round trip ~0.1 ms, and the
target is 0.5 ms of overhead per request. The standard library's ``multiprocessing.connection``
does the framing, pickling (protocol 5: numpy arrays as one buffer) and the HMAC challenge with a
key only the registry hands out (through Ray, so Ray's own authentication covers it), so nothing
here is hand-rolled beyond a pool of connections.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from aivmm import errors

log = logging.getLogger(__name__)

# How often a waiting request looks whether its node was declared lost (so it never waits out
# the whole call timeout on a dead machine that sent no reset).
_POLL_S = 0.25


def _no_delay(conn: Connection) -> Connection:
    """Turn Nagle's algorithm off: Connection writes a large message as header then body, and the
    body would wait for the header's delayed ACK (48 ms per 48 KB request measured on loopback)."""
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.detach()  # the Connection keeps owning the descriptor
    return conn


class ChannelLost(ConnectionError):
    """The agent's end went away (its process or node died) before the answer came."""


def _encode_error(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def decode_error(name: str, message: str) -> Exception:
    """The aivmm error the agent raised (same class when it is one of aivmm's), else ServingError."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.AivmmError):
        try:
            return cls(message)
        except TypeError:  # a class with a richer constructor: keep its message
            pass
    return errors.ServingError(f"node agent failed: {name}: {message}")


class ChannelServer:
    """In the agent: accepts connections on ``host`` and answers each message with ``handler(*message)``."""

    def __init__(self, host: str, authkey: bytes, handler: Callable[..., Any]) -> None:
        self._listener = Listener((host, 0), authkey=authkey, backlog=128)
        self.address: tuple[str, int] = self._listener.address
        self._handler = handler
        self._closed = False
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        threading.Thread(target=self._accept, name="aivmm-channel-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception as exc:  # a failed handshake (wrong key) or the listener closing
                if self._closed:
                    return
                log.warning("channel: refused a connection: %s", exc)
                continue
            threading.Thread(target=self._serve, args=(_no_delay(conn),), name="aivmm-channel", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with self._lock:
            self._conns.add(conn)
        try:
            with conn:
                self._answer(conn)
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _answer(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            try:
                reply: tuple[Any, ...] = ("ok", self._handler(*message))
            except Exception as exc:  # every request gets an answer: the error travels back
                reply = ("err", *_encode_error(exc))
            try:
                conn.send(reply)
            except Exception as exc:
                if isinstance(exc, OSError | EOFError):
                    return
                conn.send(("err", *_encode_error(errors.ServingError(f"cannot send the answer: {exc!r}"))))

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._listener.close()
        # On Linux an accept() blocked in another thread keeps the socket listening after close();
        # one connection wakes it (its handshake fails, the loop sees _closed and ends).
        with contextlib.suppress(OSError):
            socket.create_connection(self.address, timeout=1.0).close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:  # peers waiting for an answer learn at once that none will come
            with contextlib.suppress(Exception):
                sock = socket.socket(fileno=conn.fileno())
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.detach()


class ChannelPool:
    """At the caller: idle connections to one agent, one borrowed per request in flight. Thread-safe."""

    def __init__(self, address: tuple[str, int], authkey: bytes) -> None:
        self.address = address
        self._authkey = authkey
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self.lost = False

    def call(self, message: tuple[Any, ...], timeout_s: float) -> Any:
        conn = self._borrow()
        ok = False
        try:
            try:
                conn.send(message)
                deadline = time.monotonic() + timeout_s
                while not conn.poll(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
                    if self.lost:
                        raise ChannelLost(f"agent at {self.address} was declared lost")
                    if time.monotonic() >= deadline:
                        raise errors.DeadlineExceededError(
                            f"no answer from the node agent at {self.address[0]}:{self.address[1]} in {timeout_s:g} s"
                        )
                reply = conn.recv()
            except (EOFError, OSError) as exc:
                raise ChannelLost(f"connection to the agent at {self.address} broke: {exc!r}") from None
            ok = True
        finally:
            self._give_back(conn, ok)
        if reply[0] == "ok":
            return reply[1]
        raise decode_error(reply[1], reply[2])

    def _borrow(self) -> Connection:
        with self._lock:
            if self.lost:
                raise ChannelLost(f"agent at {self.address} was declared lost")
            if self._idle:
                return self._idle.pop()
        try:
            return _no_delay(Client(self.address, authkey=self._authkey))
        except AuthenticationError as exc:  # not a lost node: this client holds another registry's key
            raise errors.ClusterAuthError(f"the agent at {self.address} refused this client's key: {exc}") from None
        except (OSError, EOFError) as exc:
            raise ChannelLost(f"cannot connect to the agent at {self.address}: {exc!r}") from None

    def _give_back(self, conn: Connection, ok: bool) -> None:
        with self._lock:
            if ok and not self.lost:
                self._idle.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()  # a connection whose answer is unknown is never reused

    def close(self) -> None:
        with self._lock:
            self.lost = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def answers(address: tuple[str, int], authkey: bytes, timeout_s: float) -> bool:
    """Whether the agent at ``address`` completes a handshake within ``timeout_s``: proof that its
    process serves (a bare TCP connect is not: the kernel accepts into the backlog of a listener
    whose process is already dying). The handshake has no timeout of its own, so it runs in a
    daemon thread that a dead peer's closing socket ends later."""
    done = threading.Event()
    ok: list[bool] = []

    def shake() -> None:
        try:
            Client(address, authkey=authkey).close()
            ok.append(True)
        except Exception:  # refused, reset or a wrong key: not serving
            ok.append(False)
        finally:
            done.set()

    threading.Thread(target=shake, name="aivmm-channel-probe", daemon=True).start()
    return done.wait(timeout_s) and ok == [True]
