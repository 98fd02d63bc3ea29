"""Documents attached to deliveries: PDFs and images, checked by content, stored once, cleaned when unreferenced.

A file's type comes from its first bytes, never from its name. A PDF must open with pypdf (its page
count is recorded); an image must decode with Pillow. Anything else is rejected with a reason an
operator can act on, which never quotes the file's content (it may be anyone's secret).
The source is read once into a private copy; that copy is what is checked, and what is stored.
"""

import errno
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from pypdf import PdfReader
from pypdf.errors import DependencyError, PyPdfError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.database import session_scope
from app.models import Delivery, DeliveryFile, FileKind
from app.services.errors import MissingDependencyError, PermanentError
from app.services.files import READ_FLAGS, open_inside
from app.services.filestore import publish, staged_copy

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # an A4 page scanned at 600 dpi is 35 Mpx; decoding holds every pixel in memory
HEAD_BYTES = 16
PARTIAL_PREFIX = ".partial-"  # filestore's temporary names
CLEANUP_BATCH = 500
DIGEST_NAME = re.compile(r"^[0-9a-f]{64}")

# pypdf and Pillow raise more than their own errors on malformed files.
PDF_READ_ERRORS = (PyPdfError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)
IMAGE_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


class RejectedDocument(PermanentError):
    """Not a PDF or image this service accepts; the message names the file and says why."""


@dataclass(frozen=True)
class DetectedType:
    content_type: str
    suffix: str


@dataclass(frozen=True)
class Document:
    content_type: str
    suffix: str
    page_count: int | None


PDF = DetectedType("application/pdf", ".pdf")
SIGNATURES = [
    (re.compile(rb"%PDF-"), PDF),
    (re.compile(rb"\x89PNG\r\n\x1a\n"), DetectedType("image/png", ".png")),
    (re.compile(rb"\xff\xd8\xff"), DetectedType("image/jpeg", ".jpg")),
    (re.compile(rb"GIF8[79]a"), DetectedType("image/gif", ".gif")),
    (re.compile(rb"RIFF.{4}WEBP", re.DOTALL), DetectedType("image/webp", ".webp")),
    (re.compile(rb"II\*\x00|MM\x00\*"), DetectedType("image/tiff", ".tif")),
]
PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP",
                  "image/tiff": "TIFF"}
# What an operator most often attaches by mistake, to say what the file probably is.
HINTS = [
    (re.compile(rb"PK\x03\x04|PK\x05\x06"), "a ZIP/Office file?"),
    (re.compile(rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), "an old Office (.doc/.xls) file?"),
    (re.compile(rb"\{\\rtf"), "an RTF file?"),
    (re.compile(rb".{4}ftyp(heic|heix|mif1|msf1)", re.DOTALL), "a HEIC photo? export it as JPEG"),
    (re.compile(rb"\s*<"), "HTML or XML?"),
]


def detect_type(path: Path, name: str | None = None) -> DetectedType:
    """The file's type from its first bytes; RejectedDocument if empty, too big, or not a PDF or image."""
    name = name or path.name
    with _open_regular(path) as handle:
        _check_size(os.fstat(handle.fileno()).st_size, name)
        head = handle.read(HEAD_BYTES)
    for signature, detected in SIGNATURES:
        if signature.match(head):
            return detected
    raise RejectedDocument(f"{name} is not a PDF or image ({_describe(head)})")


def _check_size(size: int, name: str) -> None:
    if size == 0:
        raise RejectedDocument(f"{name} is empty")
    if size > MAX_DOCUMENT_BYTES:
        raise RejectedDocument(f"{name} is {size / 2**20:.1f} MiB, more than the "
                               f"{MAX_DOCUMENT_BYTES // 2**20} MiB limit")


def _open_regular(path: Path, inbox: Path | None = None) -> BinaryIO:
    """`path` opened for reading (only from inside `inbox` when given); PermanentError if it is no regular file."""
    try:
        descriptor = open_inside(inbox, path) if inbox else os.open(path, READ_FLAGS)
    except FileNotFoundError:
        raise PermanentError(f"no such file: {path}") from None
    except OSError as error:  # ELOOP or ENOTDIR: a symlink swapped into the inbox after the check
        raise PermanentError(f"cannot read {path}: {error.strerror or error}") from None
    handle = os.fdopen(descriptor, "rb")
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        handle.close()
        raise PermanentError(f"not a regular file: {path}")
    return handle


def _describe(head: bytes) -> str:
    """A guess at what the leading bytes are ('a ZIP/Office file?'), never the bytes themselves."""
    hint = next((guess for pattern, guess in HINTS if pattern.match(head)), None)
    if hint is None and _is_text(head.decode("utf-8", errors="replace").rstrip("\ufffd")):  # a cut character
        hint = "plain text?"
    return hint or "unrecognised content"


def _is_text(text: str) -> bool:
    return bool(text) and "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text)


def inspect_document(path: Path, name: str | None = None) -> Document:
    """Type, suffix and (for a PDF) page count of a file that opens as what its first bytes say."""
    name = name or path.name
    detected = detect_type(path, name)
    if detected == PDF:
        return Document(detected.content_type, detected.suffix, _pdf_page_count(path, name))
    _verify_image(path, name, PILLOW_FORMATS[detected.content_type])
    return Document(detected.content_type, detected.suffix, None)


def _pdf_page_count(path: Path, name: str) -> int:
    with path.open("rb") as handle:  # a path would make pypdf read the whole file into memory
        try:
            reader = PdfReader(handle)
            if reader.is_encrypted and not reader.decrypt(""):
                raise RejectedDocument(f"{name} is a password-protected PDF: attach it without the password")
            pages = len(reader.pages)
        except DependencyError as error:
            raise MissingDependencyError(f"{name}: reading this encrypted PDF needs the cryptography package "
                                         f"(pip install cryptography): {error}") from error
        except PDF_READ_ERRORS as error:  # named by type only: pypdf's messages quote the file's bytes
            raise RejectedDocument(f"{name} is not a readable PDF (truncated or damaged? "
                                   f"{type(error).__name__})") from None
    if pages == 0:
        raise RejectedDocument(f"{name} is a PDF without pages")
    return pages


def _verify_image(path: Path, name: str, pillow_format: str) -> None:
    # verify() checks structure (PNG checksums) without decoding; only load() notices a truncated JPEG.
    try:
        with Image.open(path, formats=[pillow_format]) as image:
            image.verify()
        with Image.open(path, formats=[pillow_format]) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise RejectedDocument(f"{name} is {width}x{height} pixels, more than "
                                       f"{MAX_IMAGE_PIXELS // 1_000_000} million")
            image.load()
    except IMAGE_READ_ERRORS as error:  # named by type only: Pillow's messages may quote the file's bytes
        raise RejectedDocument(f"{name} is not a readable {pillow_format} image (truncated or damaged? "
                               f"{type(error).__name__})") from None


def register_document(factory: sessionmaker, files_root: Path, delivery_id: int, source_path: Path,
                      original_name: str | None = None, inbox: Path | None = None) -> dict:
    """Check a PDF or image, store it by content and record it for the delivery, once.

    With `inbox`, the source must lie inside it once resolved (a relative path is taken from it);
    without, any path this process may read.
    """
    source_path = inbox / source_path if inbox else Path(source_path)
    name = original_name or source_path.name
    # 1. Fail before copying anything: unknown delivery, missing file, or too big.
    with session_scope(factory) as session:
        _require_delivery(session, delivery_id)
    with _open_regular(source_path, inbox) as source:
        _check_size(os.fstat(source.fileno()).st_size, name)
        # 2. Read the source once into a private copy, check that copy, and store that same file
        # (nothing is written when the same bytes are there already).
        with staged_copy(files_root, source, MAX_DOCUMENT_BYTES + 1) as staged:
            document = inspect_document(staged.path, name)
            stored = publish(files_root, staged, document.suffix)
    # 3. Record it, or find the row an earlier (maybe retried) registration wrote.
    with session_scope(factory) as session:
        _require_delivery(session, delivery_id, lock=True)
        row = _document_row(session, delivery_id, stored.sha256)
        duplicate = row is not None
        if not duplicate:
            row = DeliveryFile(delivery_id=delivery_id, kind=FileKind.DOCUMENT, path=stored.path,
                               sha256=stored.sha256, size=stored.size, content_type=document.content_type,
                               page_count=document.page_count, original_name=name[:255])
            session.add(row)
            session.flush()
        summary = _summary(row, duplicate)
    log.info("document %s for delivery %d: %s (%s)", name, delivery_id, stored.path,
             "already attached" if duplicate else "stored")
    return summary


def _require_delivery(session: Session, delivery_id: int, lock: bool = False) -> None:
    # The lock makes retention's delete of this delivery wait until the file row is committed,
    # so that delete's next statement removes the row too (retention.py deletes file rows last).
    query = select(Delivery.id).where(Delivery.id == delivery_id)
    if session.scalar(query.with_for_update() if lock else query) is None:
        raise PermanentError(f"no delivery {delivery_id}")


def _document_row(session: Session, delivery_id: int, sha256: str) -> DeliveryFile | None:
    return session.scalar(select(DeliveryFile).where(DeliveryFile.delivery_id == delivery_id,
                                                     DeliveryFile.kind == FileKind.DOCUMENT,
                                                     DeliveryFile.sha256 == sha256))


def _summary(row: DeliveryFile, duplicate: bool) -> dict:
    return {"id": row.id, "delivery_id": row.delivery_id, "path": row.path, "sha256": row.sha256,
            "size": row.size, "content_type": row.content_type, "page_count": row.page_count,
            "original_name": row.original_name, "duplicate": duplicate}


@dataclass
class UnreferencedCleanupReport:
    files_deleted: int = 0
    partial_files_deleted: int = 0
    bytes_freed: int = 0
    dirs_removed: int = 0
    symlinks_skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Candidate:
    path: str  # absolute
    relative: str  # as DeliveryFile.path writes it


def remove_unreferenced_files(factory: sessionmaker, files_root: Path, min_age_seconds: float = 3600,
                              batch_size: int = CLEANUP_BATCH) -> UnreferencedCleanupReport:
    """Delete files under the files root that no delivery file row references, once older than min_age.

    The tree is walked lazily and looked up in the database a batch at a time, so neither the
    directory nor the table is ever held in memory whole. Symlinks are left alone.
    """
    report = UnreferencedCleanupReport()
    if not files_root.is_dir():
        return report
    cutoff = time.time() - min_age_seconds
    emptied: set[str] = set()
    for batch in _batches(_old_files(str(files_root), str(files_root), cutoff, report), batch_size):
        _remove_unreferenced(factory, batch, cutoff, emptied, report)
    _remove_empty_dirs(str(files_root), cutoff, emptied, report)
    if report.files_deleted or report.partial_files_deleted or report.errors:
        log.info("unreferenced files under %s: %d deleted, %d partial, %d bytes freed, %d errors", files_root,
                 report.files_deleted, report.partial_files_deleted, report.bytes_freed, len(report.errors))
    return report


def _old_files(root: str, directory: str, cutoff: float, report: UnreferencedCleanupReport) -> Iterator[_Candidate]:
    """Regular files below `directory` last modified before `cutoff`, depth first, never through a symlink."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_symlink():
                    report.symlinks_skipped += 1
                elif entry.is_dir(follow_symlinks=False):
                    yield from _old_files(root, entry.path, cutoff, report)
                elif _is_old_file(entry, cutoff):
                    yield _Candidate(entry.path, os.path.relpath(entry.path, root))
    except OSError as error:
        report.errors.append(f"{directory}: {error.strerror or error}")


def _is_old_file(entry: os.DirEntry, cutoff: float) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # deleted since the directory was listed
        return False
    return stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch


def _remove_unreferenced(factory: sessionmaker, batch: list[_Candidate], cutoff: float, emptied: set[str],
                         report: UnreferencedCleanupReport) -> None:
    lookups = [c.relative for c in batch if not _is_partial(c)]
    with session_scope(factory) as session:
        referenced = _referenced_paths(session, lookups) if lookups else set()
    for candidate in batch:
        if candidate.relative not in referenced:
            _unlink_if_still_old(candidate, cutoff, emptied, report)


def _is_partial(candidate: _Candidate) -> bool:
    return os.path.basename(candidate.path).startswith(PARTIAL_PREFIX)


def _referenced_paths(session: Session, paths: list[str]) -> set[str]:
    """Those of `paths` a DeliveryFile row names.

    Stored names start with their SHA-256 (filestore.relative_path), so rows are found through the
    indexed sha256 column and then compared by path; any other name is looked up by path itself.
    """
    digests = {match.group() for p in paths if (match := DIGEST_NAME.match(os.path.basename(p)))}
    others = [p for p in paths if not DIGEST_NAME.match(os.path.basename(p))]
    conditions = ([DeliveryFile.sha256.in_(digests)] if digests else []) + \
                 ([DeliveryFile.path.in_(others)] if others else [])
    return set(session.scalars(select(DeliveryFile.path).where(or_(*conditions)))) & set(paths)


def _unlink_if_still_old(candidate: _Candidate, cutoff: float, emptied: set[str],
                         report: UnreferencedCleanupReport) -> None:
    # Looked at again just before deleting: a registration reusing this file refreshes its mtime.
    try:
        info = os.lstat(candidate.path)
        if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
            return
        os.unlink(candidate.path)
    except FileNotFoundError:
        return
    except OSError as error:
        report.errors.append(f"{candidate.path}: {error.strerror or error}")
        return
    if _is_partial(candidate):
        report.partial_files_deleted += 1
    else:
        report.files_deleted += 1
    report.bytes_freed += info.st_size
    emptied.add(os.path.dirname(candidate.path))


def _remove_empty_dirs(root: str, cutoff: float, emptied: set[str], report: UnreferencedCleanupReport) -> None:
    """Remove empty directories this run emptied, or that are older than the cutoff; never the root."""
    for directory, _, _ in os.walk(root, topdown=False):  # os.walk does not follow symlinks
        if directory == root:
            continue
        try:
            if not _is_empty(directory) or (directory not in emptied and os.lstat(directory).st_mtime >= cutoff):
                continue
            os.rmdir(directory)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTEMPTY):  # a file stored meanwhile keeps it
                report.errors.append(f"{directory}: {error.strerror or error}")
            continue
        report.dirs_removed += 1
        emptied.add(os.path.dirname(directory))


def _is_empty(directory: str) -> bool:
    with os.scandir(directory) as entries:
        return next(entries, None) is None
