"""Bounded logging of an outage: one line when a dependency stops answering, one a minute while
it stays down, one when it answers again, instead of a traceback per attempt."""

import logging
import time
from dataclasses import dataclass

from django.db.utils import DatabaseError, InterfaceError

from app.core.logging import one_line

REPEAT_EVERY = 60.0  # seconds between the lines of one outage


@dataclass
class _Outage:
    began: float
    logged: float
    failures: int = 1


class OutageLog(logging.Filter):
    """Counts failures per kind ("database", "broker"); as a filter on django-celery-beat's logger,
    it turns that logger's traceback per failed database call into the same bounded lines."""

    def __init__(self, logger: logging.Logger, clock=time.monotonic):
        super().__init__()
        self.logger, self.clock = logger, clock
        self.outages: dict[str, _Outage] = {}

    def failed(self, kind: str, error: BaseException) -> None:
        now = self.clock()
        outage = self.outages.get(kind)
        if outage is None:
            self.outages[kind] = _Outage(began=now, logged=now)
            self.logger.error("%s unreachable (%s): beat keeps trying, one line a minute until it answers",
                              kind, one_line(error))
            return
        outage.failures += 1
        if now - outage.logged >= REPEAT_EVERY:
            outage.logged = now
            self.logger.error("%s still unreachable after %.0f s, %d failed attempts (%s)",
                              kind, now - outage.began, outage.failures, one_line(error))

    def recovered(self, kind: str) -> None:
        outage = self.outages.pop(kind, None)
        if outage is not None:
            self.logger.warning("%s reachable again after %.0f s (%d failed attempts)",
                                kind, self.clock() - outage.began, outage.failures)

    def failures(self, kind: str) -> int:
        outage = self.outages.get(kind)
        return outage.failures if outage else 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (DatabaseError, InterfaceError)):
            self.failed("database", error)
            return False
        if "InterfaceError" in record.getMessage():  # stock logs this one without the exception
            self.failed("database", InterfaceError(record.getMessage()))
            return False
        return True
