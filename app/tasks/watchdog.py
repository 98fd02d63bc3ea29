"""What keeps the worker and beat up, and heard, when a data volume fills up (imported by celery_app).

* The broker transport (app/core/broker_transport.py): a broker that refuses writes (`MISCONF`, its
  disk is full; `OOM`; `READONLY`) is a broker outage the consumer reconnects from, not the end of
  the worker; the message it had just taken is pushed back once writes succeed again.
* The disk watch (app/services/disk_watch.py): a thread in each worker's main process (a worker
  bootstep: never in the pool's children) and in each beat, which alerts through the webhook when a
  data volume goes critical and again when it is back, without the broker and without writing to
  the volumes. Processes sharing the incident store alert once between them; while the store cannot
  be written, each watching process alerts once (a host with three workers and a beat: four).
"""

import logging

from celery import bootsteps, signals

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.services.alerts import ProcessIncidents
from app.services.disk_watch import DiskWatch, data_volume_paths
from app.tasks.celery_app import app

log = logging.getLogger(__name__)

def make_disk_watch(name: str) -> DiskWatch | None:
    """The disk watch of this process, or None when DISK_WATCH_INTERVAL is 0."""
    settings = get_settings()
    interval = settings.disk_watch_interval
    if interval <= 0:
        return None
    return DiskWatch(lambda: data_volume_paths(settings), settings.disk_warn_percent, settings.disk_critical_percent,
                     ProcessIncidents(SessionFactory, settings.alert_webhook_url), interval, name=name)


class WorkerDiskWatch(bootsteps.StartStopStep):
    """The disk watch in the worker's main process, from start to shutdown.

    After the pool: its children are forked before the thread exists.
    """

    requires = ("celery.worker.components:Pool",)
    label = "disk watch"

    def __init__(self, worker, **kwargs):
        self.watch = None

    def start(self, worker):
        self.watch = make_disk_watch("disk-watch")
        if self.watch is not None:
            self.watch.start()
            log.info("disk watch: data volumes checked every %.0f s", self.watch.interval)

    def stop(self, worker):
        if self.watch is not None:
            self.watch.stop()
            self.watch = None


app.steps["worker"].add(WorkerDiskWatch)

_beat_watch: DiskWatch | None = None


@signals.beat_init.connect
def _watch_from_beat(**_):
    """Beat runs as long as any worker, and needs the broker no more than the watch does."""
    global _beat_watch
    if _beat_watch is None:
        _beat_watch = make_disk_watch("beat-disk-watch")
        if _beat_watch is not None:
            _beat_watch.start()
            log.info("disk watch: data volumes checked every %.0f s", _beat_watch.interval)
