"""Where snapshot files live: a local folder or an S3/MinIO prefix.

Files are written once under a new name and never overwritten, so any
snapshot URI handed out stays valid. In a folder, a snapshot is assembled
under a hidden ``.<name>.<random>.part`` name and only then linked under its
real one: a crash leaves at most hidden files, never a half-written snapshot.
Reads stream line by line so memory does not grow with the catalog.

One module for both places on purpose (over the usual ~300 lines): every store
operation (publish, open, list, remove, the create-only rule) is written for
the folder and for S3 side by side, so a reader checks that the two keep the
same promise by reading one function after the other.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from safeops.core.errors import (
    BadInput,
    SafeopsError,
    SnapshotNotFound,
    StoreUnavailable,
    UnwritableLocation,
)
from safeops.core.settings import get_settings
from safeops.core.snapshot_format import PART_SUFFIX
from safeops.core.snapshot_writer import SnapshotParts, copy_file

SNAPSHOT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*-\d{8}T\d{6}Z(-\d+)?\.json$")
CHUNK = 1 << 20


def unwritable(folder: str | Path, exc: OSError) -> UnwritableLocation:
    """The refusal for an OSError met while preparing ``folder``: one line, no Errno."""
    reason = exc.strerror or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0, "")
    return UnwritableLocation(
        f"Cannot write snapshots to {folder}: {reason.lower()}"
        + (f" ({code})" if code else "")
        + "; nothing changed."
    )


@contextmanager
def writing_to(folder: str | Path) -> Iterator[None]:
    """Turn the OSErrors of creating a folder or a file in it into UnwritableLocation.

    Only around the steps that prepare the place (mkdir, the first file): a disk that
    fills up later is a fault of its own, not a wrong location."""
    try:
        yield
    except OSError as exc:
        raise unwritable(folder, exc) from None


@dataclass(frozen=True)
class Location:
    """A parsed store location: a folder, or a bucket and key prefix."""

    scheme: str  # "file" or "s3"
    root: str  # folder path, or bucket
    prefix: str = ""  # S3 key prefix without trailing slash

    def uri_for(self, name: str) -> str:
        if self.scheme == "s3":
            key = f"{self.prefix}/{name}" if self.prefix else name
            return f"s3://{self.root}/{key}"
        return str(Path(self.root) / name)


# S3's bucket naming rules (and MinIO's): 3-63 lowercase letters, digits, dots and
# hyphens, starting and ending with a letter or digit. Checked here so a typo is bad input
# (exit 2) named at once, not botocore's "Parameter validation failed" after the flow started.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bucket(name: str, raw: str) -> str:
    if not _BUCKET.match(name):
        raise BadInput(
            f"Bucket {name!r} in {raw!r} is not a valid S3 bucket name (3-63 lowercase "
            "letters, digits, dots and hyphens)."
        )
    return name


def _reject_traversal(raw: str) -> None:
    if any(part == ".." for part in re.split(r"[/\\]", raw)):
        raise BadInput(f"Snapshot location {raw!r} contains '..': path traversal is refused.")


def parse_location(raw: str | None) -> Location:
    """A store base (``./exports``, ``/abs``, ``file:///abs``, ``s3://bucket/prefix``)."""
    raw = (raw or get_settings().snapshot_uri).strip()
    if not raw:
        raise BadInput("Snapshot location is empty.")
    _reject_traversal(raw)
    parsed = urlparse(raw)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BadInput(f"Snapshot location {raw!r} names no bucket.")
        return Location("s3", _bucket(parsed.netloc, raw), parsed.path.strip("/"))
    if parsed.scheme == "file":
        return Location("file", parsed.path or "/")
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Location("file", raw)
    raise BadInput(f"Unknown snapshot scheme {parsed.scheme!r} in {raw!r}: use a folder or s3://.")


def split_uri(uri: str) -> tuple[Location, str]:
    """A snapshot URI into its store location and file name."""
    if not uri or not uri.strip():
        raise BadInput("Snapshot URI is empty.")
    uri = uri.strip()
    _reject_traversal(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise BadInput(f"Snapshot URI {uri!r} must be s3://bucket/key.json.")
        prefix, _, name = key.rpartition("/")
        return Location("s3", _bucket(parsed.netloc, uri), prefix), name
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        return Location("file", str(path.parent)), path.name
    raise BadInput(f"Unknown snapshot scheme {parsed.scheme!r} in {uri!r}: use a path or s3://.")


def s3_client(max_pool_connections: int = 10) -> Any:
    """A boto3 S3 client (thread-safe); size the pool to the threads sharing it."""
    import boto3
    from botocore.config import Config

    settings = get_settings()
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        config=Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=max_pool_connections,
        ),
    )


def _endpoint() -> str:
    return get_settings().s3_endpoint_url or "AWS S3"


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError

    try:
        yield
    except S3UploadFailedError as exc:  # upload_file wraps the ClientError in its text
        if "NoSuchBucket" in str(exc):
            raise BadInput(f"Bucket does not exist at {_endpoint()} while {what}.") from None
        raise
    except EndpointConnectionError as exc:
        raise StoreUnavailable(
            f"S3 endpoint {_endpoint()} unreachable while {what}: {exc}"
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            raise BadInput(f"Bucket does not exist at {_endpoint()} while {what}.") from None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise SnapshotNotFound(f"No snapshot found while {what}.") from None
        raise


def spool_dir(location: Location) -> Path | None:
    """Where a snapshot's body should spool while rows stream: in the destination
    folder itself, so joining the file is a copy inside one file system. S3
    snapshots spool to the local temporary folder (None)."""
    if location.scheme != "file":
        return None
    folder = Path(location.root)
    with writing_to(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish(parts: SnapshotParts, location: Location, base_name: str) -> str:
    """Put a finished snapshot in the store under a name that is not taken yet."""
    if location.scheme == "file":
        return _publish_to_folder(parts, Path(location.root), base_name)
    return _publish_to_s3(parts, location, base_name)


def _free_names(base_name: str) -> Iterator[str]:
    """The name itself, then -1, -2, ...: two runs in the same second never share one."""
    yield base_name
    for attempt in range(1, 1000):
        yield base_name.replace(".json", f"-{attempt}.json")


def _publish_to_folder(parts: SnapshotParts, folder: Path, base_name: str) -> str:
    """Write the file once, under a hidden name in its folder, then give it its name.

    os.link refuses an existing name, so no snapshot is ever overwritten, and the
    name only appears once the file is complete and on disk: a crash leaves at
    most a hidden ``.part`` file, which listings and retention ignore."""
    with writing_to(folder):
        folder.mkdir(parents=True, exist_ok=True)
    part = _assemble(parts, folder, base_name, durable=True)
    try:
        for name in _free_names(base_name):
            try:
                os.link(part, folder / name)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
                if not _copy_to_new_name(part, folder / name):
                    continue
            _fsync_folder(folder)
            return str(folder / name)
    finally:
        part.unlink(missing_ok=True)
    raise SafeopsError(f"Could not find a free snapshot name in {folder}.")


# File systems without hard links (some network and FUSE mounts) say so with these.
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _copy_to_new_name(part: Path, target: Path) -> bool:
    """Where os.link is refused: reserve the name with O_EXCL (never overwrites) and
    copy the finished file into it. The name is visible while the copy runs, as it
    was before links were used; False when the name is taken."""
    try:
        fd = os.open(target, NEW_FILE, 0o640)
    except FileExistsError:
        return False
    with open(part, "rb") as src:
        _fill(
            fd,
            target,
            lambda out: copy_file(src.fileno(), out, os.fstat(src.fileno()).st_size),
            durable=True,
        )
    return True


def _assemble(parts: SnapshotParts, folder: Path, base_name: str, *, durable: bool) -> Path:
    """The complete file under a new hidden ``.part`` name in ``folder``."""
    fd, part = _create_part(folder, base_name)
    _fill(fd, part, parts.write_to, durable=durable)
    return part


def _fill(fd: int, path: Path, write: Callable[[int], None], *, durable: bool) -> None:
    """Write a file just created at ``path`` and close it; on any failure remove it,
    so no name is ever left holding part of a snapshot."""
    try:
        write(fd)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


# Create-only: opening an existing name fails, so nothing is ever overwritten.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create_part(folder: Path, base_name: str) -> tuple[int, Path]:
    for _ in range(100):
        part = folder / f".{base_name}.{secrets.token_hex(6)}{PART_SUFFIX}"
        try:
            return os.open(part, NEW_FILE, 0o640), part
        except FileExistsError:
            continue
    raise SafeopsError(f"Could not create a temporary file in {folder}.")


def _fsync_folder(folder: Path) -> None:
    """Make the new name itself durable, not only the file's bytes (POSIX only)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_to_s3(parts: SnapshotParts, location: Location, base_name: str) -> str:
    """Stream the parts to the first free key with a create-only write.

    ``IfNoneMatch="*"`` makes S3 (and MinIO, and moto) refuse the write with
    412 when the key exists, so two publishes racing for one name cannot
    overwrite each other: the loser moves on to the next name. The HEAD before
    it is only a hint that skips names already visibly taken (a name lost at
    the write costs one more upload of the body). The body is read from the
    parts as it is sent, never joined into a local copy first."""
    client = s3_client()
    size = len(parts.header) + parts.body.stat().st_size + len(parts.trailer)
    with (
        open(parts.body, "rb") as body,
        s3_errors(f"writing to s3://{location.root}/{location.prefix}"),
    ):
        for name in _free_names(base_name):
            key = f"{location.prefix}/{name}" if location.prefix else name
            if _s3_exists(client, location.root, key):
                continue
            if size <= S3_PART:
                written = _s3_put_new(
                    client, location.root, key, _Joined(parts, body, 0, size), size
                )
            else:
                written = _s3_multipart_new(client, location.root, key, parts, body, size)
            if written:
                return f"s3://{location.root}/{key}"
    raise SafeopsError("Could not find a free snapshot name in the bucket.")


# One PUT up to this size, parts of at least this size above it: a lost connection
# resends one part, and memory stays flat either way (parts are streamed, not buffered).
S3_PART = 64 << 20
S3_MAX_PARTS = 10_000
# 412: the key exists. 409: another conditional write to the key is in flight (S3
# asks to retry); either way this name is someone else's, so try the next one.
_NAME_TAKEN = {"PreconditionFailed", "ConditionalRequestConflict"}


def is_key_taken(exc: Exception) -> bool:
    """A create-only write (``IfNoneMatch="*"``) refused because the key exists."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _NAME_TAKEN


def _s3_put_new(client: Any, bucket: str, key: str, body: _Joined, size: int) -> bool:
    """One create-only PUT; False when the key already exists."""
    try:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentLength=size,
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except Exception as exc:
        if is_key_taken(exc):
            return False
        raise
    return True


def _s3_multipart_new(
    client: Any, bucket: str, key: str, parts: SnapshotParts, body: Any, size: int
) -> bool:
    """A multipart upload whose completion is create-only (CompleteMultipartUpload
    takes ``IfNoneMatch`` too); False when the key exists by then. Parts go one
    at a time, each streamed from the parts; any failure aborts the upload so
    no invisible parts are left billed in the bucket."""
    part_size = max(S3_PART, -(-size // S3_MAX_PARTS))
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/json")[
        "UploadId"
    ]
    try:
        done = []
        for number, start in enumerate(range(0, size, part_size), start=1):
            length = min(part_size, size - start)
            etag = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                PartNumber=number,
                ContentLength=length,
                Body=_Joined(parts, body, start, length),
            )["ETag"]
            done.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": done},
            IfNoneMatch="*",
        )
    except BaseException as exc:
        with suppress(Exception):  # best effort: the original error is the one to report
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        if isinstance(exc, Exception) and is_key_taken(exc):
            return False
        raise
    return True


class _Joined(io.RawIOBase):
    """``size`` bytes from ``start`` of the joined snapshot (header, body, trailer)
    as one seekable read-only file, read from the parts as botocore asks: it
    hashes and sends the body (seeking back in between, and on a retry), and
    nothing is copied to disk or held in memory. The body is read with pread, so
    windows sharing its file never move each other's position."""

    def __init__(self, parts: SnapshotParts, body: Any, start: int, size: int) -> None:
        super().__init__()
        self._header, self._trailer = parts.header, parts.trailer
        self._body_fd = body.fileno()
        self._body_end = len(self._header) + os.fstat(self._body_fd).st_size
        self._start, self._end, self._pos = start, start + size, start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}
        self._pos = min(max(base[whence] + offset, self._start), self._end)
        return self.tell()

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        header = len(self._header)
        if self._pos < header:
            chunk = self._header[self._pos : self._pos + want]
        elif self._pos < self._body_end:
            chunk = os.pread(
                self._body_fd, min(want, self._body_end - self._pos), self._pos - header
            )
            if not chunk:
                raise SafeopsError("The snapshot body shrank while it was uploaded.")
        else:
            offset = self._pos - self._body_end
            chunk = self._trailer[offset : offset + want]
        memoryview(buffer)[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def _s3_exists(client: Any, bucket: str, key: str) -> bool:
    """Whether the key is visibly taken: a hint to skip it, never a reservation
    (the create-only write is what guarantees nothing is overwritten)."""
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


@contextmanager
def open_chunks(uri: str) -> Iterator[Iterator[bytes]]:
    """Stream a snapshot's bytes in 1 MiB chunks from wherever it lives."""
    location, name = split_uri(uri)
    if location.scheme == "file":
        path = Path(location.root) / name
        if not path.is_file():
            raise SnapshotNotFound(f"No snapshot file at {path}.")
        with open(path, "rb") as handle:
            yield iter(lambda: handle.read(CHUNK), b"")
        return
    client = s3_client()
    key = f"{location.prefix}/{name}" if location.prefix else name
    with s3_errors(f"reading {uri}"):
        body = client.get_object(Bucket=location.root, Key=key)["Body"]
    try:
        with s3_errors(f"reading {uri}"):
            yield iter(lambda: body.read(CHUNK), b"")
    finally:
        body.close()


def file_sha256(uri: str) -> str:
    """sha256 of the stored file's bytes, read in chunks (hashlib releases the GIL,
    so a thread can hash while the caller's SQL runs)."""
    sha = hashlib.sha256()
    with open_chunks(uri) as chunks:
        for chunk in chunks:
            sha.update(chunk)
    return sha.hexdigest()


def list_snapshots(location: Location, kind_prefix: str) -> list[str]:
    """URIs of the snapshots of one kind, oldest first (names sort by time)."""
    if location.scheme == "file":
        folder = Path(location.root)
        if not folder.is_dir():
            return []
        names = sorted(
            p.name
            for p in folder.iterdir()
            if p.name.startswith(kind_prefix) and SNAPSHOT_NAME.match(p.name)
        )
        return [location.uri_for(n) for n in names]
    client = s3_client()
    prefix = f"{location.prefix}/{kind_prefix}" if location.prefix else kind_prefix
    keys: list[str] = []
    with s3_errors(f"listing s3://{location.root}/{prefix}"):
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=location.root, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return [
        f"s3://{location.root}/{k}"
        for k in sorted(keys)
        if SNAPSHOT_NAME.match(k.rpartition("/")[2])
    ]


# What a crashed run leaves in a folder store: the writer's spool and the assembled
# file, both hidden until published (see snapshot_writer.SnapshotWriter, _assemble).
LEFTOVER_PART = re.compile(
    r"^\.safeops-[^/]*\.body\.part$"
    r"|^\.[a-z0-9][a-z0-9-]*-\d{8}T\d{6}Z(-\d+)?\.json\.[0-9a-f]+\.part$"
)


def remove_leftover_parts(location: Location, older_than_s: float = 86400.0) -> list[str]:
    """Delete the hidden work files of runs that died a day or more ago.

    A live run's files are seconds to minutes old, so a day's margin never touches
    one; anything not named like our own work files stays, whatever its age."""
    if location.scheme != "file" or not Path(location.root).is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for path in Path(location.root).iterdir():
        if LEFTOVER_PART.match(path.name) and path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return sorted(removed)


def remove(uri: str) -> None:
    """Delete one snapshot file (retention only; product files are never deleted)."""
    location, name = split_uri(uri)
    if not SNAPSHOT_NAME.match(name):
        raise BadInput(f"Refusing to delete {uri!r}: not a safeops snapshot name.")
    if location.scheme == "file":
        (Path(location.root) / name).unlink(missing_ok=True)
        return
    key = f"{location.prefix}/{name}" if location.prefix else name
    with s3_errors(f"deleting {uri}"):
        s3_client().delete_object(Bucket=location.root, Key=key)
