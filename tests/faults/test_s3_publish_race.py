"""Two publishes racing for one S3 name: both land, under distinct names, none overwritten.

The S3 publish used to check a name (HEAD) and then upload, so two runs that both
saw the name free both wrote it and the later one silently replaced the earlier
snapshot. The store now writes with ``IfNoneMatch="*"``: S3 refuses the loser
with 412 and it moves on to the next free name. These tests force the worst
interleaving on moto's real HTTP server: both publishers have looked at the name
(and found it free) before either writes; the first write finishes, then the
second is sent for the same name.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from safeops.core import snapshot_store
from safeops.core.snapshot_store import parse_location, publish
from safeops.core.snapshot_writer import SnapshotParts, SnapshotWriter

FMT = "safeops/test-snapshot"
BASE = "race-snapshot-20260102T030405Z.json"


def finished(tmp_path: Path, writer_no: int, pad: int) -> tuple[SnapshotWriter, SnapshotParts]:
    writer = SnapshotWriter(FMT, "products", tmp_path)
    filler = b"x" * 1000
    for n in range(max(1, pad // 1000)):
        writer.add(b'{"writer":%d,"n":%d,"pad":"%s"}' % (writer_no, n, filler))
    return writer, writer.finish({"createdAt": "2026-01-02T03:04:05Z"})


def race(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_bucket: str, write_op: str, pad: int
) -> tuple[dict[str, str], dict[str, bytes], Counter[str]]:
    """Publish twice at once, the writes ordered as described in the module docstring.

    ``write_op`` is the request that makes the object visible (PutObject, or
    CompleteMultipartUpload); each publisher's first one waits until both are
    ready to write, and the second publisher's until the first one's returned."""
    real_client = snapshot_store.s3_client
    both_ready = threading.Barrier(2, timeout=30)
    first_written = threading.Event()
    refused: Counter[str] = Counter()

    def client_for_thread(*args: Any, **kwargs: Any) -> Any:
        client = real_client(*args, **kwargs)
        who = threading.current_thread().name
        calls = Counter[str]()

        def before(**_: Any) -> None:
            calls["write"] += 1
            if calls["write"] == 1:
                both_ready.wait()
                if who == "second":
                    assert first_written.wait(30)

        def after(http_response: Any, **_: Any) -> None:
            if http_response.status_code == 412:
                refused[who] += 1
            if who == "first" and calls["write"] == 1:
                first_written.set()

        client.meta.events.register(f"before-call.s3.{write_op}", before)
        client.meta.events.register(f"after-call.s3.{write_op}", after)
        return client

    monkeypatch.setattr(snapshot_store, "s3_client", client_for_thread)
    location = parse_location(f"s3://{s3_bucket}/snapshots")
    uris: dict[str, str] = {}
    expected: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def run(who: str, writer_no: int) -> None:
        writer, parts = finished(tmp_path, writer_no, pad)
        expected[who] = parts.header + parts.body.read_bytes() + parts.trailer
        try:
            uris[who] = publish(parts, location, BASE)
        except BaseException as exc:
            errors.append(exc)
            first_written.set()
        finally:
            writer.discard()

    threads = [
        threading.Thread(target=run, args=(who, n), name=who)
        for n, who in enumerate(("first", "second"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return uris, expected, refused


def stored(bucket: str, uri: str) -> bytes:
    import boto3

    from safeops.core.settings import get_settings

    client = boto3.client("s3", endpoint_url=get_settings().s3_endpoint_url)
    key = uri.removeprefix(f"s3://{bucket}/")
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def test_two_publishes_racing_for_one_name_both_land_and_neither_is_overwritten(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_bucket: str
) -> None:
    uris, expected, refused = race(monkeypatch, tmp_path, s3_bucket, "PutObject", pad=50_000)

    prefix = f"s3://{s3_bucket}/snapshots/"
    assert uris == {"first": prefix + BASE, "second": prefix + BASE.replace(".json", "-1.json")}
    assert refused == {"second": 1}  # the second write was refused by S3, not skipped by HEAD
    assert expected["first"] != expected["second"]
    for who, uri in uris.items():
        assert stored(s3_bucket, uri) == expected[who], who


def test_racing_multipart_publishes_complete_create_only_and_leave_no_upload(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_bucket: str
) -> None:
    """Above one part's size the body goes as a multipart upload whose completion is
    create-only; the refused upload is aborted, so no invisible parts stay behind."""
    import boto3

    from safeops.core.settings import get_settings

    monkeypatch.setattr(snapshot_store, "S3_PART", 5 << 20)  # S3's smallest part
    uris, expected, refused = race(
        monkeypatch, tmp_path, s3_bucket, "CompleteMultipartUpload", pad=11 << 20
    )

    assert len(uris) == 2 and len(set(uris.values())) == 2
    assert refused == {"second": 1}
    for who, uri in uris.items():
        assert len(expected[who]) > 2 * (5 << 20)  # three parts, the last one short
        assert stored(s3_bucket, uri) == expected[who], who
    client = boto3.client("s3", endpoint_url=get_settings().s3_endpoint_url)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_a_large_snapshot_is_not_joined_on_local_disk_before_upload(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_bucket: str
) -> None:
    """The parts are streamed as they are: no ``.part`` copy of the joined file."""
    import tempfile

    writer, parts = finished(tmp_path, 0, 200_000)
    try:
        uri = publish(parts, parse_location(f"s3://{s3_bucket}/snapshots"), BASE)
        assert stored(s3_bucket, uri) == parts.header + parts.body.read_bytes() + parts.trailer
    finally:
        writer.discard()
    assert list(Path(tempfile.gettempdir()).glob(f".{BASE}.*.part")) == []
