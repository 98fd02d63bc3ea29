"""Temp cleanup against real files: confined to its root, keeps fresh files, counts bytes exactly."""

import collections
import os
import subprocess
import sys
import time

from app.services.files import OutsideRootError, cleanup_temp_files, open_inside

TTL = 3600
OPEN_TRIES = 5000


def make_file(path, size, age_seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def test_cleanup_deletes_old_files_and_reports_exact_bytes(tmp_path):
    root = tmp_path / "tmp"
    make_file(root / "a.bin", 1000, 2 * TTL)
    make_file(root / "nested" / "b.bin", 2345, 2 * TTL)
    report = cleanup_temp_files(root, TTL)
    assert report.files_deleted == 2
    assert report.bytes_freed == 3345
    assert not (root / "a.bin").exists() and not (root / "nested" / "b.bin").exists()
    assert root.is_dir(), "the root itself is never removed"


def test_cleanup_keeps_files_modified_within_the_ttl(tmp_path):
    root = tmp_path / "tmp"
    fresh = make_file(root / "fresh.bin", 10, TTL - 60)
    old = make_file(root / "old.bin", 10, TTL + 60)
    report = cleanup_temp_files(root, TTL)
    assert fresh.exists() and not old.exists()
    assert report.files_deleted == 1 and report.bytes_freed == 10


def test_cleanup_skips_symlink_outside_root(tmp_path):
    root = tmp_path / "tmp"
    outside = tmp_path / "precious"
    victim = make_file(outside / "keep.bin", 50, 10 * TTL)
    root.mkdir()
    link = root / "escape"
    link.symlink_to(outside, target_is_directory=True)
    stamp = time.time() - 10 * TTL
    os.utime(link, (stamp, stamp), follow_symlinks=False)
    report = cleanup_temp_files(root, TTL)
    assert victim.exists(), "a file reached through a symlink is never deleted"
    assert not link.is_symlink(), "the stale link itself is removed, inside the root"
    assert report.bytes_freed == 0


def test_cleanup_keeps_a_fresh_symlink_and_its_target(tmp_path):
    root = tmp_path / "tmp"
    root.mkdir()
    target = make_file(tmp_path / "elsewhere.bin", 5, 10 * TTL)
    (root / "link").symlink_to(target)
    report = cleanup_temp_files(root, TTL)
    assert (root / "link").is_symlink() and target.exists()
    assert report.files_deleted == 0


def test_cleanup_removes_directories_it_emptied_but_not_fresh_ones(tmp_path):
    root = tmp_path / "tmp"
    make_file(root / "old_dir" / "x", 1, 2 * TTL)
    stamp = time.time() - 2 * TTL
    os.utime(root / "old_dir", (stamp, stamp))
    (root / "new_dir").mkdir(parents=True)
    report = cleanup_temp_files(root, TTL)
    assert not (root / "old_dir").exists() and (root / "new_dir").is_dir()
    assert report.dirs_removed == 1


def test_cleanup_of_a_missing_root_is_a_no_op(tmp_path):
    report = cleanup_temp_files(tmp_path / "absent", TTL)
    assert report.files_deleted == 0 and not report.errors


def test_unreadable_directory_is_reported_and_the_rest_cleaned(tmp_path):
    root = tmp_path / "tmp"
    make_file(root / "old.bin", 7, 2 * TTL)
    locked = root / "locked"
    make_file(locked / "inside.bin", 1, 2 * TTL)
    locked.chmod(0)
    try:
        report = cleanup_temp_files(root, TTL)
    finally:
        locked.chmod(0o755)
    assert not (root / "old.bin").exists()
    if os.geteuid() != 0:  # root reads any directory, so there is no error to report
        assert report.errors


SWAPPER = """
import os, sys
directory, aside, link = sys.argv[1:]
while True:  # `directory` is the real directory, then a symlink to the outside one, then the real one again
    os.rename(directory, aside)
    os.rename(link, directory)
    os.rename(directory, link)
    os.rename(aside, directory)
"""


def test_open_inside_never_follows_a_symlink_swapped_in_after_the_check(tmp_path):
    root, outside = tmp_path / "inbox", tmp_path / "outside"
    (root / "scans").mkdir(parents=True)
    outside.mkdir()
    (root / "scans" / "scan.pdf").write_bytes(b"inside")
    (outside / "scan.pdf").write_bytes(b"outside")
    (root / "link").symlink_to(outside, target_is_directory=True)
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, root / "scans", root / "aside", root / "link"])
    seen = collections.Counter()
    try:
        for _ in range(OPEN_TRIES):
            try:
                descriptor = open_inside(root, root / "scans" / "scan.pdf")
            except (OSError, OutsideRootError) as error:
                seen[type(error).__name__] += 1
                continue
            with os.fdopen(descriptor, "rb") as handle:
                seen[handle.read().decode()] += 1
    finally:
        swapper.kill()
        swapper.wait()
    assert "outside" not in seen, seen
    assert seen["inside"] and seen["OutsideRootError"], f"the swap raced the opens: {seen}"
