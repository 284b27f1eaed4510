"""Reading a snapshot file: SnapshotReader parses the summary eagerly and the body
lazily, checking format, structure and checksum as it goes (see snapshot_format
for the layout).

Kept apart from the writer: restores and verifies only read, and the reader's
checks are the ones a damaged or foreign file must get past.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from safeops.core.errors import LineTooLong, NotASnapshot, SnapshotInvalid
from safeops.core.hash_text import tell_apart
from safeops.core.snapshot_format import (
    FORMAT_VERSION,
    MAX_LINE_BYTES,
    MAX_SUMMARY_LINE_BYTES,
    loads_bounded,
    split_lines,
)
from safeops.core.snapshot_summary import summary_problem


class SnapshotReader:
    """Parses the summary eagerly and the body lazily, checking as it goes.

    ``documents()`` yields each body document; when the body ends it checks
    structure and checksum and raises :class:`SnapshotInvalid` naming the
    failed check. Callers load documents inside a transaction they roll back
    on that error, so nothing is ever acted on before the checksum holds."""

    def __init__(
        self, lines: Iterator[bytes], expected_format: str, uri: str, file_sha: Any = None
    ) -> None:
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
    def from_chunks(cls, chunks: Iterator[bytes], expected_format: str, uri: str) -> SnapshotReader:
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
            raise NotASnapshot(
                f"{self.uri} is not a safeops snapshot: it does not start with "
                "a safeops summary ('{' line)"
            )
        try:
            self._read_summary_lines()
        except LineTooLong as exc:
            raise self._fail("format", f"{exc}, which no summary line is") from None
        if self.summary.get("format") != expected_format:
            raise self._fail(
                "format", f"format is {self.summary.get('format')!r}, expected {expected_format!r}"
            )
        if self.summary.get("formatVersion") != FORMAT_VERSION:
            raise self._fail(
                "format",
                f"formatVersion {self.summary.get('formatVersion')!r} "
                f"is not supported (expected {FORMAT_VERSION})",
            )
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
                    raise self._fail(
                        "truncation",
                        f"the file ends mid-document after {self.documents_read} documents",
                    )
                sha.update(doc + b"\n")
                self.documents_read += 1
                yield doc
            if not closed:
                raise self._fail(
                    "truncation",
                    f"the body stops after {self.documents_read} documents without its closing ']'",
                )
            tail = b""
            for raw in lines:  # only "}" may follow, so never hold more than a few bytes
                tail += raw.strip()
                if len(tail) > 1:
                    break
        except LineTooLong as exc:
            raise self._fail(
                "format",
                f"{exc} after {self.documents_read} documents (a "
                f"document may hold at most {MAX_LINE_BYTES} bytes)",
            ) from None
        if tail != b"}":
            raise self._fail("format", "unexpected content after the body")
        self.actual_sha256 = sha.hexdigest()
        if self.actual_sha256 != self.summary["bodySha256"]:
            actual, recorded = tell_apart(self.actual_sha256, self.summary["bodySha256"])
            raise self._fail("checksum", f"body sha256 is {actual}, the summary records {recorded}")
