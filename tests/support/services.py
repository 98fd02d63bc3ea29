"""Finding the machine's Redis and PostgreSQL for the tests, and making databases of our own."""

import os

import pytest

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
# A stock Redis has databases 0 to 15.
REDIS_DATABASES = 16
DEFAULT_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def worker_database(url: str) -> str:
    """Under pytest-xdist, worker gwN takes database number base + N, so workers never flush each other's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base, _, number = url.rpartition("/")
    database = int(number or 0) + int(worker.removeprefix("gw"))
    if database >= REDIS_DATABASES:
        pytest.fail(f"TEST_REDIS_URL {url}: test worker {worker} would take database {database}, past the "
                    f"last one ({REDIS_DATABASES - 1}); give a lower database number", pytrace=False)
    return f"{base}/{database}"


def redis_test_url() -> str:
    """TEST_REDIS_URL's database (one number per test worker, reserved for these tests), flushed;
    skip when absent."""
    import redis

    url = worker_database(os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL))
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as error:
        pytest.skip(f"Redis not reachable at {url}: {error}")
    client.flushdb()
    return url


def postgres_database(name: str):
    """Create database `name` (suffixed with this process's id) afresh on TEST_POSTGRES_ADMIN_URL's
    server; drop it after. The suffix keeps two test runs on one machine out of each other's way."""
    import psycopg2
    from psycopg2 import sql

    name = f"{name}_{os.getpid()}"
    admin_url = os.environ.get("TEST_POSTGRES_ADMIN_URL", DEFAULT_POSTGRES_ADMIN_URL)
    try:
        admin = psycopg2.connect(admin_url, connect_timeout=3)
    except psycopg2.OperationalError as error:
        pytest.skip(f"PostgreSQL not reachable at {admin_url}: {str(error).strip()}")
    admin.autocommit = True

    def recreate(drop_only=False):
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if not drop_only:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    recreate()
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        recreate(drop_only=True)
        admin.close()


def embedded_broker_for_session(settings):
    from app.core.broker import EmbeddedBroker

    broker = EmbeddedBroker(settings)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
