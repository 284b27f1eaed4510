"""Every SQL statement of the ImageRef migration and uploads.

Reads source images from the live ``image`` table or from a loaded media
snapshot (``_snap_image``, see ``tasks.media.medusa_sql.load_snapshot``); writes only
``product.metadata -> 'media'`` (``jsonb_set``: every other metadata key stays
as it is) and ``product.updated_at = now()`` (Medusa sets it itself, no trigger).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, text

SourceTable = Literal["image", "_snap_image"]


@dataclass(frozen=True)
class SourceImage:
    id: str
    url: str
    rank: int
    product_id: str
    alt: str | None
    soft_deleted: bool


@dataclass(frozen=True)
class ProductState:
    id: str
    deleted: bool
    metadata_kind: str  # 'none' (NULL or JSON null), 'object', or 'other'
    media: Any  # metadata -> 'media' as decoded JSON, None when absent


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


_PRODUCT_COLUMNS = """
SELECT p.id, p.deleted_at IS NOT NULL AS deleted,
       CASE WHEN p.metadata IS NULL OR jsonb_typeof(p.metadata) = 'null' THEN 'none'
            WHEN jsonb_typeof(p.metadata) = 'object' THEN 'object'
            ELSE 'other' END AS metadata_kind,
       CASE WHEN jsonb_typeof(p.metadata) = 'object' THEN p.metadata -> 'media' END AS media
FROM product p
"""


def source_images(conn: Connection, table: SourceTable) -> list[SourceImage]:
    """Every source image (soft-deleted too: the caller decides), by product and rank."""
    result = conn.execute(text(_source_sql(table)).execution_options(stream_results=True,
                                                                      yield_per=2000))
    return [SourceImage(id=r.id, url=r.url, rank=int(r.rank), product_id=r.product_id,
                        alt=r.alt, soft_deleted=bool(r.soft_deleted)) for r in result]


def product_states(conn: Connection, table: SourceTable) -> dict[str, ProductState]:
    """The products the source images belong to (absent ones are simply missing)."""
    sql = _PRODUCT_COLUMNS + f"WHERE p.id IN (SELECT DISTINCT product_id FROM {table})"
    _source_sql(table)  # validates the identifier
    return {r.id: ProductState(r.id, bool(r.deleted), r.metadata_kind, r.media)
            for r in conn.execute(text(sql))}


def read_products(conn: Connection, ids: Sequence[str], *,
                  for_update: bool = False) -> dict[str, ProductState]:
    """Products by id; ``for_update`` row-locks them in id order (no deadlock
    between two writers), holding Medusa's writers of those rows until commit."""
    sql = _PRODUCT_COLUMNS + "WHERE p.id = ANY(:ids) ORDER BY p.id"
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
