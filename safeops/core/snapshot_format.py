"""The snapshot file layout shared by every kind of snapshot.

A snapshot is one JSON document, laid out so people can read it with
``head -20`` and ``grep``: a summary first, one key per line, then the body as
one compact JSON document per line::

    {
    "format": "safeops/medusa-media-snapshot",
    "formatVersion": 1,
    "totalImages": 200,
    ...
    "bodySha256": "…",
    "products": [
    {...},
    {...}
    ]
    }

``bodySha256`` is the sha256 of the body documents, each followed by ``\\n``
(separating commas excluded), so a reader can check it while streaming.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeops.core.errors import NotASnapshot, Refused, SnapshotInvalid
from safeops.core.hash_text import tell_apart
from safeops.core.snapshot_summary import summary_problem

FORMAT_VERSION = 1


BODY_BUFFER = 1 << 20  # one write(2) per MiB of body instead of one per 8 KiB
PART_SUFFIX = ".part"  # work-in-progress files: hidden, never a snapshot name


@dataclass(frozen=True)
class SnapshotParts:
    """A finished snapshot as its three pieces, not yet joined into one file.

    The body already sits on disk exactly as it appears in the final file, so
    whoever stores the snapshot copies it once, where it will live, instead of
    rewriting it line by line."""

    header: bytes
    body: Path
    trailer: bytes

    def write_to(self, fd: int) -> None:
        """Write the complete snapshot at ``fd``'s position: header, body, trailer."""
        _write_all(fd, self.header)
        with open(self.body, "rb") as body:
            copy_file(body.fileno(), fd, os.fstat(body.fileno()).st_size)
        _write_all(fd, self.trailer)


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (signals, some file systems): loop.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# Errors meaning "this pair of files cannot use copy_file_range", not "the copy failed".
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP,
                  errno.EBADF}


def copy_file(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` to ``dst`` at their current positions.

    copy_file_range keeps the bytes in the kernel (a reflink on file systems
    that share blocks); where it is missing, refused (another file system,
    an old kernel) or stops short, plain reads and writes finish the job
    from wherever it got to."""
    left = size
    if hasattr(os, "copy_file_range"):
        while left > 0:
            try:
                done = os.copy_file_range(src, dst, left)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                break
            if done == 0:
                break
            left -= done
    if left > 0:
        with open(src, "rb", closefd=False) as reader, \
                open(dst, "wb", buffering=0, closefd=False) as writer:
            shutil.copyfileobj(reader, writer, BODY_BUFFER)



class SnapshotWriter:
    """Spools body documents to disk while hashing them, then hands over the parts.

    The summary needs totals and the checksum, which are only known once the
    body has streamed, so the body goes to a spool file first: memory stays
    flat whatever the size. The spool holds the body exactly as the final file
    will (``,\\n`` between documents), so finishing never re-reads it; put it
    in the folder the snapshot goes to (``spool_dir``) and joining the parts
    is a copy inside one file system."""

    def __init__(self, fmt: str, body_key: str, spool_dir: str | Path | None = None) -> None:
        self.fmt = fmt
        self.body_key = body_key
        self._sha = hashlib.sha256()
        fd, name = tempfile.mkstemp(prefix=".safeops-", suffix=".body" + PART_SUFFIX,
                                    dir=spool_dir)
        self._spool_path = Path(name)
        # Closed by finish()/discard(), not by a with-block: it outlives __init__.
        self._spool = open(fd, "wb", buffering=BODY_BUFFER)  # noqa: SIM115
        # Documents are written and hashed a batch at a time: one join, one write and
        # one hash call (which releases the GIL) per MiB instead of three per row,
        # a third of the writer's CPU at a million images on a CPU-bound host.
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._flushed = 0
        self.count = 0
        self.summary_sha256 = ""  # of the header (summary lines), once finish() wrote it

    def add(self, document: str | bytes) -> None:
        data = document.encode() if isinstance(document, str) else document
        if b"\n" in data:
            raise ValueError("a body document must be one line of JSON")
        if len(data) > MAX_LINE_BYTES:
            # A file no reader would accept must not become anyone's undo point.
            raise Refused(f"Refused: a body document of {len(data)} bytes is longer than "
                          f"the {MAX_LINE_BYTES} a snapshot reader accepts; nothing changed.")
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.count += 1
        if self._batch_bytes >= BODY_BUFFER:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        if self._flushed:
            self._spool.write(b",\n")
        self._spool.write(b",\n".join(self._batch))
        self._sha.update(b"\n".join(self._batch) + b"\n")
        self._flushed += len(self._batch)
        self._batch, self._batch_bytes = [], 0

    @property
    def sha256(self) -> str:
        self._flush_batch()
        return self._sha.hexdigest()

    def finish(self, summary: dict[str, Any]) -> SnapshotParts:
        """Close the body and return the parts the snapshot file is made of.

        The spool stays on disk until discard(): the caller joins the parts first."""
        self._flush_batch()
        self._spool.close()
        header: dict[str, Any] = {"format": self.fmt, "formatVersion": FORMAT_VERSION,
                                  **summary, "bodySha256": self.sha256}
        lines = [b"{\n"]
        lines += [f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},\n".encode()
                  for key, value in header.items()]
        lines.append(f"{json.dumps(self.body_key)}: [\n".encode())
        trailer = b"\n]\n}\n" if self.count else b"]\n}\n"
        header_bytes = b"".join(lines)
        self.summary_sha256 = hashlib.sha256(header_bytes).hexdigest()
        return SnapshotParts(header_bytes, self._spool_path, trailer)

    def discard(self) -> None:
        """Close and delete the spool; safe to call more than once."""
        self._batch, self._batch_bytes = [], 0
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)


# The longest line a reader accepts (newline excluded). A reader holds one line at
# a time, so this bounds its memory whatever the file: a file without newlines is
# refused after this many bytes instead of being read whole. A body document is one
# product or row with everything under it; 16 MiB is tens of thousands of images
# for a single product, and the writer refuses to write a longer one.
MAX_LINE_BYTES = 16 << 20
# Summary lines are one short field each; parsing is what costs memory (a line of
# ``[0,0,…]`` becomes a list eight times its size), so they get a far lower bound.
MAX_SUMMARY_LINE_BYTES = 64 << 10


class LineTooLong(ValueError):
    """A line ran past the reader's bound; ``line_number`` counts from 1."""

    def __init__(self, line_number: int, limit: int) -> None:
        super().__init__(f"line {line_number} is longer than {limit} bytes")
        self.line_number = line_number
        self.limit = limit


def split_lines(chunks: Iterator[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Lines (each with its newline; the last maybe without) of a stream of chunks.

    A line that spans chunks is held as a list of its pieces and joined once, so
    the work stays linear in its length (joining as it grew made a 100 MB line
    cost 21 s), and it raises LineTooLong once a line passes ``max_line`` bytes."""
    held: list[bytes] = []
    held_len = 0
    number = 0
    for chunk in chunks:
        if not chunk:
            continue
        start = 0
        end = chunk.find(b"\n")
        if end < 0:
            held.append(chunk)
            held_len += len(chunk)
            if held_len > max_line:
                raise LineTooLong(number + 1, max_line)
            continue
        if held:
            if held_len + end > max_line:
                raise LineTooLong(number + 1, max_line)
            held.append(chunk[:end + 1])
            number += 1
            yield b"".join(held)
            held, held_len, start = [], 0, end + 1
            end = chunk.find(b"\n", start)
        check = len(chunk) > max_line  # only a chunk longer than the bound can hold one
        while end >= 0:
            number += 1
            if check and end - start > max_line:
                raise LineTooLong(number, max_line)
            yield chunk[start:end + 1]
            start = end + 1
            end = chunk.find(b"\n", start)
        if start < len(chunk):
            held, held_len = [chunk[start:]], len(chunk) - start
            if held_len > max_line:
                raise LineTooLong(number + 1, max_line)
    if held:
        yield b"".join(held)


def loads_bounded(line: bytes) -> Any:
    """json.loads that fails as ValueError on nesting too deep for the parser (a
    "JSON bomb" raises RecursionError, which is not a ValueError)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class SnapshotReader:
    """Parses the summary eagerly and the body lazily, checking as it goes.

    ``documents()`` yields each body document; when the body ends it checks
    structure and checksum and raises :class:`SnapshotInvalid` naming the
    failed check. Callers load documents inside a transaction they roll back
    on that error, so nothing is ever acted on before the checksum holds."""

    def __init__(self, lines: Iterator[bytes], expected_format: str, uri: str,
                 file_sha: Any = None) -> None:
        """``file_sha``: a sha256 object the caller already feeds every byte of the
        file (see from_chunks); otherwise the lines are hashed as they are read."""
        self.uri = uri
        self._file_sha = file_sha if file_sha is not None else hashlib.sha256()
        self._lines = lines if file_sha is not None else self._hashed(lines)
        self.summary: dict[str, Any] = {}
        self.body_key = ""
        self.documents_read = 0
        self.actual_sha256 = ""
        # The summary's lines, as read: with the body checksum it proves, they identify the
        # whole file, which is how the snapshot register (safeops_snapshots) knows it.
        self._summary_sha = hashlib.sha256()
        self._read_summary(expected_format)

    @classmethod
    def from_chunks(cls, chunks: Iterator[bytes], expected_format: str,
                    uri: str) -> SnapshotReader:
        """A reader over raw chunks, hashing the file a chunk at a time: one C call
        per MiB instead of a Python step per line (a tenth of a verify's time)."""
        file_sha = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                file_sha.update(chunk)
                yield chunk

        return cls(split_lines(hashed()), expected_format, uri, file_sha=file_sha)

    def _hashed(self, lines: Iterator[bytes]) -> Iterator[bytes]:
        for number, line in enumerate(lines, 1):
            if len(line) > MAX_LINE_BYTES + 1:  # the caller already holds it: the rule only
                raise LineTooLong(number, MAX_LINE_BYTES)
            self._file_sha.update(line)
            yield line

    @property
    def summary_sha256(self) -> str:
        """sha256 of the summary lines (the file's head, up to the body's opening line)."""
        return self._summary_sha.hexdigest()

    @property
    def file_sha256(self) -> str:
        """sha256 of every byte read so far: of the whole file once documents() has ended.

        The body checksum cannot see an edited summary; this one binds both, so an
        apply can demand the very file a verify accepted (see tasks/guards.py)."""
        return self._file_sha.hexdigest()

    def _fail(self, check: str, detail: str) -> SnapshotInvalid:
        return SnapshotInvalid(f"Snapshot {self.uri} failed the {check} check: {detail}")

    def _read_summary(self, expected_format: str) -> None:
        try:
            first = next(self._lines, b"")
        except LineTooLong:
            first = b"?"  # a first line that long is no "{": not a snapshot
        if not first.strip():
            raise self._fail("truncation", "the file is empty")
        self._summary_sha.update(first)
        if first.strip() != b"{":
            # Not a damaged snapshot but some other file: the caller named the wrong thing.
            raise NotASnapshot(f"{self.uri} is not a safeops snapshot: it does not start with "
                               "a safeops summary ('{' line)")
        try:
            self._read_summary_lines()
        except LineTooLong as exc:
            raise self._fail("format", f"{exc}, which no summary line is") from None
        if self.summary.get("format") != expected_format:
            raise self._fail("format", f"format is {self.summary.get('format')!r}, "
                                       f"expected {expected_format!r}")
        if self.summary.get("formatVersion") != FORMAT_VERSION:
            raise self._fail("format", f"formatVersion {self.summary.get('formatVersion')!r} "
                                       f"is not supported (expected {FORMAT_VERSION})")
        problem = summary_problem(self.summary)
        if problem:
            raise self._fail("format", problem)

    def _read_summary_lines(self) -> None:
        for number, raw in enumerate(self._lines, 2):
            self._summary_sha.update(raw)
            line = raw.rstrip(b"\r\n")
            if len(line) > MAX_SUMMARY_LINE_BYTES:
                raise LineTooLong(number, MAX_SUMMARY_LINE_BYTES)
            if line.endswith(b": ["):
                try:
                    body_key = loads_bounded(line[:-3])
                except ValueError:
                    raise self._fail("format", "unreadable body key") from None
                if not isinstance(body_key, str):
                    raise self._fail("format", f"the body key is {body_key!r}, not text")
                self.body_key = body_key
                return
            try:
                item = loads_bounded(b"{" + line.rstrip(b",") + b"}")
            except ValueError:
                raise self._fail("format", f"unreadable summary line {line[:80]!r}") from None
            self.summary.update(item)
        raise self._fail("truncation", "the file ends inside its summary")

    def documents(self) -> Iterator[bytes]:
        sha = hashlib.sha256()
        closed = False
        lines = self._lines
        try:
            for raw in lines:
                line = raw.rstrip(b"\r\n")
                if line == b"]":
                    closed = True
                    break
                doc = line[:-1] if line.endswith(b",") else line
                if not raw.endswith(b"\n"):
                    raise self._fail("truncation", f"the file ends mid-document after "
                                                   f"{self.documents_read} documents")
                sha.update(doc + b"\n")
                self.documents_read += 1
                yield doc
            if not closed:
                raise self._fail("truncation", f"the body stops after {self.documents_read} "
                                               "documents without its closing ']'")
            tail = b""
            for raw in lines:  # only "}" may follow, so never hold more than a few bytes
                tail += raw.strip()
                if len(tail) > 1:
                    break
        except LineTooLong as exc:
            raise self._fail("format", f"{exc} after {self.documents_read} documents (a "
                                       f"document may hold at most {MAX_LINE_BYTES} bytes)"
                             ) from None
        if tail != b"}":
            raise self._fail("format", "unexpected content after the body")
        self.actual_sha256 = sha.hexdigest()
        if self.actual_sha256 != self.summary["bodySha256"]:
            actual, recorded = tell_apart(self.actual_sha256, self.summary["bodySha256"])
            raise self._fail("checksum", f"body sha256 is {actual}, the summary records "
                                         f"{recorded}")
