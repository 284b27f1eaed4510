"""Writing a snapshot file: SnapshotWriter spools and hashes the body, SnapshotParts
joins the pieces into the final file (see snapshot_format for the layout).

Kept apart from the reader: a writer needs the spool and the kernel copy
(copy_file), a reader only the line splitter and the checks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeops.core.errors import Refused
from safeops.core.snapshot_format import BODY_BUFFER, FORMAT_VERSION, MAX_LINE_BYTES, PART_SUFFIX


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
        view = view[os.write(fd, view) :]


# Errors meaning "this pair of files cannot use copy_file_range", not "the copy failed".
_NO_COPY_RANGE = {
    errno.EXDEV,
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EBADF,
}


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
        with (
            open(src, "rb", closefd=False) as reader,
            open(dst, "wb", buffering=0, closefd=False) as writer,
        ):
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
        fd, name = tempfile.mkstemp(prefix=".safeops-", suffix=".body" + PART_SUFFIX, dir=spool_dir)
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
            raise Refused(
                f"Refused: a body document of {len(data)} bytes is longer than "
                f"the {MAX_LINE_BYTES} a snapshot reader accepts; nothing changed."
            )
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
        header: dict[str, Any] = {
            "format": self.fmt,
            "formatVersion": FORMAT_VERSION,
            **summary,
            "bodySha256": self.sha256,
        }
        lines = [b"{\n"]
        lines += [
            f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},\n".encode()
            for key, value in header.items()
        ]
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
