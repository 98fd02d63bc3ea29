"""The worker's consumer: task events flushed in batches instead of one publish per event, and a
lost broker connection that never kills the worker, is retried every few seconds, and gives the
messages it held back to their queues once the broker answers again."""

import logging
from functools import partial

from celery.worker.consumer import Consumer

from app.core.broker_transport import QoS

log = logging.getLogger(__name__)

# Flower sees events this much later; the worker's main loop stops paying one Redis publish
# (and, in kombu, one new client object) per task event.
EVENT_FLUSH_INTERVAL = 0.1

# Seconds between two tries to reach a broker that went away.
RECONNECT_INTERVAL_MAX = 3


class EventBatchingConsumer(Consumer):
    """Stock Consumer flushes buffered task events at the next loop turn; this waits a moment."""

    _event_flush_pending = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._abandoned: list = []  # QoS of channels lost with messages still unacked on them

    def on_send_event_buffered(self):
        if self.hub and not self._event_flush_pending:
            self._event_flush_pending = True
            self.hub.call_later(EVENT_FLUSH_INTERVAL, self._flush_event_batch)

    def _flush_event_batch(self):
        self._event_flush_pending = False
        self._flush_events()

    def stop(self):
        self._flush_events()
        super().stop()

    def shutdown(self):
        self._flush_events()
        super().shutdown()

    def ensure_connected(self, conn):
        """Celery reconnects with kombu's default backoff, which grows to 30 s between tries: a worker
        back from a partition would idle up to half a minute. Try at least every few seconds."""
        conn.ensure_connection = partial(conn.ensure_connection, interval_start=1, interval_step=1,
                                         interval_max=RECONNECT_INTERVAL_MAX)
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc):
        """Celery 5.7 closes the connection after `collect()` has dropped the transport's client.
        kombu's Redis channel then needs that client (to restore unacked messages now, or to ack a
        message of the old channel later) and the AttributeError kills the worker. Collect only, as
        Celery 5.6 did: the old channel keeps its pool and acks through it once the broker is back.
        """
        abandoned = self._task_channel_qos()
        if self.connection is not None:
            self.connection.close = _leave_open
        super().on_connection_error_after_connected(exc)
        if abandoned is not None:
            self._abandoned.append(abandoned)

    def connect(self):
        connection = super().connect()
        self._give_back_abandoned(connection)
        return connection

    def _task_channel_qos(self):
        """The unacked bookkeeping of the channel tasks arrive on, if connected to a Redis broker."""
        channel = getattr(self.task_consumer, "channel", None)
        qos = getattr(channel, "qos", None)
        return qos if isinstance(qos, QoS) else None

    def _give_back_abandoned(self, connection) -> None:
        """Put back on their queues the messages held on a lost connection, now that a new one works.

        On a lost connection Celery cancels the running late-ack tasks and drops the prefetched ones
        and the ETA retries waiting in memory; they cannot be acked on the new channel, and kombu's
        restore at close needed the broker that had just gone away. Left alone they would wait in the
        broker's unacked set for the whole visibility timeout (an hour). A message can still arrive on
        the old channel as it closes (kombu reads a pending BRPOP reply in `Channel.close`). A task
        that finished as the link went down owes its ack: that is sent instead (it ran; it does not
        run again).

        The old channel cannot do this itself: closing it set its `connection` to None, and every
        command it would send needs that (`'NoneType' object has no attribute 'client'`). It goes
        through the new connection's channel instead (`QoS.hand_over`); the unacked set is one per
        broker.
        """
        while self._abandoned:
            try:
                given_back = self._abandoned[0].hand_over(connection.default_channel.qos)
            except Exception as error:  # noqa: BLE001 - the broker went away again: next connect
                log.warning("messages held on the lost broker connection not given back yet: %s", error)
                return
            self._abandoned.pop(0)
            if given_back:
                log.warning("gave back %d message(s) held on the lost broker connection to their queues",
                            given_back)


def _leave_open() -> None:
    """Stands in for closing a connection whose resources `collect()` has released already."""
