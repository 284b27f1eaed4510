"""Writing and opening snapshot files, whatever their kind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from safeops.core.db import Fingerprint
from safeops.core.errors import ForeignSnapshot, SnapshotInvalid
from safeops.core.hash_text import tell_apart
from safeops.core.models import Plan, SnapshotRef
from safeops.core.snapshot_reader import SnapshotReader
from safeops.core.snapshot_store import open_chunks, parse_location, publish, spool_dir, writing_to
from safeops.core.snapshot_writer import SnapshotWriter


def utc_stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def source_fields(fp: Fingerprint, read_only: bool = False) -> dict[str, Any]:
    """Where the snapshot came from; ``sourceReadOnly`` only when it is true (a standby):
    such a snapshot could not be entered in its database's register (README)."""
    fields: dict[str, Any] = {
        "sourceSystemIdentifier": fp.system_identifier,
        "sourceDatabase": fp.database,
    }
    if read_only:
        fields["sourceReadOnly"] = True
    return fields


def new_writer(fmt: str, body_key: str, location: str | None) -> SnapshotWriter:
    """A writer that spools where the snapshot will be published, so the file is
    written once, in place (a bad location is refused before any row is read)."""
    folder = spool_dir(parse_location(location))
    with writing_to(folder or "the temporary folder"):  # the spool is its first file
        return SnapshotWriter(fmt, body_key, folder)


def finish_and_publish(
    writer: SnapshotWriter,
    *,
    name_prefix: str,
    created_at: datetime,
    summary: dict[str, Any],
    location: str | None,
) -> str:
    """Write the file, put it in the store, return its URI (the flow announces it)."""
    where = parse_location(location)
    parts = writer.finish(
        {"createdAt": created_at.isoformat(timespec="seconds").replace("+00:00", "Z"), **summary}
    )
    try:
        uri = publish(parts, where, f"{name_prefix}-{utc_stamp(created_at)}.json")
    finally:
        writer.discard()
    return uri


@contextmanager
def open_snapshot(uri: str, fmt: str) -> Iterator[SnapshotReader]:
    with open_chunks(uri) as chunks:
        yield SnapshotReader.from_chunks(chunks, fmt, uri)


def written_ref(
    writer: SnapshotWriter,
    uri: str,
    totals: dict[str, int],
    source: Fingerprint,
    plan: Plan | None = None,
) -> SnapshotRef:
    """What a snapshot task hands on about the file it wrote: the writer's digests of
    its body and summary (which read_back holds the stored file to) and the plan its
    view derived from the same renderings."""
    return SnapshotRef(
        uri=uri,
        totals=totals,
        body_sha256=writer.sha256,
        summary_sha256=writer.summary_sha256,
        source=str(source),
        plan=plan,
    )


def read_back(uri: str, fmt: str, written: SnapshotRef) -> SnapshotReader:
    """The stored file read back whole: it must be the file its writer wrote.

    What a snapshot task's consistent view rendered is what it hashed as it wrote
    (``written.body_sha256``): a file that comes back from the store with that body
    (the reader checks it against the summary's checksum, then it is compared with
    the writer's) holds exactly those rows, so whatever the view derived from them
    (a plan, totals) describes the file without rendering the rows again. Its
    summary lines must hash to the writer's too (``written.summary_sha256``, what
    the register records): a summary edited after the write (its plan digest
    version, its site) would otherwise pass with an intact body and leave an undo
    point no restore accepts. The caller then reports the totals it expects."""
    with open_snapshot(uri, fmt) as reader:
        for _ in reader.documents():  # raises SnapshotInvalid (checksum, truncation)
            pass
    if reader.actual_sha256 != written.body_sha256:
        stored, wrote = tell_apart(reader.actual_sha256, written.body_sha256)
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the checksum check: its body hashes to {stored}, "
            f"the snapshot wrote {wrote}"
        )
    if reader.summary_sha256 != written.summary_sha256:
        stored, wrote = tell_apart(reader.summary_sha256, written.summary_sha256)
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the summary check: its summary hashes to {stored}, "
            f"the snapshot wrote {wrote}"
        )
    return reader


def summary_of(uri: str, fmt: str) -> dict[str, Any]:
    """The summary at the head of a snapshot (read before the body, so a flow can learn
    which site a snapshot is about before it takes that site's slot)."""
    with open_snapshot(uri, fmt) as reader:
        return dict(reader.summary)


def check_source(reader: SnapshotReader, live: Fingerprint, force: bool = False) -> str | None:
    """None when the snapshot came from this database, else why not."""
    recorded = Fingerprint(
        str(reader.summary.get("sourceSystemIdentifier")), str(reader.summary.get("sourceDatabase"))
    )
    if recorded == live:
        return None
    problem = f"snapshot was taken from database {recorded} but the target is {live}"
    if force:
        return None
    return problem


def refuse_foreign(reader: SnapshotReader, live: Fingerprint, force: bool) -> None:
    problem = check_source(reader, live, force)
    if problem:
        raise ForeignSnapshot(f"Refused: {problem}; pass force to restore it anyway.")


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
