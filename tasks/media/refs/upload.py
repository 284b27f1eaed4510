"""Upload local files as new ImageRefs of one product (``safeops media upload``).

A plain function, not a task: a quick CLI command with no flow. Each file goes
to a new key (never overwriting), is checked after writing, and the refs are
appended in one short transaction with an audit row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from safeops.core.db import engine_for, fingerprint, transaction
from safeops.core.errors import BadInput, Refused
from safeops.core.image_ref import MEDIA_VERSION, ImageRef, MediaRefs, public_url
from safeops.core.models import Approval, plan_hash_of
from safeops.core.settings import describe_target, get_settings
from safeops.core.snapshot_store import s3_client, s3_errors
from tasks.common.audit import write_audit
from tasks.media.objects import (
    extension_for,
    media_key,
    put_verified,
    sniff_content_type,
    stamp_of,
)
from tasks.media.refs.products import (
    ProductState,
    lock_products,
    parse_media,
    read_products,
    set_media,
)
from tasks.media.refs.store import media_store

UPLOAD_FLOW = "upload-product-media"


def _check_product(state: ProductState | None, product_id: str) -> MediaRefs | None:
    if state is None:
        raise BadInput(f"No product {product_id!r} in the target database; nothing uploaded.")
    if state.deleted:
        raise BadInput(f"Product {product_id} is deleted; nothing uploaded.")
    if state.metadata_kind == "other":
        raise Refused(
            f"Refused: product {product_id} has metadata that is not a JSON object; "
            "nothing uploaded."
        )
    current, usable = parse_media(state)
    if not usable:
        raise Refused(
            f"Refused: product {product_id} has a metadata.media that is not "
            "ImageRefs (version 1); nothing uploaded."
        )
    return current


def upload_media(target: str, product_id: str, paths: list[Path], approver: str) -> list[ImageRef]:
    """Upload local files under new keys and append their ImageRefs (plain function:
    a quick CLI command, no flow). Files are checked and the product is read before
    anything is written; the refs go in one short transaction with an audit row."""
    store = media_store()
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise BadInput(
            "Nothing to upload: "
            + (", ".join(missing) + " not found" if missing else "no file given")
            + "."
        )
    engine = engine_for(target)
    with transaction(engine, read_only=True) as conn:
        _check_product(read_products(conn, [product_id]).get(product_id), product_id)
    started = datetime.now(UTC).replace(microsecond=0)
    client = s3_client()
    uploaded: list[ImageRef] = []
    with s3_errors(f"uploading to bucket {store.bucket}"):
        for path in paths:
            content_type = sniff_content_type(path)
            key = media_key(product_id, extension_for(path.name, content_type))
            obj = put_verified(
                client,
                store.bucket,
                key,
                path,
                content_type,
                {"safeops-source-file": quote(path.name)},
            )
            uploaded.append(
                ImageRef(
                    key=key,
                    bucket=store.bucket,
                    url=public_url(store.file_url, key),
                    rank=0,
                    contentType=content_type,
                    size=obj.size,
                    etag=obj.etag,
                    alt=None,
                    sourceImageId=None,
                    sourceUrl=None,
                    createdAt=stamp_of(key) or started,
                )
            )
    with transaction(engine, lock_timeout_s=get_settings().lock_timeout_s) as conn:
        current = _check_product(lock_products(conn, [product_id]).get(product_id), product_id)
        existing = list(current.refs) if current else []
        base = max((r.rank for r in existing), default=-1) + 1
        uploaded = [ref.model_copy(update={"rank": base + n}) for n, ref in enumerate(uploaded)]
        merged = MediaRefs(version=MEDIA_VERSION, refs=existing + uploaded).sorted()
        set_media(conn, {product_id: merged.document()})
        write_audit(
            conn,
            flow_run_id=None,
            flow_name=UPLOAD_FLOW,
            target=describe_target(target),
            plan_hash=plan_hash_of(
                {UPLOAD_FLOW: {product_id: [r.key for r in uploaded]}},
                database=str(fingerprint(conn)),
            ),
            approval=Approval(
                approver=approver, reason=f"upload of {len(uploaded)} file(s)", via="cli"
            ),
            counts={"products": 1, "refs": len(uploaded)},
            snapshot_uri=None,
            started_at=started,
        )
    return uploaded
