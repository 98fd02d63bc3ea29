"""Only transient errors are retried: the tuple is pinned, and a real worker runs a bug once and alerts.

The tasks below are registered when this module is collected, before the session's worker starts.
"""

import socket
import subprocess
import sys
from collections import Counter

import httpx
import kombu.exceptions
import pytest
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded
from django.db import utils as django_db
from playwright.sync_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout
from sqlalchemy import delete, select

from app.core.broker_transport import WritesRefused
from app.core.database import session_scope
from app.models import AlertIncident, JobRun
from app.services.backups import BackupError
from app.services.carriers.base import CarrierError, CarrierRequestError
from app.services.errors import PermanentError
from app.services.evidence.screenshot import ScreenshotError
from app.tasks.celery_app import app
from app.tasks.policies import RETRY_POLICIES, TRANSIENT_ERRORS
from tests.support.test_tasks import FAST_RETRY_POLICY
from tests.test_alert_tasks import eventually, job_outcome

RESULT_TIMEOUT = 60
JOB = "test-retry-policy-job"
EXECUTIONS: Counter = Counter()  # task id -> times its body ran (the worker is a thread of this process)


def test_the_transient_errors_are_these():
    assert TRANSIENT_ERRORS == (
        sqlalchemy.exc.OperationalError, sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError,
        django_db.OperationalError, django_db.InterfaceError,
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError,
        httpx.TransportError, CarrierError,
        ScreenshotError, PlaywrightError,
        BackupError, ConnectionError, TimeoutError, SoftTimeLimitExceeded,
    )


@pytest.mark.parametrize("policy", sorted(RETRY_POLICIES))
def test_every_policy_retries_the_transient_errors_and_never_a_permanent_one(policy):
    assert RETRY_POLICIES[policy]["autoretry_for"] is TRANSIENT_ERRORS
    assert RETRY_POLICIES[policy]["dont_autoretry_for"] == (PermanentError,)


@pytest.mark.parametrize("error", [
    redis.exceptions.BusyLoadingError, WritesRefused, PlaywrightTimeout, httpx.ConnectTimeout, httpx.ReadError,
    ConnectionRefusedError, ConnectionResetError, socket.timeout,
])
def test_the_subclasses_meant_are_covered(error):
    assert issubclass(error, TRANSIENT_ERRORS)


@pytest.mark.parametrize("error", [
    TypeError, KeyError, ValueError, AttributeError, FileNotFoundError, PermissionError, RuntimeError,
    sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DataError, django_db.IntegrityError,
])
def test_bugs_and_bad_data_are_not_transient(error):
    assert not issubclass(error, TRANSIENT_ERRORS)


# Through the real worker


NOT_RETRIED = {"TypeError": lambda: TypeError("unsupported operand type(s) for +: 'int' and 'dict'"),
               "KeyError": lambda: KeyError("delivery_id"),
               # A CarrierError, but a PermanentError too: dont_autoretry_for wins.
               "CarrierRequestError": lambda: CarrierRequestError("Kuaidi100 400: no such tracking number")}
TRANSIENT = {
    "database": lambda: sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    "broker": lambda: redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
    "http": lambda: httpx.ConnectTimeout("timed out"),
    "carrier": lambda: CarrierError("HTTP 503"),
    "browser": lambda: ScreenshotError("page did not render within the timeout"),
}


@app.task(name="tests.retry_policy.fail_with", bind=True, **FAST_RETRY_POLICY)
def fail_with(self, kind):
    EXECUTIONS[self.request.id] += 1
    raise NOT_RETRIED[kind]()


@app.task(name="tests.retry_policy.fail_once_with", bind=True, **FAST_RETRY_POLICY)
def fail_once_with(self, kind):
    EXECUTIONS[self.request.id] += 1
    if self.request.retries == 0:
        raise TRANSIENT[kind]()
    return {"attempts": self.request.retries + 1}


def open_job_incident() -> AlertIncident | None:
    with session_scope() as session:
        return session.scalar(select(AlertIncident).where(AlertIncident.key == f"job:{JOB}",
                                                          AlertIncident.closed_at.is_(None)))


@pytest.fixture
def clean_job(django_db):
    def clean():
        with session_scope() as session:
            session.execute(delete(JobRun).where(JobRun.name == JOB))
            session.execute(delete(AlertIncident).where(AlertIncident.key == f"job:{JOB}"))

    clean()
    yield
    clean()


@pytest.mark.parametrize("kind", sorted(NOT_RETRIED))
def test_a_bug_in_a_periodic_job_runs_once_and_raises_its_alert(worker, celery_app, clean_job, kind):
    result = celery_app.send_task("tests.retry_policy.fail_with", args=[kind], headers={"periodic_task_name": JOB})
    result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert result.failed()
    assert EXECUTIONS[result.id] == 1, "not retried"
    assert eventually(lambda: job_outcome(result.id)) == "failure"
    assert f"{kind}: " in eventually(open_job_incident).summary


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_a_transient_error_is_retried(worker, celery_app, kind):
    result = celery_app.send_task("tests.retry_policy.fail_once_with", args=[kind])
    assert result.get(timeout=RESULT_TIMEOUT) == {"attempts": 2}
    assert EXECUTIONS[result.id] == 2



def test_loading_the_app_and_its_tasks_leaves_playwrights_api_unimported():
    """Every worker, beat and CLI process loads the app; only a screenshot needs Playwright's API."""
    probe = ("from app.tasks.celery_app import app; app.loader.import_default_modules(); import sys; "
             "print('playwright.sync_api' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stdout + result.stderr
