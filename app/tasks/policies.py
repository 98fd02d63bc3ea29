"""The seed's retry policies, as keyword arguments for `@app.task`.

The seed writes `retry_kwargs={'countdown': N}` beside `retry_backoff=True`; Celery ignores that
countdown when backoff is on (the backoff factor would be 1 s), so N is the backoff factor here:
waits of about N, 2N, 4N ... seconds (full jitter), capped at RETRY_BACKOFF_MAX.
"""

from app.services.errors import PermanentError

RETRY_BACKOFF_MAX = 600


def _policy(max_retries: int, countdown: int) -> dict:
    return {
        "autoretry_for": (Exception,),
        "dont_autoretry_for": (PermanentError,),
        "retry_kwargs": {"max_retries": max_retries},
        "retry_backoff": countdown,
        "retry_backoff_max": RETRY_BACKOFF_MAX,
        "retry_jitter": True,
    }


DEFAULT_POLICY = _policy(max_retries=3, countdown=60)
CRITICAL_POLICY = _policy(max_retries=5, countdown=30)
RETRY_POLICIES = {"default": DEFAULT_POLICY, "critical": CRITICAL_POLICY}
