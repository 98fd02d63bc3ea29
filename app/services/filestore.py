"""The files root: every file stored once under a name derived from its SHA-256.

A file is written under a temporary `.partial-*` name (in its final directory, or in `.incoming/`
when its name is known only once it is hashed) and renamed when complete, so a crash never leaves
a half-written file under a real name; storing the same bytes twice keeps the first copy.
"""

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the files root
    sha256: str
    size: int


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def relative_path(sha256: str, suffix: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"


def _partial(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    return os.fdopen(descriptor, "wb"), Path(partial)


def _publish(partial: Path, target: Path) -> None:
    """Move a complete temporary file to its final name; an existing copy is kept and marked recent.

    The fresh modification time keeps a concurrent unreferenced-files cleanup off a copy that a
    new row is about to reference.
    """
    if target.exists():
        partial.unlink()
        os.utime(target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(partial, 0o640)
    os.replace(partial, target)


def _finish(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def store_bytes(root: Path, data: bytes, suffix: str) -> StoredFile:
    """Store `data` under the files root (once per content); where it is, its SHA-256 and size."""
    sha256 = hashlib.sha256(data).hexdigest()
    relative = relative_path(sha256, suffix)
    handle, partial = _partial((root / relative).parent)
    try:
        handle.write(data)
        _finish(handle)
        _publish(partial, root / relative)
    except BaseException:
        handle.close()
        partial.unlink(missing_ok=True)
        raise
    return StoredFile(relative, sha256, len(data))


def store_copy(root: Path, source: Path, suffix: str) -> StoredFile:
    """Copy the file at `source` into the files root, hashing what is written as it is written
    (one read: a source changing meanwhile cannot end up under another content's name)."""
    digest, size = hashlib.sha256(), 0
    handle, partial = _partial(root / ".incoming")
    try:
        with source.open("rb") as origin:
            while chunk := origin.read(CHUNK):
                digest.update(chunk)
                handle.write(chunk)
                size += len(chunk)
        _finish(handle)
        relative = relative_path(digest.hexdigest(), suffix)
        _publish(partial, root / relative)
    except BaseException:
        handle.close()
        partial.unlink(missing_ok=True)
        raise
    return StoredFile(relative, digest.hexdigest(), size)
