"""The files root: every file stored once under a name derived from its SHA-256.

A file is written under a temporary `.partial-*` name (in its final directory, or in `.incoming/`
when its name is known only once it is hashed) and renamed when complete, so a crash never leaves
a half-written file under a real name; storing the same bytes twice keeps the first copy.
"""

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
INCOMING = ".incoming"


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the files root
    sha256: str
    size: int


@dataclass(frozen=True)
class StagedFile:
    """A private copy (0600, in `.incoming/`) hashed as it was written, not yet under its content's name."""
    path: Path
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
    """A new temporary file, 0600, created with O_EXCL and O_NOFOLLOW (tempfile.mkstemp)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    return os.fdopen(descriptor, "wb"), Path(partial)


def _publish(partial: Path, target: Path) -> None:
    """Move a complete temporary file to its final name; an existing copy is kept and marked recent.

    The fresh modification time keeps a concurrent unreferenced-files cleanup off a copy that a
    new row is about to reference; a copy the cleanup removed just before is replaced by this one.
    """
    try:
        os.utime(target)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(partial, 0o600)
        os.replace(partial, target)
    else:
        partial.unlink()


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


@contextmanager
def staged_copy(root: Path, source: BinaryIO, max_bytes: int) -> Iterator[StagedFile]:
    """Copy at most `max_bytes` of the open `source` into a private temporary file under the files root,
    hashing what is written as it is written; the copy is removed on leaving unless publish() stored it.

    Check the copy, then publish it: the source is read once, so changing it meanwhile cannot make
    other bytes than those checked be stored.
    """
    digest, size = hashlib.sha256(), 0
    handle, partial = _partial(root / INCOMING)
    try:
        while size < max_bytes and (chunk := source.read(min(CHUNK, max_bytes - size))):
            digest.update(chunk)
            handle.write(chunk)
            size += len(chunk)
        _finish(handle)
        yield StagedFile(partial, digest.hexdigest(), size)
    finally:
        handle.close()
        partial.unlink(missing_ok=True)


def publish(root: Path, staged: StagedFile, suffix: str) -> StoredFile:
    """Store a staged copy under its content's name (an existing copy of the same bytes is kept)."""
    relative = relative_path(staged.sha256, suffix)
    _publish(staged.path, root / relative)
    return StoredFile(relative, staged.sha256, staged.size)
