"""Log rotation by rename while a writer keeps writing: every line survives."""

import gzip
import logging
import os
import threading
import time
from logging.handlers import WatchedFileHandler

from app.services.logs import QUIET_SECONDS, rotate_logs


def read_all_lines(logs_dir):
    lines = []
    for path in logs_dir.iterdir():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            lines += handle.read().splitlines()
    return lines


def test_no_line_is_lost_while_rotating(tmp_path):
    logger = logging.getLogger("test.rotation")
    logger.propagate = False
    handler = WatchedFileHandler(tmp_path / "celery_worker.log")
    logger.addHandler(handler)
    stop = threading.Event()
    written = []

    def write():
        n = 0
        while not stop.is_set():
            logger.warning("line %d", n)
            written.append(f"line {n}")
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(5):
            time.sleep(0.05)
            rotate_logs(tmp_path, retention_days=30)
            time.sleep(1.01)  # rotated names carry a per-second stamp
    finally:
        stop.set()
        writer.join()
        handler.close()
    assert len(written) > 100
    assert sorted(read_all_lines(tmp_path)) == sorted(written)
    assert len(list(tmp_path.glob("celery_worker.log.*"))) >= 5


def test_quiet_rotated_files_are_compressed_and_old_ones_deleted(tmp_path):
    now = time.time()
    quiet = tmp_path / "celerybeat.log.20260101-000000"
    quiet.write_text("old line\n")
    os.utime(quiet, (now - QUIET_SECONDS - 10,) * 2)
    expired = tmp_path / "celerybeat.log.20250101-000000.gz"
    expired.write_bytes(gzip.compress(b"ancient\n"))
    os.utime(expired, (now - 31 * 86400,) * 2)
    (tmp_path / "task_results.log").write_text('{"id": 1}\n')
    (tmp_path / "empty.log").touch()

    report = rotate_logs(tmp_path, retention_days=30, now=now)

    assert report.compressed == 1 and report.deleted == 1 and report.rotated == 1
    assert gzip.decompress((tmp_path / "celerybeat.log.20260101-000000.gz").read_bytes()) == b"old line\n"
    assert not quiet.exists() and not expired.exists()
    assert (tmp_path / "empty.log").exists(), "an empty log is not rotated"
    assert not (tmp_path / "task_results.log").exists()
    rotated = list(tmp_path.glob("task_results.log.*"))
    assert len(rotated) == 1 and rotated[0].suffix != ".gz", "a just-rotated file waits to be quiet"
