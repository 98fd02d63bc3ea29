"""The Celery app module Flower runs on: ours, with Flower's login throttled and /metrics behind it.

    celery -A app.manager.flower_login flower --address=127.0.0.1 --port=5555

Flower checks its basic-auth login in `BaseHandler.get_current_user` and answers every wrong
guess at once (about 200 a second). Here, LOGIN_FAILURE_LIMIT wrong logins from one address, each
within LOGIN_LOCKOUT_SECONDS of the one before, get that address 429 on every page that needs the
login, right password or not, until LOGIN_LOCKOUT_SECONDS pass without another wrong one: the same
rule the admin keeps with django-axes. Flower serves /metrics without a login; here it needs the
login unless FLOWER_METRICS_OPEN=true.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import tornado.web
from flower.views import BaseHandler
from flower.views.monitor import Metrics

from app.core.config import Settings, get_settings
from app.tasks.celery_app import app  # noqa: F401  (`celery -A` finds the app here)

TOO_MANY_REQUESTS = 429


class FailedLogins:
    """Wrong logins per address, kept only while they count (memory bounded by the guesses of one window)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, last), oldest first
        self._lock = threading.Lock()

    def locked_out(self, address: str) -> bool:
        with self._lock:
            self._forget_expired()
            return self._failures.get(address, (0, 0.0))[0] >= self.limit

    def record(self, address: str) -> None:
        with self._lock:
            self._forget_expired()
            count, _ = self._failures.pop(address, (0, 0.0))
            self._failures[address] = (count + 1, self.clock())

    def __len__(self) -> int:
        """Addresses remembered."""
        with self._lock:
            return len(self._failures)

    def _forget_expired(self) -> None:
        horizon = self.clock() - self.window
        while self._failures and next(iter(self._failures.values()))[1] <= horizon:
            self._failures.popitem(last=False)


def throttled(check_login: Callable, failures: FailedLogins) -> Callable:
    """`get_current_user` that refuses a locked-out address; a wrong guess meanwhile starts its time again."""

    def get_current_user(handler: BaseHandler):
        address = handler.request.remote_ip
        locked_out = failures.locked_out(address)
        try:
            user = check_login(handler)
        except tornado.web.HTTPError as error:
            if error.status_code == 401 and handler.request.headers.get("Authorization"):
                failures.record(address)  # a request without credentials is the browser asking, not a guess
            if not locked_out:
                raise
            user = None
        if locked_out:
            raise tornado.web.HTTPError(TOO_MANY_REQUESTS, reason="Too Many Requests",
                                        log_message="too many failed logins from this address; try again later")
        return user

    return get_current_user


def guard_flower(settings: Settings) -> None:
    """Throttle Flower's login; put /metrics behind it unless FLOWER_METRICS_OPEN."""
    failures = FailedLogins(settings.login_failure_limit, settings.login_lockout_seconds)
    BaseHandler.get_current_user = throttled(BaseHandler.get_current_user, failures)
    if not settings.flower_metrics_open:
        Metrics.get = tornado.web.authenticated(Metrics.get)


guard_flower(get_settings())
