"""Every TCP connection to Redis and PostgreSQL carries the keepalive and user timeout NETWORK_TIMEOUT
asks for, read back from the real sockets (the partition itself: tests/test_multi_host.py)."""

import os
import socket

from kombu import Connection

from app.core.broker import redis_client
from app.core.database import make_engine
from app.core.network import keepalive_times
from app.tasks.celery_app import _redis_transport_options
from tests.support.services import postgres_database, redis_test_url

TIMEOUT = 8.0


def tcp_options(sock: socket.socket) -> dict[str, int]:
    read = lambda level, option: sock.getsockopt(level, option)  # noqa: E731
    return {
        "keepalive": read(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": read(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": read(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "probes": read(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout_ms": read(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def expected() -> dict[str, int]:
    idle, interval = keepalive_times(TIMEOUT)
    return {"keepalive": 1, "idle": idle, "interval": interval, "probes": 3, "user_timeout_ms": int(TIMEOUT * 1000)}


def test_postgresql_connections_give_a_silent_server_up():
    database = postgres_database("celerybeat_network")
    url = next(database).replace("postgresql://", "postgresql+psycopg2://", 1)
    for wait_limit_ms in (None, 2000):  # the shared engine and beat's run-history engine
        engine = make_engine(url, wait_limit_ms=wait_limit_ms, network_timeout=TIMEOUT)
        try:
            with engine.connect() as connection:
                raw = connection.connection.dbapi_connection
                options = tcp_options(socket.socket(fileno=os.dup(raw.fileno())))
                assert options == expected(), options
                if wait_limit_ms:
                    assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "2s"
        finally:
            engine.dispose()
    database.close()


def test_redis_clients_give_a_silent_server_up(monkeypatch):
    url = redis_test_url()
    monkeypatch.setenv("NETWORK_TIMEOUT", str(TIMEOUT))
    from app.core import config

    config.get_settings.cache_clear()
    try:
        client = redis_client(url)
        client.ping()
        connection = client.connection_pool.get_connection()
        try:
            assert tcp_options(connection._sock) == expected()
            assert connection.socket_timeout == TIMEOUT
        finally:
            client.connection_pool.release(connection)
    finally:
        config.get_settings.cache_clear()


def test_the_broker_transport_gives_a_silent_server_up():
    url = redis_test_url()
    with Connection(url, transport_options=_redis_transport_options(url, TIMEOUT)) as connection:
        channel = connection.default_channel
        channel.client.ping()
        pooled = channel.client.connection_pool.get_connection()
        try:
            assert tcp_options(pooled._sock) == expected()
        finally:
            channel.client.connection_pool.release(pooled)


def test_the_embedded_broker_socket_gets_a_timeout_and_no_tcp_options(embedded_broker):
    options = _redis_transport_options(embedded_broker.url, TIMEOUT)
    with Connection(embedded_broker.url, transport_options=options) as connection:
        assert connection.default_channel.client.ping()  # TCP options on a unix socket would raise
        assert connection.default_channel.client.connection_pool.connection_kwargs["socket_timeout"] == TIMEOUT
