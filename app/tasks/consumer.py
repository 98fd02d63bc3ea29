"""The worker's consumer, with task events flushed in batches instead of one publish per event."""

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
