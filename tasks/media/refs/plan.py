"""Plan an ImageRef migration: read the source images, HEAD their objects, classify each.

Sources are the live ``image`` table, or a verified media snapshot after a
purge (loaded into ``_snap_image``, see ``tasks.media.loaded.load_snapshot``).
Each image ends up as copy, reuse, done or skip (see the package docstring);
the plan hash binds an approval to the images, their object versions and the
skip decisions. Read-only everywhere (database and bucket): the copy task
re-derives the same classification before it copies anything.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, read_snapshot
from safeops.core.image_ref import ImageRef, MediaRefs
from safeops.core.models import Plan, plan_hash_of
from safeops.core.settings import describe_target
from safeops.core.snapshot_store import s3_client, s3_errors
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.snapshots import open_snapshot
from tasks.media.loaded import load_snapshot
from tasks.media.objects import (
    MAX_SINGLE_COPY,
    META_SOURCE_ETAG,
    META_SOURCE_IMAGE_ID,
    ObjectInfo,
    head_object,
    key_for_url,
    list_objects,
)
from tasks.media.refs.products import PRODUCT_STATE_SQL, ProductState, parse_media
from tasks.media.refs.store import MediaStore, media_store
from tasks.media.snapshot import MEDIA_FORMAT

FLOW = "migrate-product-media-refs"
FIRST_FEW = 5
SKIP_REASONS = (
    "unmapped_url",
    "missing_object",
    "soft_deleted",
    "product_deleted",
    "product_gone",
    "metadata_not_object",
    "media_key_in_use",
    "too_large",
)

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- sources

SourceTable = Literal["image", "_snap_image"]


@dataclass(frozen=True)
class SourceImage:
    id: str
    url: str
    rank: int
    product_id: str
    alt: str | None
    soft_deleted: bool


def _source_sql(table: SourceTable) -> str:
    if table not in ("image", "_snap_image"):  # identifiers cannot be bound
        raise ValueError(f"unknown source table {table!r}")
    return f"""
SELECT i.id, i.url, i.rank, i.product_id,
       CASE WHEN jsonb_typeof(i.metadata -> 'alt') = 'string'
            THEN i.metadata ->> 'alt' END AS alt,
       i.deleted_at IS NOT NULL AS soft_deleted
FROM {table} i
ORDER BY i.product_id, i.rank, i.id
"""


def source_images(conn: Connection, table: SourceTable) -> list[SourceImage]:
    """Every source image (soft-deleted too: the caller decides), by product and rank."""
    result = conn.execute(
        text(_source_sql(table)).execution_options(stream_results=True, yield_per=2000)
    )
    return [
        SourceImage(
            id=r.id,
            url=r.url,
            rank=int(r.rank),
            product_id=r.product_id,
            alt=r.alt,
            soft_deleted=bool(r.soft_deleted),
        )
        for r in result
    ]


def product_states(conn: Connection, table: SourceTable) -> dict[str, ProductState]:
    """The products the source images belong to (absent ones are simply missing)."""
    sql = PRODUCT_STATE_SQL + f"WHERE p.id IN (SELECT DISTINCT product_id FROM {table})"
    _source_sql(table)  # validates the identifier
    return {
        r.id: ProductState(r.id, bool(r.deleted), r.metadata_kind, r.media)
        for r in conn.execute(text(sql))
    }


# ---------------------------------------------------------------- classification


@dataclass
class Item:
    """One source image and what the migration does with it."""

    image: SourceImage
    outcome: str = "skip"  # copy | reuse | done | skip
    reason: str = ""
    source_key: str | None = None
    source: ObjectInfo | None = None
    reuse: ObjectInfo | None = None

    def hash_line(self) -> str:
        # The hash binds an approval to the source images, their object versions and the
        # skip decisions, not to progress: copy, reuse and done hash alike, so a run that
        # crashed half-way keeps its plan hash and the saved plan resumes it.
        kind = f"skip:{self.reason}" if self.outcome == "skip" else "migrate"
        etag, size = (self.source.etag, self.source.size) if self.source else ("", "")
        return f"{self.image.id}|{self.image.product_id}|{kind}|{etag}|{size}"


@dataclass
class Derived:
    items: list[Item]
    plan: Plan
    store: MediaStore


def _pool_map(fn: Callable[[T], R], values: Iterable[T], workers: int) -> list[R]:
    values = list(values)
    if not values:
        return []
    with ThreadPoolExecutor(min(workers, len(values))) as pool:
        return list(pool.map(fn, values))


def _read_sources(
    target: str, snapshot_uri: str | None
) -> tuple[list[SourceImage], dict[str, ProductState], str]:
    with ExitStack() as stack:
        conn: Connection = stack.enter_context(read_snapshot(engine_for(target)))
        table: SourceTable = "image"
        if snapshot_uri:
            reader = stack.enter_context(open_snapshot(snapshot_uri, MEDIA_FORMAT))
            load_snapshot(conn, reader)
            table = "_snap_image"
        return source_images(conn, table), product_states(conn, table), str(fingerprint(conn))


def derive(target: str, snapshot_uri: str | None) -> Derived:
    """Classify every source image; read-only everywhere (DB and bucket)."""
    store = media_store()
    images, products, database = _read_sources(target, snapshot_uri)
    current: dict[str, MediaRefs] = {}
    unusable: set[str] = set()
    for pid, product in products.items():
        refs, usable = parse_media(product)
        if refs is not None:
            current[pid] = refs
        if not usable:
            unusable.add(pid)

    items = [Item(image=img) for img in images]
    pending: list[Item] = []
    for item in items:
        img, state = item.image, products.get(item.image.product_id)
        key = key_for_url(img.url, store.file_url)
        if state is None:
            item.reason = "product_gone"
        elif state.deleted:
            item.reason = "product_deleted"
        elif img.soft_deleted:
            item.reason = "soft_deleted"
        elif state.metadata_kind == "other":
            item.reason = "metadata_not_object"
        elif img.product_id in unusable:
            item.reason = "media_key_in_use"
        elif not key or key.endswith("/"):
            item.reason = "unmapped_url"
        else:
            item.source_key = key
            pending.append(item)

    client = s3_client(store.workers)
    with s3_errors(f"reading bucket {store.bucket}"):

        def head(key: str) -> ObjectInfo | None:
            return head_object(client, store.bucket, key)

        keys = sorted({item.source_key for item in pending if item.source_key})
        heads = dict(zip(keys, _pool_map(head, keys, store.workers), strict=True))

        to_check: list[tuple[Item, ImageRef]] = []
        migrate: list[Item] = []
        for item in pending:
            src = heads[item.source_key or ""]
            item.source = src
            if src is None:
                item.reason = "missing_object"
                continue
            if src.size > MAX_SINGLE_COPY:
                item.reason = "too_large"
                continue
            refs = current.get(item.image.product_id)
            existing = (
                next((r for r in refs.refs if r.sourceImageId == item.image.id), None)
                if refs
                else None
            )
            if existing is not None and existing.etag == src.etag:
                item.outcome = "done"
            elif existing is not None and src.multipart:
                to_check.append((item, existing))  # the copy's etag is not the source's
            else:
                migrate.append(item)
        recorded = _pool_map(lambda pair: head(pair[1].key), to_check, store.workers)
        for (item, _ref), copy in zip(to_check, recorded, strict=True):
            if (
                copy is not None
                and item.source
                and copy.metadata.get(META_SOURCE_ETAG) == item.source.etag
            ):
                item.outcome = "done"
            else:
                migrate.append(item)

        _find_reusable(migrate, current, store, head, client)

    return Derived(
        items=items, plan=_plan(items, store, target, snapshot_uri, database), store=store
    )


def _find_reusable(
    migrate: list[Item],
    current: dict[str, MediaRefs],
    store: MediaStore,
    head: Callable[[str], ObjectInfo | None],
    client: Any,
) -> None:
    """Copy, or reuse a copy an interrupted run left without a ref.

    Adoption needs the copy's recorded source image id AND source etag to match
    and its size (and etag, unless the source was multipart) to equal the
    source's: a stale or foreign object is never adopted."""
    pids = sorted({item.image.product_id for item in migrate})
    referenced = {ref.key for refs in current.values() for ref in refs.refs}
    listings = _pool_map(
        lambda pid: list_objects(client, store.bucket, f"products/{pid}/"), pids, store.workers
    )
    candidates = [obj.key for listing in listings for obj in listing if obj.key not in referenced]
    by_image: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in _pool_map(head, candidates, store.workers):
        if info is not None and info.metadata.get(META_SOURCE_IMAGE_ID):
            by_image[info.metadata[META_SOURCE_IMAGE_ID]].append(info)
    for item in migrate:
        src = item.source
        assert src is not None
        prefix = f"products/{item.image.product_id}/"
        match = next(
            (
                obj
                for obj in sorted(by_image.get(item.image.id, []), key=lambda o: o.key)
                if obj.key.startswith(prefix)
                and obj.metadata.get(META_SOURCE_ETAG) == src.etag
                and obj.size == src.size
                and (src.multipart or obj.etag == src.etag)
            ),
            None,
        )
        item.outcome, item.reuse = ("reuse", match) if match else ("copy", None)


def _first_few(items: list[Item]) -> str:
    shown = []
    for item in items[:FIRST_FEW]:
        shown.append(
            f"{item.image.id} ({item.image.url})"
            if item.reason == "unmapped_url"
            else item.image.id
        )
    return ", ".join(shown) + (", …" if len(items) > FIRST_FEW else "")


def _plan(
    items: list[Item], store: MediaStore, target: str, snapshot_uri: str | None, database: str
) -> Plan:
    outcomes = Counter(item.outcome for item in items)
    skipped: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.outcome == "skip":
            skipped[item.reason].append(item)
    products = {item.image.product_id for item in items if item.outcome in ("copy", "reuse")}
    counts = {
        "images": len(items),
        "products": len(products),
        "to_copy": outcomes["copy"],
        "to_reuse": outcomes["reuse"],
        "already_done": outcomes["done"],
        **{f"skipped_{r}": len(skipped[r]) for r in SKIP_REASONS if skipped[r]},
    }
    notes = [
        f"skipped {len(skipped[r])} image(s), {r.replace('_', ' ')}: {_first_few(skipped[r])}"
        for r in SKIP_REASONS
        if skipped[r]
    ]
    body = hashlib.sha256("\n".join(sorted(i.hash_line() for i in items)).encode()).hexdigest()
    hashed = {
        k: v
        for k, v in counts.items()
        if k not in ("products", "to_copy", "to_reuse", "already_done")
    }
    hashed["migrate"] = counts["to_copy"] + counts["to_reuse"] + counts["already_done"]
    return Plan(
        kind=FLOW,
        target=describe_target(target),
        counts=counts,
        notes=notes,
        plan_hash=plan_hash_of(
            {
                FLOW: {
                    "bucket": store.bucket,
                    "fileUrl": store.file_url,
                    "source": "snapshot" if snapshot_uri else "live",
                    "counts": hashed,
                    "images": body,
                }
            },
            database=database,
        ),
    )


@task(name="plan-media-refs", **TRANSIENT_RETRIES)
def plan_media_refs(target: str, snapshot_uri: str | None = None) -> Plan:
    """What a migration would copy, reuse, find done and skip; changes nothing."""
    return derive(target, snapshot_uri).plan
