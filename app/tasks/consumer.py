"""The worker's consumer: task events flushed in batches instead of one publish per event, and a
lost broker connection that never kills the worker."""

from celery.worker.consumer import Consumer

# Flower sees events this much later; the worker's main loop stops paying one Redis publish
# (and, in kombu, one new client object) per task event.
EVENT_FLUSH_INTERVAL = 0.1


class EventBatchingConsumer(Consumer):
    """Stock Consumer flushes buffered task events at the next loop turn; this waits a moment."""

    _event_flush_pending = False

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

    def on_connection_error_after_connected(self, exc):
        """Celery 5.7 closes the connection after `collect()` has dropped the transport's client.
        kombu's Redis channel then needs that client (to restore unacked messages now, or to ack a
        message of the old channel later) and the AttributeError kills the worker. Collect only, as
        Celery 5.6 did: the old channel keeps its pool and acks through it once the broker is back.
        """
        if self.connection is not None:
            self.connection.close = _leave_open
        super().on_connection_error_after_connected(exc)


def _leave_open() -> None:
    """Stands in for closing a connection whose resources `collect()` has released already."""
