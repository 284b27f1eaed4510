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

This module holds what both sides share: the format constants, the line
bounds and the line splitter. The writer is in snapshot_writer, the reader in
snapshot_reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from safeops.core.errors import LineTooLong

FORMAT_VERSION = 1


BODY_BUFFER = 1 << 20  # one write(2) per MiB of body instead of one per 8 KiB
PART_SUFFIX = ".part"  # work-in-progress files: hidden, never a snapshot name


# The longest line a reader accepts (newline excluded). A reader holds one line at
# a time, so this bounds its memory whatever the file: a file without newlines is
# refused after this many bytes instead of being read whole. A body document is one
# product or row with everything under it; 16 MiB is tens of thousands of images
# for a single product, and the writer refuses to write a longer one.
MAX_LINE_BYTES = 16 << 20
# Summary lines are one short field each; parsing is what costs memory (a line of
# ``[0,0,…]`` becomes a list eight times its size), so they get a far lower bound.
MAX_SUMMARY_LINE_BYTES = 64 << 10


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
            held.append(chunk[: end + 1])
            number += 1
            yield b"".join(held)
            held, held_len, start = [], 0, end + 1
            end = chunk.find(b"\n", start)
        check = len(chunk) > max_line  # only a chunk longer than the bound can hold one
        while end >= 0:
            number += 1
            if check and end - start > max_line:
                raise LineTooLong(number, max_line)
            yield chunk[start : end + 1]
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
