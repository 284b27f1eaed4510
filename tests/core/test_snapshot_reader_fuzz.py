"""The snapshot reader against generated and mutated files (hypothesis).

Whatever bytes it is handed, in whatever chunks, the reader either yields the
documents of a sound file or refuses with one of its named refusals
(SnapshotInvalid: exit 3; NotASnapshot: exit 2), and its memory is bounded by
the longest line it accepts, never by the size of the file. A 100 MB file
without a newline used to be read whole (402 MB RSS, 21 s) before its refusal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeops.core.errors import NotASnapshot, SnapshotInvalid
from safeops.core.snapshot_format import MAX_LINE_BYTES, split_lines
from safeops.core.snapshot_reader import SnapshotReader
from safeops.core.snapshot_writer import SnapshotWriter

FMT = "safeops/medusa-media-snapshot"
REFUSALS = (SnapshotInvalid, NotASnapshot)
ROOT = Path(__file__).resolve().parents[2]


def snapshot_bytes(docs: list[bytes], summary: dict[str, Any] | None = None) -> bytes:
    """A sound snapshot file, written by the real writer."""
    writer = SnapshotWriter(FMT, "products")
    try:
        for doc in docs:
            writer.add(doc)
        parts = writer.finish(summary or {"totalProducts": len(docs), "createdAt": "now"})
        return parts.header + parts.body.read_bytes() + parts.trailer
    finally:
        writer.discard()


def chunked(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` in pieces cut at the given offsets (any order, repeats allowed)."""
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[last:cut]
        last = cut
    yield data[last:]


def read_all(chunks: Iterator[bytes]) -> list[bytes]:
    reader = SnapshotReader.from_chunks(chunks, FMT, "fuzz.json")
    return list(reader.documents())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
documents = st.lists(json_values.map(lambda v: json.dumps(v).encode()), max_size=4)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A sound file with a few edits: bytes replaced, inserted, deleted, a summary field
    of another type, deep nesting, or the file cut short."""
    data = bytearray(snapshot_bytes(draw(documents)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "field", "bomb", "cut"]))
        if kind == "replace":
            blob = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(blob)] = blob
        elif kind == "insert":
            data[at:at] = draw(
                st.binary(max_size=16)
                | st.sampled_from([b"\n", b",\n", b"]\n", b"}\n", b": [\n", b"\r\n", b"\xff\xfe"])
            )
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "field":
            key = draw(
                st.sampled_from(
                    [
                        "totalProducts",
                        "bodySha256",
                        "formatVersion",
                        "format",
                        "createdAt",
                        "note",
                        "totalImages",
                    ]
                )
            )
            line = f"{json.dumps(key)}: {json.dumps(draw(json_values))},\n".encode()
            data[2:2] = line  # right after "{\n": later keys still win, as in the reader
        elif kind == "bomb":
            depth = draw(st.integers(500, 30000))
            data[at:at] = b"[" * depth + b"]" * draw(st.integers(0, depth))
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents, cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_sound_files_read_back_in_any_chunking(docs: list[bytes], cuts: list[int]) -> None:
    assert read_all(chunked(snapshot_bytes(docs), cuts)) == docs


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_split_lines_keeps_every_byte_and_breaks_only_at_newlines(
    data: bytes, cuts: list[int]
) -> None:
    lines = list(split_lines(chunked(data, cuts)))
    assert b"".join(lines) == data
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines[:-1])
    assert not lines or lines[-1].count(b"\n") <= 1


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=mutated_files() | st.binary(max_size=300), cuts=st.lists(st.integers(0, 10**6), max_size=6)
)
def test_any_file_is_read_or_refused_by_name(data: bytes, cuts: list[int]) -> None:
    try:
        read_all(chunked(data, cuts))
    except REFUSALS as exc:
        message = str(exc)
        assert message and "\n" not in message.strip()  # one line for the CLI
        assert "Errno" not in message and "Traceback" not in message


def repeated(unit: bytes, size: int, prefix: bytes) -> Iterator[bytes]:
    """``prefix`` then ``unit`` over and over, ``size`` bytes in 1 MiB chunks, generated
    as read (the file never exists whole, so what is measured is the reader)."""
    yield prefix
    block = (unit * (((1 << 20) // len(unit)) + 1))[: 1 << 20]
    for _ in range(size >> 20):
        yield block


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    unit=st.binary(min_size=1, max_size=64).filter(
        lambda b: b"\n" not in b or (len(b) >= 32 and b.count(b"\n") == 1)
    ),
    size_mib=st.sampled_from([2, 20]),
    prefix=st.sampled_from([b"", b"{\n", None]),
)
def test_memory_is_bounded_by_the_line_limit_not_the_file(
    unit: bytes, size_mib: int, prefix: bytes | None
) -> None:
    head = snapshot_bytes([b'{"id": 1}']).split(b"\n]\n")[0] + b",\n" if prefix is None else prefix
    tracemalloc.start()
    try:
        read_all(repeated(unit, size_mib << 20, head))
    except REFUSALS:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # One held line (up to the limit), its joined copy and a chunk: never the file.
    assert peak < 2 * MAX_LINE_BYTES + (8 << 20), f"peak {peak >> 20} MiB"


MEASURE = """
import resource, sys, time
from safeops.core.snapshot_reader import SnapshotReader
from safeops.core.snapshot_store import open_chunks
start = time.monotonic()
try:
    with open_chunks(sys.argv[1]) as chunks:
        list(SnapshotReader.from_chunks(chunks, sys.argv[2], sys.argv[1]).documents())
    outcome = "read"
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
print(time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
print(outcome)
"""


@pytest.mark.parametrize(
    "head",
    [b"", b'{\n"format": "safeops/medusa-media-snapshot",\n'],
    ids=["no-summary", "inside-summary"],
)
def test_a_100_mb_file_without_newline_is_refused_fast_in_bounded_memory(
    tmp_path: Path, head: bytes
) -> None:
    path = tmp_path / "no-newline.json"
    with open(path, "wb") as out:
        out.write(head)
        block = b"x" * (1 << 20)
        for _ in range(100):
            out.write(block)
    started = time.monotonic()
    # Through a small launcher: Linux carries ru_maxrss over fork and exec, so a child
    # of this (large) pytest process would report pytest's peak, not its own.
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-c", launcher, sys.executable, "-c", MEASURE, str(path), FMT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seconds, rss_mib = run.stdout.splitlines()[0].split()
    outcome = run.stdout.splitlines()[1]
    expected = "NotASnapshot" if not head else "SnapshotInvalid"
    assert outcome.startswith(expected), outcome
    assert float(seconds) < 2, seconds  # was 18-21 s
    assert int(rss_mib) < 150, f"{rss_mib} MiB"  # was 245-402 MB
    assert time.monotonic() - started < 60


def test_json_bomb_and_wrong_types_in_the_summary_are_format_failures() -> None:
    sound = snapshot_bytes([b'{"id": 1}'])
    bomb = sound.replace(b"{\n", b'{\n"note": ' + b"[" * 30000 + b"]" * 30000 + b",\n", 1)
    with pytest.raises(SnapshotInvalid, match="format check: unreadable summary line"):
        read_all(iter([bomb]))
    huge = sound.replace(b"{\n", b'{\n"note": [' + b"0," * 40000 + b"0],\n", 1)
    with pytest.raises(SnapshotInvalid, match="format check: line 2 is longer than 65536"):
        read_all(iter([huge]))
    for field, value, says in [
        ("totalProducts", '"1"', "not a count"),
        ("totalProducts", "true", "not a count"),
        ("totalProducts", "-1", "not a count"),
        ("createdAt", "[]", "not text"),
        ("formatVersion", "true", "not a version number"),
        ("bodySha256", "123", "has no bodySha256"),
        ("bodySha256", '"abc"', "not a sha256 in hex"),
    ]:
        edited = sound.replace(b"\n]\n}\n", b"\n],\n", 0)
        lines = edited.split(b"\n")
        lines = [line for line in lines if not line.startswith(f'"{field}": '.encode())]
        lines.insert(1, f'"{field}": {value},'.encode())
        with pytest.raises(SnapshotInvalid, match=f"format check: .*{says}"):
            read_all(iter([b"\n".join(lines)]))
    body_key = sound.replace(b'"products": [', b'["products"]: [')
    with pytest.raises(SnapshotInvalid, match="format check"):
        read_all(iter([body_key]))


def test_a_checksum_edited_past_its_16th_character_shows_where_they_differ() -> None:
    sound = snapshot_bytes([b'{"id": 1}'])
    recorded = sound.split(b'"bodySha256": "')[1][:64].decode()
    forged = recorded[:40] + ("0" if recorded[40] != "0" else "1") + recorded[41:]
    with pytest.raises(SnapshotInvalid) as refused:
        read_all(iter([sound.replace(recorded.encode(), forged.encode())]))
    assert recorded[:44] in str(refused.value) and forged[:44] in str(refused.value)


def test_the_writer_refuses_a_document_no_reader_would_accept() -> None:
    from safeops.core.errors import Refused

    writer = SnapshotWriter(FMT, "products")
    try:
        with pytest.raises(Refused, match="longer than"):
            writer.add(b'"' + b"x" * MAX_LINE_BYTES + b'"')
    finally:
        writer.discard()
