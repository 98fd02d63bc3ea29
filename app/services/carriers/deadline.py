"""One deadline for a whole HTTP request: connect, TLS handshake, every write and every read.

httpx's timeouts bound each network operation alone, so a reply dripping one byte a second
never trips a 10 s read timeout (encode/httpx#1450, open). httpcore takes a network backend;
this one gives every operation no more than the time left before the deadline of the request
running in the current thread, and raises httpcore's own timeout once it has passed.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("http_request_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every network operation inside ends by `seconds` from now (monotonic clock)."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _time_left(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    ends = _deadline.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise expired("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> "DeadlineStream":
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking sockets, each operation held to the current request's deadline."""

    def __init__(self):
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None) -> DeadlineStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._sockets.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None) -> DeadlineStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._sockets.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport (its request mapping and errors), its connection pool on DeadlineBackend.

    httpx has no parameter for httpcore's network backend, so the pool it built is replaced by the
    same pool on ours (httpx 0.28 reaches the network only through `_pool`). Environment proxies are
    not used: httpx ignores them once a transport is given.
    """

    def __init__(self, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)):
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend())
