"""System health: database, broker, beat, disk, memory and load in one structured report."""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from app.services.disk import CRITICAL, OK, WARN, check_disk_space, worst

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthThresholds:
    disk_warn_percent: float
    disk_critical_percent: float
    memory_warn_percent: float
    load_warn_per_cpu: float


@dataclass
class Check:
    name: str
    status: str
    detail: dict = field(default_factory=dict)


@dataclass
class HealthReport:
    status: str
    checks: list[Check]

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def degraded(self) -> list[Check]:
        return [c for c in self.checks if c.status != OK]


def _probe(name: str, probe: Callable[[], object]) -> Check:
    """Run a probe, which may return a dict of details; any exception is the finding, not a crash of the health check."""
    started = time.monotonic()
    try:
        detail = probe()
    except Exception as error:  # noqa: BLE001 - every failure is reported as the check's result
        return Check(name, CRITICAL, {"error": f"{type(error).__name__}: {error}"[:300]})
    extra = detail if isinstance(detail, dict) else {}
    return Check(name, OK, {"latency_ms": round((time.monotonic() - started) * 1000, 2), **extra})


def _memory_check(thresholds: HealthThresholds) -> Check:
    memory = psutil.virtual_memory()
    status = WARN if memory.percent >= thresholds.memory_warn_percent else OK
    return Check("memory", status, {"percent": memory.percent, "available_bytes": memory.available})


def _load_check(thresholds: HealthThresholds) -> Check:
    cpus = psutil.cpu_count() or 1
    load1, load5, load15 = os.getloadavg()
    per_cpu = load5 / cpus
    status = WARN if per_cpu >= thresholds.load_warn_per_cpu else OK
    return Check("load", status, {"load1": load1, "load5": load5, "load15": load15, "cpus": cpus})


def _disk_check(paths: list[Path], thresholds: HealthThresholds) -> Check:
    volumes = check_disk_space(paths, thresholds.disk_warn_percent, thresholds.disk_critical_percent)
    return Check("disk", worst(v.status for v in volumes), {"volumes": [v.as_dict() for v in volumes]})


def check_system_health(
    *,
    ping_database: Callable[[], object],
    ping_broker: Callable[[], object],
    ping_beat: Callable[[], dict | None],
    data_paths: list[Path],
    thresholds: HealthThresholds,
) -> HealthReport:
    """Probe every dependency and resource; log one warning line when anything is degraded."""
    checks = [
        _probe("database", ping_database),
        _probe("broker", ping_broker),
        _probe("beat", ping_beat),
        _disk_check(data_paths, thresholds),
        _memory_check(thresholds),
        _load_check(thresholds),
    ]
    report = HealthReport(worst(c.status for c in checks), checks)
    if report.degraded:
        log.warning(
            "system health %s: %s",
            report.status,
            "; ".join(f"{c.name}={c.status} {c.detail}" for c in report.degraded),
        )
    return report



def chromium_launch(executable: str, timeout_seconds: float) -> str:
    """Start Playwright's driver and Chromium as a screenshot does, then close them; Chromium's version.

    Finding the executable is not enough: the driver is a bundled node binary with shared libraries of its
    own (libatomic.so.1), and a missing one fails every screenshot while the browser file looks fine.
    """
    from playwright.sync_api import sync_playwright

    from app.services.evidence.browser import FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=FLAGS,
                                             timeout=timeout_seconds * 1000)
        try:
            return browser.version
        finally:
            browser.close()
