"""Test set-up: the in-process app runs on the embedded default in a private directory.

Production variables are cleared before anything imports the app, so the tests never touch a
broker or database of the machine's except through the explicit TEST_* URLs below.
"""

import gc
import os
import tempfile
from pathlib import Path

import pytest

from tests.support.project import free_port  # imports nothing of the app

RUNTIME_ROOT = Path(tempfile.mkdtemp(prefix="cbm-tests-"))
for variable in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "APP_HOME"):
    os.environ.pop(variable, None)
os.environ.update(
    VAR_DIR=str(RUNTIME_ROOT / "var"),
    LOGS_DIR=str(RUNTIME_ROOT / "logs"),
    DJANGO_SETTINGS_MODULE="app.core.django_settings",
    APP_ENV_FILE="",  # a developer's .env must not point the tests at a real broker
    TRACKING_PROVIDER="simulator",
    SIMULATOR_PORT=str(free_port()),
    TRACKING_POLL_INTERVAL="0",  # every run polls again, so a test sees progress run by run
)

import django  # noqa: E402

django.setup()

from tests.support.browser import chromium_path  # noqa: E402
from tests.support.fonts import cjk_font_path  # noqa: E402
from tests.support.project import Project  # noqa: E402
from tests.support.services import (  # noqa: E402
    embedded_broker_for_session,
    postgres_database,
    redis_test_url,
)


@pytest.fixture(scope="session")
def settings():
    from app.core.config import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def embedded_broker(settings):
    """The embedded Valkey of the in-process app, started once for the session."""
    yield from embedded_broker_for_session(settings)


@pytest.fixture(scope="session")
def celery_app(embedded_broker):
    from app.tasks.celery_app import app

    app.loader.import_default_modules()
    import tests.support.test_tasks  # noqa: F401  (registered before the worker starts)

    yield app
    gc.collect()  # pending AsyncResults unsubscribe now, while the broker still answers
    app.close()


@pytest.fixture(scope="session")
def worker(celery_app):
    """One real worker (a thread in this process) consuming all five queues of the embedded broker."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as running:
        yield running


@pytest.fixture(params=["embedded", "redis"])
def broker_client(request):
    """A redis-py client on the embedded broker and on the machine's Redis (a database of the tests' own)."""
    import redis

    from app.core.broker import redis_client

    if request.param == "embedded":
        request.getfixturevalue("embedded_broker")
        return redis_client(request.getfixturevalue("settings").broker_url)
    return redis.Redis.from_url(request.getfixturevalue("redis_url"))


@pytest.fixture(scope="session")
def django_db(embedded_broker):
    """Django on the in-process SQLite file, migrated."""
    from app.core.migrations import migrate_all

    migrate_all()


@pytest.fixture
def beat_broker(settings, embedded_broker):
    """The in-process app's broker with no leader lease in it, nor afterwards; the test queue emptied after."""
    from app.core.broker import redis_client
    from app.scheduling.leader import LEASE_KEY

    client = redis_client(settings.broker_url)
    client.delete(LEASE_KEY)
    yield client
    client.delete("low_priority", LEASE_KEY)


@pytest.fixture
def clean_history(django_db):
    """No periodic task and no run history in the in-process database."""
    from django_celery_beat.models import PeriodicTask
    from sqlalchemy import delete

    from app.core.database import session_scope
    from app.models import JobRun

    PeriodicTask.objects.all().delete()
    with session_scope() as session:
        session.execute(delete(JobRun))


@pytest.fixture(scope="session")
def redis_url():
    """A Redis database number of the tests' own on the machine's Redis; skips when none answers."""
    return redis_test_url()


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database of the tests' own, created fresh; skips when PostgreSQL does not answer."""
    yield from postgres_database("celerybeat_test")


@pytest.fixture(params=["sqlite", "postgresql"])
def sa_engine(request, tmp_path):
    """A real SQLAlchemy engine on a fresh SQLite file and on a fresh PostgreSQL database."""
    from app.core.database import make_engine

    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
        yield engine
        engine.dispose()
        return
    database = postgres_database("celerybeat_test_engine")
    url = next(database)
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    yield engine
    engine.dispose()
    database.close()


@pytest.fixture(params=["embedded", "redis+postgresql"])
def project(request, tmp_path):
    """A copy of the project run as users run it, on the embedded default and on Redis+PostgreSQL."""
    extra_env = {}
    if request.param != "embedded":
        database = postgres_database("celerybeat_e2e")
        extra_env = {"CELERY_BROKER_URL": redis_test_url(), "DATABASE_URL": next(database)}
    copy = Project(tmp_path, extra_env)
    yield copy
    copy.kill_all()
    if request.param != "embedded":
        database.close()


@pytest.fixture
def embedded_project(tmp_path):
    """A copy of the project on the embedded default only."""
    copy = Project(tmp_path)
    yield copy
    copy.kill_all()


@pytest.fixture(scope="session")
def carrier_simulator(settings):
    """The Kuaidi100 simulator where the in-process app's settings point (TRACKING_PROVIDER=simulator)."""
    from app.core.config import SIMULATOR_ACCOUNT
    from app.services.carriers.simulator import CarrierSimulator, SimulatorServer

    server = SimulatorServer(CarrierSimulator(*SIMULATOR_ACCOUNT), port=settings.simulator_port).start()
    yield server
    server.stop()


@pytest.fixture
def cli_delivery(tmp_path):
    """A delivered delivery with its screenshot in the database and files root a CLI run with VAR_DIR sees."""
    from sqlalchemy.orm import sessionmaker

    from app.core.database import make_engine
    from app.core.migrations import upgrade_app_schema
    from tests.services.test_receipt import add_delivered

    var_dir = tmp_path / "var"
    var_dir.mkdir()
    engine = make_engine(f"sqlite:///{var_dir / 'app.db'}")
    upgrade_app_schema(engine)
    delivery_id = add_delivered(sessionmaker(bind=engine, expire_on_commit=False), var_dir / "files")
    engine.dispose()
    return var_dir, delivery_id


def pytest_runtest_setup(item):
    """A test marked needs_cjk_font or needs_chromium skips, naming the package, where the machine lacks it."""
    if item.get_closest_marker("needs_cjk_font"):
        cjk_font_path()
    if item.get_closest_marker("needs_chromium"):
        chromium_path()
