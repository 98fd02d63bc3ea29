"""Tasks that exist only for the tests, registered on the real app before the test worker starts."""

from app.services.errors import PermanentError
from app.tasks.celery_app import app
from app.tasks.policies import DEFAULT_POLICY

# The default policy with a 1 s backoff base, so a retry happens within the test.
FAST_RETRY_POLICY = {**DEFAULT_POLICY, "retry_backoff": 1, "retry_backoff_max": 2}


@app.task(name="tests.fail_permanently", **FAST_RETRY_POLICY)
def fail_permanently():
    raise PermanentError("no such tracking number")


@app.task(name="tests.fail_once", bind=True, **FAST_RETRY_POLICY)
def fail_once(self):
    if self.request.retries == 0:
        raise ConnectionError("carrier timed out")
    return {"attempts": self.request.retries + 1}
