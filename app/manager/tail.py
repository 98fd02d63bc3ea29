"""Follow log files as `tail -F` does: survives rotation by rename."""

import os
import sys
import threading
import time
from pathlib import Path


def _open_at_end(path: Path):
    try:
        handle = path.open("r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, None
    handle.seek(0, os.SEEK_END)
    return handle, os.fstat(handle.fileno()).st_ino


def follow(path: Path, prefix: str, stop: threading.Event, interval: float = 0.2, out=sys.stdout) -> None:
    """Write every new line of `path` to `out` with `prefix` until `stop` is set."""
    handle, inode = _open_at_end(path)
    while not stop.is_set():
        line = handle.readline() if handle else ""
        if line:
            out.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
            out.flush()
            continue
        try:
            current = path.stat().st_ino
        except FileNotFoundError:
            current = None
        if current != inode:
            if handle:
                handle.close()
            handle, inode = (None, None) if current is None else (path.open("r", encoding="utf-8", errors="replace"), current)
        time.sleep(interval)
    if handle:
        handle.close()


def follow_in_background(paths: dict[str, Path], stop: threading.Event, prefixed: bool = True) -> list[threading.Thread]:
    """Follow each of `paths` in a thread of its own, its lines prefixed with `[name] ` unless not `prefixed`."""
    threads = [threading.Thread(target=follow, args=(path, f"[{name}] " if prefixed else "", stop), daemon=True)
               for name, path in paths.items()]
    for thread in threads:
        thread.start()
    return threads
