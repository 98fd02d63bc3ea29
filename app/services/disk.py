"""Disk usage of the volumes the service writes to, against warn and critical thresholds."""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

OK, WARN, CRITICAL = "ok", "warn", "critical"


@dataclass(frozen=True)
class VolumeUsage:
    paths: list[str]
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float
    status: str

    def as_dict(self) -> dict:
        return asdict(self)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def level(percent: float, warn: float, critical: float) -> str:
    if percent >= critical:
        return CRITICAL
    return WARN if percent >= warn else OK


def check_disk_space(paths: list[Path], warn_percent: float, critical_percent: float) -> list[VolumeUsage]:
    """One entry per distinct volume holding any of `paths` (a path not yet created counts its parent's)."""
    by_device: dict[int, list[Path]] = {}
    for path in paths:
        existing = _existing_ancestor(path.resolve())
        by_device.setdefault(os.stat(existing).st_dev, []).append(existing)
    volumes = []
    for located in by_device.values():
        usage = psutil.disk_usage(str(located[0]))
        volumes.append(
            VolumeUsage(
                paths=sorted({str(p) for p in located}),
                total_bytes=usage.total,
                used_bytes=usage.used,
                free_bytes=usage.free,
                percent=usage.percent,
                status=level(usage.percent, warn_percent, critical_percent),
            )
        )
    return volumes


def worst(statuses) -> str:
    """The most severe of some statuses ('ok' when there are none)."""
    order = [OK, WARN, CRITICAL]
    return max(statuses, key=order.index, default=OK)
