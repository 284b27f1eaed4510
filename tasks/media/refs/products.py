"""The product rows ImageRefs live on: read, row-locked, ``metadata.media`` parsed and written.

Shared by the plan (what is there now), the write task and uploads (lock,
merge, write). Writes only ``product.metadata -> 'media'`` (``jsonb_set``:
every other metadata key stays as it is) and ``product.updated_at = now()``
(Medusa sets it itself, no trigger).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, text

from safeops.core.image_ref import MediaRefs


@dataclass(frozen=True)
class ProductState:
    id: str
    deleted: bool
    metadata_kind: str  # 'none' (NULL or JSON null), 'object', or 'other'
    media: Any  # metadata -> 'media' as decoded JSON, None when absent


PRODUCT_STATE_SQL = """
SELECT p.id, p.deleted_at IS NOT NULL AS deleted,
       CASE WHEN p.metadata IS NULL OR jsonb_typeof(p.metadata) = 'null' THEN 'none'
            WHEN jsonb_typeof(p.metadata) = 'object' THEN 'object'
            ELSE 'other' END AS metadata_kind,
       CASE WHEN jsonb_typeof(p.metadata) = 'object' THEN p.metadata -> 'media' END AS media
FROM product p
"""


def read_products(
    conn: Connection, ids: Sequence[str], *, for_update: bool = False
) -> dict[str, ProductState]:
    """Products by id; ``for_update`` row-locks them in id order (no deadlock
    between two writers), holding Medusa's writers of those rows until commit."""
    sql = PRODUCT_STATE_SQL + "WHERE p.id = ANY(:ids) ORDER BY p.id"
    if for_update:
        sql += " FOR UPDATE OF p"
    rows = conn.execute(text(sql), {"ids": list(ids)})
    return {r.id: ProductState(r.id, bool(r.deleted), r.metadata_kind, r.media) for r in rows}


def lock_products(conn: Connection, ids: Sequence[str]) -> dict[str, ProductState]:
    return read_products(conn, ids, for_update=True)


SET_MEDIA_SQL = text("""
UPDATE product AS p
SET metadata = jsonb_set(CASE WHEN jsonb_typeof(p.metadata) = 'object' THEN p.metadata
                              ELSE '{}'::jsonb END,
                         '{media}', v.media, true),
    updated_at = now()
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id text, media jsonb)
WHERE p.id = v.id
  AND (p.metadata IS NULL OR jsonb_typeof(p.metadata) IN ('object', 'null'))
""")


def set_media(conn: Connection, media_by_product: dict[str, dict[str, Any]]) -> int:
    """Replace ``metadata.media`` of each product; other keys untouched. Rows changed."""
    if not media_by_product:
        return 0
    rows = [{"id": pid, "media": media} for pid, media in media_by_product.items()]
    return int(conn.execute(SET_MEDIA_SQL, {"rows": json.dumps(rows)}).rowcount)


def parse_media(state: ProductState) -> tuple[MediaRefs | None, bool]:
    """(refs, usable): a ``media`` key we did not write is never overwritten."""
    if state.media is None:
        return None, True
    try:
        return MediaRefs.model_validate(state.media), True
    except ValidationError:
        return None, False
