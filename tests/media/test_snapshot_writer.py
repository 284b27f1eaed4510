"""The snapshot writer and the folder/S3 publish: the file is written once, in place.

What these pin down: the published bytes follow the documented layout exactly
(old files and new ones read alike), nothing but hidden ``.part`` files is ever
left behind, and a published name is never reused or overwritten.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from safeops.core.snapshot_reader import SnapshotReader
from safeops.core.snapshot_store import (
    SNAPSHOT_NAME,
    file_sha256,
    list_snapshots,
    open_chunks,
    parse_location,
    publish,
)
from safeops.core.snapshot_writer import SnapshotWriter
from tasks.common.snapshots import finish_and_publish, new_writer

FMT = "safeops/test-snapshot"
BASE = "test-snapshot-20260102T030405Z.json"
CREATED = "2026-01-02T03:04:05Z"
DOCS = [
    b'{"id":"p1","images":["a.jpg"]}',
    b'{"id":"p2","images":[]}',
    '{"id":"p3","title":"Caf\u00e9"}'.encode(),
]


def expected_file(docs: list[bytes], summary: dict[str, Any]) -> bytes:
    """The layout of the module docstring, spelled out by hand."""
    body_sha = hashlib.sha256(b"".join(doc + b"\n" for doc in docs)).hexdigest()
    header = {"format": FMT, "formatVersion": 1, **summary, "bodySha256": body_sha}
    lines = [b"{\n"]
    lines += [
        f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)},\n".encode() for k, v in header.items()
    ]
    lines.append(b'"products": [\n')
    lines.append(b",\n".join(docs) + b"\n" if docs else b"")
    lines.append(b"]\n}\n")
    return b"".join(lines)


def write(
    folder: Path, docs: list[bytes], summary: dict[str, Any] | None = None, base: str = BASE
) -> str:
    writer = new_writer(FMT, "products", str(folder))
    for doc in docs:
        writer.add(doc)
    try:
        return publish(
            writer.finish(summary or {"createdAt": CREATED}), parse_location(str(folder)), base
        )
    finally:
        writer.discard()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("docs", [[], DOCS], ids=["empty-body", "three-documents"])
def test_published_file_has_the_documented_layout(tmp_path: Path, docs: list[bytes]) -> None:
    summary = {"createdAt": CREATED, "totalProducts": len(docs), "nested": {"b": 1, "a": 2}}
    uri = write(tmp_path, docs, summary)

    assert Path(uri) == tmp_path / BASE
    assert Path(uri).read_bytes() == expected_file(docs, summary)
    with open_chunks(uri) as chunks:
        reader = SnapshotReader.from_chunks(chunks, FMT, uri)
        assert list(reader.documents()) == docs
    assert reader.summary["totalProducts"] == len(docs)
    # Read line by line or chunk by chunk, the file hashes the same, to its last byte.
    assert reader.file_sha256 == hashlib.sha256(Path(uri).read_bytes()).hexdigest()
    lines_reader = SnapshotReader(iter(Path(uri).read_bytes().splitlines(keepends=True)), FMT, uri)
    assert list(lines_reader.documents()) == docs
    assert lines_reader.file_sha256 == reader.file_sha256 == file_sha256(uri)
    assert hidden(tmp_path) == []


def test_str_and_bytes_documents_give_the_same_file(tmp_path: Path) -> None:
    as_bytes = Path(write(tmp_path / "b", DOCS)).read_bytes()
    writer = SnapshotWriter(FMT, "products", tmp_path)
    for doc in DOCS:
        writer.add(doc.decode())
    assert writer.sha256 == hashlib.sha256(b"".join(d + b"\n" for d in DOCS)).hexdigest()
    uri = publish(writer.finish({"createdAt": CREATED}), parse_location(str(tmp_path / "s")), BASE)
    writer.discard()
    assert Path(uri).read_bytes() == as_bytes


def test_a_document_with_a_newline_leaves_nothing_behind(tmp_path: Path) -> None:
    """The tasks' pattern: any error while streaming ⇒ discard()."""
    folder = tmp_path / "exports"
    writer = new_writer(FMT, "products", str(folder))
    assert len(hidden(folder)) == 1  # the spool sits in the destination folder
    try:
        with pytest.raises(ValueError, match="one line"):
            for doc in [*DOCS, b'{"id":\n"p4"}']:
                writer.add(doc)
    finally:
        writer.discard()
    assert list(folder.iterdir()) == []


def test_a_failure_while_publishing_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = new_writer(FMT, "products", str(tmp_path))
    for doc in DOCS:
        writer.add(doc)

    def disk_full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        finish_and_publish(
            writer,
            name_prefix="test-snapshot",
            created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            summary={},
            location=str(tmp_path),
        )
    writer.discard()  # what the tasks do; already done, must not fail
    assert list(tmp_path.iterdir()) == []


def test_same_second_snapshots_get_distinct_names_and_never_overwrite(tmp_path: Path) -> None:
    squatter = tmp_path / BASE.replace(".json", "-1.json")
    squatter.write_bytes(b"someone else's file\n")
    first = write(tmp_path, DOCS[:1])
    second = write(tmp_path, DOCS[1:])
    third = write(tmp_path, [])

    assert [Path(u).name for u in (first, second, third)] == [
        BASE,
        BASE.replace(".json", "-2.json"),
        BASE.replace(".json", "-3.json"),
    ]
    assert Path(first).read_bytes() == expected_file(DOCS[:1], {"createdAt": CREATED})
    assert Path(second).read_bytes() == expected_file(DOCS[1:], {"createdAt": CREATED})
    assert squatter.read_bytes() == b"someone else's file\n"
    assert hidden(tmp_path) == []


def test_a_folder_without_hard_links_gets_copies_that_never_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network and FUSE mounts refuse link(2): the publish reserves each name with
    O_EXCL and copies instead, still skipping taken names and leaving no .part file."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    squatter = tmp_path / BASE
    squatter.write_bytes(b"someone else's file\n")
    uri = write(tmp_path, DOCS)
    assert Path(uri).name == BASE.replace(".json", "-1.json")
    assert Path(uri).read_bytes() == expected_file(DOCS, {"createdAt": CREATED})
    assert squatter.read_bytes() == b"someone else's file\n"
    assert hidden(tmp_path) == []


def test_concurrent_publishes_in_one_second_each_keep_their_own_file(tmp_path: Path) -> None:
    uris: dict[int, str] = {}
    start = threading.Barrier(6)

    def run(n: int) -> None:
        writer = SnapshotWriter(FMT, "products", tmp_path)
        writer.add(b'{"writer":%d}' % n)
        parts = writer.finish({"createdAt": CREATED})
        start.wait()
        uris[n] = publish(parts, parse_location(str(tmp_path)), BASE)
        writer.discard()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(set(uris.values())) == 6
    for n, uri in uris.items():
        assert Path(uri).read_bytes() == expected_file(
            [b'{"writer":%d}' % n], {"createdAt": CREATED}
        )
    assert hidden(tmp_path) == []


def test_part_files_are_not_snapshots(tmp_path: Path) -> None:
    """Whatever a crash leaves behind is invisible to listings and retention."""
    uri = write(tmp_path, DOCS)
    leftover = tmp_path / f".{BASE}.0123456789ab.part"
    leftover.write_bytes(b"{\n")
    assert not SNAPSHOT_NAME.match(leftover.name)
    assert list_snapshots(parse_location(str(tmp_path)), "test-snapshot") == [uri]


@pytest.mark.parametrize("failure", ["refused", "stops-short", "missing"])
def test_join_falls_back_to_plain_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Another file system (EXDEV), a copy that stops part way, or no
    copy_file_range at all: the file comes out the same."""
    docs = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * 500) for n in range(200)]
    real = getattr(os, "copy_file_range", None)
    calls: list[int] = []

    def refused(*_: Any) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def stops_short(src: int, dst: int, count: int) -> int:
        calls.append(count)
        assert real is not None
        return real(src, dst, min(count, 4096)) if len(calls) == 1 else 0

    if failure == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:
        monkeypatch.setattr(
            os, "copy_file_range", refused if failure == "refused" else stops_short, raising=False
        )
    uri = write(tmp_path, docs)
    assert Path(uri).read_bytes() == expected_file(docs, {"createdAt": CREATED})
    assert len(calls) == (2 if failure == "stops-short" else 0)


def test_s3_publish_never_overwrites_and_leaves_no_temp_file(s3_bucket: str) -> None:
    import boto3

    from safeops.core.settings import get_settings

    location = parse_location(f"s3://{s3_bucket}/snapshots")
    uris = []
    for docs in (DOCS, []):
        writer = new_writer(FMT, "products", f"s3://{s3_bucket}/snapshots")
        for doc in docs:
            writer.add(doc)
        uris.append(publish(writer.finish({"createdAt": CREATED}), location, BASE))
        writer.discard()

    assert uris == [
        f"s3://{s3_bucket}/snapshots/{BASE}",
        f"s3://{s3_bucket}/snapshots/{BASE.replace('.json', '-1.json')}",
    ]
    client = boto3.client("s3", endpoint_url=get_settings().s3_endpoint_url)
    for uri, docs in zip(uris, (DOCS, []), strict=True):
        key = uri.removeprefix(f"s3://{s3_bucket}/")
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert body == expected_file(docs, {"createdAt": CREATED})
    assert list(Path(tempfile.gettempdir()).glob(f".{BASE}.*.part")) == []
