"""Log rotation by rename: writers use WatchedFileHandler (or reopen per line), so nothing is lost."""

import gzip
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# A writer may still hold the just-renamed file until its next line; compress only files that
# have been quiet this long (the next weekly run compresses the rest).
QUIET_SECONDS = 300


@dataclass
class RotationReport:
    rotated: int = 0
    compressed: int = 0
    deleted: int = 0
    bytes_deleted: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _rotate(logs_dir: Path, stamp: str, report: RotationReport) -> None:
    for path in sorted(logs_dir.glob("*.log")):
        target = path.with_name(f"{path.name}.{stamp}")
        if path.is_file() and not path.is_symlink() and path.stat().st_size > 0 and not target.exists():
            path.rename(target)
            report.rotated += 1


def _compress(path: Path) -> None:
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.partial")
    with path.open("rb") as source, gzip.open(partial, "wb") as sink:
        shutil.copyfileobj(source, sink)
    os.utime(partial, (path.stat().st_atime, path.stat().st_mtime))
    partial.rename(target)
    path.unlink()


def rotate_logs(logs_dir: Path, retention_days: int, now: float | None = None) -> RotationReport:
    """Rename every non-empty *.log aside, gzip quiet rotated files, delete those past retention."""
    now = time.time() if now is None else now
    report = RotationReport()
    if not logs_dir.is_dir():
        return report
    _rotate(logs_dir, time.strftime("%Y%m%d-%H%M%S", time.localtime(now)), report)
    for path in sorted(logs_dir.glob("*.log.*")):
        if path.is_symlink() or not path.is_file() or path.name.endswith(".partial"):
            continue
        age = now - path.stat().st_mtime
        if age > retention_days * 86400:
            report.bytes_deleted += path.stat().st_size
            path.unlink()
            report.deleted += 1
        elif path.suffix != ".gz" and age > QUIET_SECONDS:
            _compress(path)
            report.compressed += 1
    log.info("logs rotated: %d renamed, %d compressed, %d deleted", report.rotated, report.compressed, report.deleted)
    return report
