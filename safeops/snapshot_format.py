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

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safeops.errors import BadInput, SnapshotInvalid

FORMAT_VERSION = 1


class NotASnapshot(BadInput):
    """The file is not a safeops snapshot at all (exit 2), as opposed to a damaged one."""


class SnapshotWriter:
    """Spools body documents to disk while hashing them, then writes the file.

    The summary needs totals and the checksum, which are only known once the
    body has streamed, so the body goes to a spool file first: memory stays
    flat whatever the size."""

    def __init__(self, fmt: str, body_key: str) -> None:
        self.fmt = fmt
        self.body_key = body_key
        self._sha = hashlib.sha256()
        # Closed by finish()/discard(), not by a with-block: it outlives __init__.
        self._spool = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+b", suffix=".body", delete=False)
        self.count = 0
        self._final: Path | None = None

    def add(self, document: str | bytes) -> None:
        data = document.encode() if isinstance(document, str) else document
        if b"\n" in data:
            raise ValueError("a body document must be one line of JSON")
        data += b"\n"
        self._sha.update(data)
        self._spool.write(data)
        self.count += 1

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write the complete snapshot to a local temporary file and return its path."""
        self._spool.flush()
        self._spool.seek(0)
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as out:
            out.write(b"{\n")
            header: dict[str, Any] = {"format": self.fmt, "formatVersion": FORMAT_VERSION,
                                      **summary, "bodySha256": self.sha256}
            for key, value in header.items():
                out.write(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)},\n".encode())
            out.write(f"{json.dumps(self.body_key)}: [\n".encode())
            first = True
            for line in self._spool:
                if not first:
                    out.write(b",\n")
                out.write(line[:-1])
                first = False
            out.write(b"\n]\n}\n" if not first else b"]\n}\n")
        self.close()
        self._final = Path(out.name)
        return self._final

    def close(self) -> None:
        self._spool.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._spool.name)

    def discard(self) -> None:
        self.close()
        if self._final is not None:
            self._final.unlink(missing_ok=True)


class SnapshotReader:
    """Parses the summary eagerly and the body lazily, checking as it goes.

    ``documents()`` yields each body document; when the body ends it checks
    structure and checksum and raises :class:`SnapshotInvalid` naming the
    failed check. Callers load documents inside a transaction they roll back
    on that error, so nothing is ever acted on before the checksum holds."""

    def __init__(self, lines: Iterator[bytes], expected_format: str, uri: str) -> None:
        self.uri = uri
        self._file_sha = hashlib.sha256()
        self._lines = self._hashed(lines)
        self.summary: dict[str, Any] = {}
        self.body_key = ""
        self.documents_read = 0
        self.actual_sha256 = ""
        self._read_summary(expected_format)

    def _hashed(self, lines: Iterator[bytes]) -> Iterator[bytes]:
        for line in lines:
            self._file_sha.update(line)
            yield line

    @property
    def file_sha256(self) -> str:
        """sha256 of every byte read so far: of the whole file once documents() has ended.

        The body checksum cannot see an edited summary; this one binds both, so an
        apply can demand the very file a verify accepted (see tasks/guards.py)."""
        return self._file_sha.hexdigest()

    def _fail(self, check: str, detail: str) -> SnapshotInvalid:
        return SnapshotInvalid(f"Snapshot {self.uri} failed the {check} check: {detail}")

    def _read_summary(self, expected_format: str) -> None:
        first = next(self._lines, b"")
        if not first.strip():
            raise self._fail("truncation", "the file is empty")
        if first.strip() != b"{":
            # Not a damaged snapshot but some other file: the caller named the wrong thing.
            raise NotASnapshot(f"{self.uri} is not a safeops snapshot: it does not start with "
                               "a safeops summary ('{' line)")
        for raw in self._lines:
            line = raw.rstrip(b"\r\n")
            if line.endswith(b": ["):
                try:
                    self.body_key = json.loads(line[:-3])
                except ValueError:
                    raise self._fail("format", "unreadable body key") from None
                break
            try:
                item = json.loads(b"{" + line.rstrip(b",") + b"}")
            except ValueError:
                raise self._fail("format", f"unreadable summary line {line[:80]!r}") from None
            self.summary.update(item)
        else:
            raise self._fail("truncation", "the file ends inside its summary")
        if self.summary.get("format") != expected_format:
            raise self._fail("format", f"format is {self.summary.get('format')!r}, "
                                       f"expected {expected_format!r}")
        if self.summary.get("formatVersion") != FORMAT_VERSION:
            raise self._fail("format", f"formatVersion {self.summary.get('formatVersion')!r} "
                                       f"is not supported (expected {FORMAT_VERSION})")
        if not isinstance(self.summary.get("bodySha256"), str):
            raise self._fail("format", "the summary has no bodySha256")

    def documents(self) -> Iterator[bytes]:
        sha = hashlib.sha256()
        closed = False
        for raw in self._lines:
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
        tail = b"".join(self._lines).strip()
        if tail != b"}":
            raise self._fail("format", "unexpected content after the body")
        self.actual_sha256 = sha.hexdigest()
        if self.actual_sha256 != self.summary["bodySha256"]:
            raise self._fail("checksum", f"body sha256 is {self.actual_sha256[:16]}…, "
                                         f"the summary records {self.summary['bodySha256'][:16]}…")
