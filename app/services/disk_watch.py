"""A watch on the data volumes that needs neither the broker nor any free space.

`check-disk-space` and `system-health-check` are tasks: they reach a worker through the broker, so
the one volume they most need to report, the broker's own, stops them when it fills (the broker
then refuses every write). This watch runs as a thread inside a long-running process (each worker's
main process, each beat; see app/tasks/watchdog.py), reads the volumes with statvfs, and reports
through `ProcessIncidents` (app/services/alerts.py): straight to the webhook, recorded in the
incident store when it answers, remembered in memory when it does not. It writes nothing to the
volumes it watches, and nothing it does can raise out of the thread (logging included: a handler
that cannot write reports to stderr and carries on).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.core.config import Settings
from app.services.disk import CRITICAL, OK, WARN, level

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

def data_volume_paths(settings: Settings) -> list[Path]:
    """Every directory the service writes its data to: VAR_DIR, LOGS_DIR, TEMP_DIR, BACKUPS_DIR,
    FILES_DIR, REPORTS_DIR, the embedded broker's data directory, and the SQLite file's directory."""
    paths = [settings.var_path, settings.logs_path, settings.temp_path, settings.backups_path, settings.files_path,
             settings.reports_path]
    if settings.uses_embedded_broker:
        paths.append(settings.var_path / "broker")  # app.core.broker.EmbeddedBroker.data_dir
    if settings.sqlite_path is not None:
        paths.append(settings.sqlite_path.parent)
    return paths


@dataclass(frozen=True)
class VolumeState:
    """One volume holding some of the watched paths, as statvfs tells it."""

    paths: list[str]  # sorted; the incident key is `disk:<first>`, as check-disk-space names it
    total_bytes: int
    free_bytes: int  # available to the service (not counting blocks reserved for root)
    percent: float
    status: str  # ok, warn or critical
    problem: str | None  # why writes fail, when they do: no space, no inodes, read-only

    @property
    def key(self) -> str:
        return f"disk:{self.paths[0]}"

    def summary(self) -> str:
        words = (f"disk {self.status}: {self.percent}% used, {self.free_bytes // 2**20} MiB free "
                 f"({', '.join(self.paths)})")
        return f"{words}; writes fail: {self.problem}" if self.problem else words


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def measure_volumes(paths: list[Path], warn_percent: float, critical_percent: float) -> list[VolumeState]:
    """One state per distinct volume holding any of `paths` (a path not yet created counts its parent's)."""
    by_device: dict[int, set[Path]] = {}
    for path in paths:
        existing = _existing_ancestor(path.resolve())
        by_device.setdefault(os.stat(existing).st_dev, set()).add(existing)
    states = []
    for located in by_device.values():
        ordered = sorted(str(p) for p in located)
        stats = os.statvfs(ordered[0])
        total = stats.f_blocks * stats.f_frsize
        free = stats.f_bavail * stats.f_frsize
        used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        # As psutil.disk_usage (check-disk-space) counts it: the share of what the service may use.
        percent = round(100.0 * used / (used + free), 1) if used + free else 100.0
        problem = None
        if stats.f_flag & os.ST_RDONLY:
            problem = "read-only file system"
        elif stats.f_blocks and stats.f_bavail == 0:
            problem = "no space left on device"
        elif stats.f_files and stats.f_favail == 0:
            problem = "no inodes left"
        status = CRITICAL if problem else level(percent, warn_percent, critical_percent)
        states.append(VolumeState(ordered, total, free, percent, status, problem))
    return states


class DiskWatch:
    """Every `interval` seconds: each watched volume that is critical (past DISK_CRITICAL_PERCENT, or
    refusing writes) raises its incident, each one back under DISK_WARN_PERCENT clears it."""

    def __init__(self, paths: Callable[[], list[Path]], warn_percent: float, critical_percent: float,
                 incidents, interval: float, name: str = "disk-watch"):
        self.paths, self.incidents, self.interval, self.name = paths, incidents, interval, name
        self.warn_percent, self.critical_percent = warn_percent, critical_percent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None  # the last failure of a check, logged once until one succeeds

    def check(self) -> list[VolumeState]:
        """One look at every volume; raise or clear each one's incident."""
        states = measure_volumes(self.paths(), self.warn_percent, self.critical_percent)
        # Alert first: clearing asks the incident store, which may be slow to answer.
        for state in sorted(states, key=lambda s: s.status != CRITICAL):
            if state.status == CRITICAL:
                self.incidents.raise_(state.key, CRITICAL, state.summary())
            elif state.status == OK:
                self.incidents.clear(state.key)
            # WARN: check-disk-space reports it; an incident opened here stays open until the volume is OK.
        return states

    def run(self) -> None:
        # A stop signal must reach the main thread only: beat blocks SIGTERM there while it records and
        # pushes a run (scheduler._dispatch_safely), and the kernel would hand it to this thread instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while True:
            try:
                self.check()
                self._failing = None
            except Exception as error:  # noqa: BLE001 - the watch outlives anything one look runs into
                words = f"{type(error).__name__}: {error}"
                if words != self._failing:
                    self._failing = words
                    log.error("disk watch: volumes not checked: %s", words)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


__all__ = ["CRITICAL", "OK", "WARN", "DiskWatch", "VolumeState", "data_volume_paths", "measure_volumes"]
