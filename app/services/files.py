"""Files confined to a root: temporary-file cleanup that never follows a symlink nor touches fresh files,
and opening a file only from inside a root."""

import errno
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.services.errors import PermanentError

log = logging.getLogger(__name__)
# O_NONBLOCK: opening a FIFO returns at once (and is refused as not a regular file) instead of waiting for a writer.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutsideRootError(PermanentError):
    """A path that, symlinks resolved, is not inside the root it must be read from."""


def open_inside(root: Path, path: Path) -> int:
    """A read-only descriptor of `path`, which must lie inside `root` once its symlinks are resolved.

    Each component below the root is then opened relative to its parent with O_NOFOLLOW, so a
    symlink put in place after the check is refused (ELOOP/ENOTDIR), never followed out of the root.
    """
    real_root = root.resolve()
    try:
        resolved = path.resolve(strict=True)
    except RuntimeError:  # a symlink loop: Python before 3.13 raises this instead of OSError
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
    if not resolved.is_relative_to(real_root) or resolved == real_root:
        raise OutsideRootError(f"{path} is not inside {root}")
    *directories, name = resolved.relative_to(real_root).parts
    descriptor = os.open(real_root, DIRECTORY_FLAGS)
    try:
        for directory in directories:
            parent, descriptor = descriptor, os.open(directory, DIRECTORY_FLAGS, dir_fd=descriptor)
            os.close(parent)
        return os.open(name, READ_FLAGS | os.O_NOFOLLOW, dir_fd=descriptor)
    finally:
        os.close(descriptor)


@dataclass
class CleanupReport:
    files_deleted: int = 0
    bytes_freed: int = 0
    dirs_removed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _remove_stale(entry: os.DirEntry, cutoff: float, report: CleanupReport) -> None:
    info = entry.stat(follow_symlinks=False)
    if info.st_mtime >= cutoff:
        return
    os.unlink(entry.path)  # for a symlink this removes the link, never its target
    report.files_deleted += 1
    if stat.S_ISREG(info.st_mode):
        report.bytes_freed += info.st_size


def _sweep(directory: str, cutoff: float, report: CleanupReport) -> bool:
    """Clean one directory depth-first; True when it ends up empty."""
    remaining = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    # Read before sweeping: deleting its files refreshes the directory's mtime.
                    was_stale = entry.stat(follow_symlinks=False).st_mtime < cutoff
                    if _sweep(entry.path, cutoff, report) and was_stale:
                        os.rmdir(entry.path)
                        report.dirs_removed += 1
                    else:
                        remaining += 1
                else:
                    _remove_stale(entry, cutoff, report)
                    remaining += os.path.lexists(entry.path)
            except OSError as error:
                remaining += 1
                report.errors.append(f"{entry.path}: {error.strerror or error}")
    return remaining == 0


def cleanup_temp_files(root: Path, ttl_seconds: float, now: float | None = None) -> CleanupReport:
    """Delete files under `root` not modified for `ttl_seconds`, and directories they leave empty."""
    report = CleanupReport()
    if not root.is_dir():
        return report
    cutoff = (time.time() if now is None else now) - ttl_seconds
    _sweep(str(root), cutoff, report)
    if report.files_deleted or report.errors:
        log.info("temp cleanup under %s: %d files, %d bytes freed, %d errors",
                 root, report.files_deleted, report.bytes_freed, len(report.errors))
    return report
