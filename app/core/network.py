"""How long a connection to another host may stay silent before it is given up, for every client.

One number, NETWORK_TIMEOUT (seconds, 10 by default), bounds each wait on the network: a reply
to a command, a connect, a dead peer on an idle connection (TCP keepalive), data sent and never
acknowledged (TCP_USER_TIMEOUT). Without these a host cut off by a partition waits for the
kernel's retransmission backoff, about 15 minutes, and resumes late after the link heals.
"""

import socket

KEEPALIVE_PROBES = 3


def connect_timeout(timeout: float) -> float:
    """A connect on a working network takes milliseconds. A third of the timeout is ample, and a dead
    connection plus the failed reconnect after it are given up within 1⅓ x timeout (13 s at 10)."""
    return min(3.0, max(1.0, timeout / 3))


def keepalive_times(timeout: float) -> tuple[int, int]:
    """(idle seconds before the first probe, seconds between probes): a dead idle peer is given
    up after idle + KEEPALIVE_PROBES x interval, about `timeout`."""
    idle = max(1, int(timeout / 2))
    interval = max(1, int((timeout - idle) / KEEPALIVE_PROBES))
    return idle, interval


def tcp_socket_options(timeout: float) -> dict[int, int]:
    """IPPROTO_TCP options for redis-py's socket_keepalive_options (it sets each on the socket)."""
    idle, interval = keepalive_times(timeout)
    return {
        socket.TCP_KEEPIDLE: idle,
        socket.TCP_KEEPINTVL: interval,
        socket.TCP_KEEPCNT: KEEPALIVE_PROBES,
        socket.TCP_USER_TIMEOUT: int(timeout * 1000),
    }


def redis_options(timeout: float) -> dict:
    """redis-py connection keywords (also kombu's Redis transport options) for a TCP Redis."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout(timeout),
        "socket_keepalive": True,
        "socket_keepalive_options": tcp_socket_options(timeout),
        # A pooled connection idle this long is pinged before use instead of failing its command.
        "health_check_interval": max(1, int(timeout / 2)),
    }


def libpq_options(timeout: float) -> dict:
    """psycopg2/libpq connection keywords: connect timeout, keepalives and tcp_user_timeout."""
    idle, interval = keepalive_times(timeout)
    return {
        "connect_timeout": max(2, int(connect_timeout(timeout))),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": KEEPALIVE_PROBES,
        "tcp_user_timeout": int(timeout * 1000),
    }
