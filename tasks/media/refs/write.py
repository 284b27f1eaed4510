"""Write the refs: ``metadata.media`` merged per product, in short audited transactions.

``WRITE_BATCH`` products per transaction, each locking its product rows,
merging with what is there now (``merge_refs``) and writing only
``metadata.media``; an audit row goes with every batch that changed something.
Idempotent: a run resumed after a crash writes only what is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TypeVar

from prefect import task

from safeops.core.db import engine_for, transaction
from safeops.core.image_ref import MEDIA_VERSION, ImageRef, MediaRefs
from safeops.core.models import Approval
from safeops.core.settings import describe_target, get_settings
from tasks.common.audit import write_audit
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.media.refs.plan import FLOW
from tasks.media.refs.products import lock_products, parse_media, set_media

WRITE_BATCH = 100  # products per ref-writing transaction: short row locks

T = TypeVar("T")


def merge_refs(current: MediaRefs | None, new: list[ImageRef]) -> tuple[MediaRefs, int, int]:
    """(merged refs, refs added or replaced, copies left unreferenced).

    Refs of other images (uploads, other sources) are kept as they are. A ref
    for the same source image is replaced (its source changed), except when it
    already points at an equal copy (written meanwhile): then ours is left."""
    existing = list(current.refs) if current else []
    by_source = {r.sourceImageId: r for r in existing if r.sourceImageId}
    keep: list[ImageRef] = []
    left = 0
    for ref in new:
        old = by_source.get(ref.sourceImageId) if ref.sourceImageId else None
        if old is not None and old.key != ref.key and old.etag == ref.etag:
            left += 1
            continue
        if old is None or old != ref:
            keep.append(ref)
    replaced = {r.sourceImageId for r in keep}
    merged = [r for r in existing if r.sourceImageId is None or r.sourceImageId not in replaced]
    return MediaRefs(version=MEDIA_VERSION, refs=merged + keep).sorted(), len(keep), left


def _batches(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@task(name="write-media-refs", **TRANSIENT_RETRIES)
def write_media_refs(
    target: str,
    refs: dict[str, list[ImageRef]],
    plan_hash: str,
    approval: Approval,
    started_at: datetime,
    snapshot_uri: str | None,
) -> dict[str, int]:
    """``metadata.media`` per product, ``WRITE_BATCH`` products per transaction
    (row locks held for milliseconds), an audit row in each. Idempotent."""
    engine = engine_for(target)
    settings = get_settings()
    totals = Counter({"refs_written": 0, "products_updated": 0})
    for number, batch in enumerate(_batches(sorted(refs), WRITE_BATCH), start=1):
        with transaction(engine, lock_timeout_s=settings.lock_timeout_s) as conn:
            states = lock_products(conn, batch)
            updates: dict[str, dict[str, Any]] = {}
            written = 0
            for pid in batch:
                state = states.get(pid)
                current, usable = parse_media(state) if state else (None, False)
                if state is None or state.deleted or state.metadata_kind == "other" or not usable:
                    totals["products_skipped_at_write"] += 1
                    continue
                merged, added, left = merge_refs(current, refs[pid])
                totals["copies_left_unreferenced"] += left
                if merged.document() == state.media:
                    continue
                updates[pid] = merged.document()
                written += added
            changed = set_media(conn, updates)
            if changed:
                write_audit(
                    conn,
                    flow_run_id=current_flow_run_id(),
                    flow_name=FLOW,
                    target=describe_target(target),
                    plan_hash=plan_hash,
                    approval=approval,
                    counts={"batch": number, "products": changed, "refs": written},
                    snapshot_uri=snapshot_uri,
                    started_at=started_at,
                )
        totals["products_updated"] += changed
        totals["refs_written"] += written
    return {k: v for k, v in totals.items() if v or k in ("refs_written", "products_updated")}
