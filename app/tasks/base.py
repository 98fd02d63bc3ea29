"""The base class of every task: a cap on how often one message may be delivered."""

import logging

from celery import Task
from celery.exceptions import Reject

from app.core.broker import redis_client
from app.core.config import get_settings

log = logging.getLogger(__name__)

DELIVERY_COUNTER_TTL = 2 * 24 * 3600


class AppTask(Task):
    """A task whose message is dropped after TASK_MAX_DELIVERIES starts of the same attempt.

    With acks_late and task_reject_on_worker_lost, a task whose worker dies is requeued so no work
    is lost; a task that itself kills its worker (OOM, segfault) would then loop forever. Each
    redelivery (kombu flags restored messages) counts against (task id, retry number) in Redis;
    past the cap the message is rejected and the task marked failed. First deliveries cost nothing.
    """

    abstract = True
    _counter_client = None

    def _counter(self):
        if AppTask._counter_client is None:
            AppTask._counter_client = redis_client(get_settings().broker_url, socket_timeout=5)
        return AppTask._counter_client

    def before_start(self, task_id, args, kwargs):
        if not (self.request.delivery_info or {}).get("redelivered"):
            return
        key = f"app:redeliveries:{task_id}:{self.request.retries}"
        pipeline = self._counter().pipeline()
        pipeline.incr(key)
        pipeline.expire(key, DELIVERY_COUNTER_TTL)
        redeliveries, _ = pipeline.execute()
        deliveries = redeliveries + 1
        limit = get_settings().task_max_deliveries
        if deliveries > limit:
            log.error("task %s[%s] started %d times without finishing; dropping it", self.name, task_id, deliveries)
            raise Reject(f"delivered {deliveries} times (limit {limit}): the task keeps killing its worker", requeue=False)


class EvidenceTask(AppTask):
    """A step of a delivery's evidence (first argument: the delivery id); giving up shows on the delivery."""

    abstract = True
    evidence_step = "evidence"

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        from app.core.database import session_scope
        from app.services.evidence.status import mark_failed

        if args:
            with session_scope() as session:
                mark_failed(session, args[0], self.evidence_step, f"{type(exc).__name__}: {exc}")
        super().on_failure(exc, task_id, args, kwargs, einfo)
