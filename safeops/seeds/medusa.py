"""Small realistic data sets for the demo and the tests (not for benchmarks).

Deterministic for a given seed, so tests can compare checksums across runs.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from urllib.parse import quote

from sqlalchemy import Connection, text

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
FILE_URL = "http://localhost:9000/medusa-media"
WORDS = ["classic", "linen", "shirt", "summer", "café", "tote bag", "sneaker", "wool", "hoodie",
         "crème", "denim", "jacket", "scarf", "cap", "mug", "poster", "candle", "lamp"]


def ulid(rng: random.Random, moment: datetime) -> str:
    value = (int(moment.timestamp() * 1000) << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def load_schema(conn: Connection, name: str) -> None:
    """Run one of the shipped DDL files (``medusa.sql``, ``cms.sql``)."""
    ddl = files("safeops.schemas").joinpath(name).read_text()
    conn.connection.driver_connection.execute(ddl)  # type: ignore[union-attr]


def image_url(rng: random.Random, moment: datetime, name: str, ext: str = ".jpg") -> str:
    key = f"{name}-{ulid(rng, moment)}{ext}"
    return f"{FILE_URL}/{quote(key)}"


def seed_medusa(conn: Connection, products: int = 50, seed: int = 7) -> dict[str, int]:
    """≈4 images per product, variants with links and thumbnails, ~2% soft-deleted."""
    rng = random.Random(seed)
    base = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    product_rows, image_rows, variant_rows, link_rows, copies = [], [], [], [], []
    for n in range(products):
        moment = base + timedelta(hours=n * 7, seconds=rng.randint(0, 3000))
        pid = f"prod_{ulid(rng, moment)}"
        name = f"{rng.choice(WORDS)} {rng.choice(WORDS)}"
        images = []
        for rank in range(rng.choice([0, 2, 3, 4, 4, 5, 6, 8])):
            iid = f"img_{ulid(rng, moment)}"
            images.append(iid)
            image_rows.append({
                "id": iid, "url": image_url(rng, moment, name.replace(" ", "-") if rank % 3
                                            else name),
                "metadata": json.dumps({"alt": f"{name} view {rank + 1}"}) if rank % 2 == 0
                else None,
                "rank": rank, "product_id": pid, "created_at": moment, "updated_at": moment,
                "deleted_at": moment + timedelta(days=3) if rng.random() < 0.02 else None})
        thumbnail = None
        if images and rng.random() < 0.9:
            thumbnail = next(r["url"] for r in image_rows if r["id"] == images[0])
        product_rows.append({
            "id": pid, "title": name.title(), "handle": f"{name.replace(' ', '-')}-{n}",
            "status": rng.choice(["published", "published", "draft", "proposed"]),
            "thumbnail": thumbnail,
            "metadata": json.dumps({"source": "seed", "n": n}) if n % 3 else None,
            "created_at": moment, "updated_at": moment,
            "deleted_at": moment + timedelta(days=9) if n % 40 == 39 else None})
        for v in range(rng.randint(1, 3)):
            vid = f"variant_{ulid(rng, moment)}"
            variant_rows.append({
                "id": vid, "title": f"{name} / {['S', 'M', 'L'][v]}", "product_id": pid,
                "thumbnail": thumbnail if (thumbnail and v == 0 and n % 2) else None,
                "metadata": None, "created_at": moment, "updated_at": moment})
            for iid in images[v:v + 2]:
                link_rows.append({"id": f"pvpi_{ulid(rng, moment)}", "variant_id": vid,
                                  "image_id": iid, "created_at": moment, "updated_at": moment})
            if thumbnail:
                copies.append({"id": f"cali_{ulid(rng, moment)}", "title": name,
                               "thumbnail": thumbnail, "product_id": pid, "variant_id": vid})
    conn.execute(text("""INSERT INTO product (id, title, handle, status, thumbnail, metadata,
        created_at, updated_at, deleted_at) VALUES (:id, :title, :handle, :status, :thumbnail,
        CAST(:metadata AS jsonb), :created_at, :updated_at, :deleted_at)"""), product_rows)
    if image_rows:
        conn.execute(text("""INSERT INTO image (id, url, metadata, rank, product_id, created_at,
            updated_at, deleted_at) VALUES (:id, :url, CAST(:metadata AS jsonb), :rank,
            :product_id, :created_at, :updated_at, :deleted_at)"""), image_rows)
    conn.execute(text("""INSERT INTO product_variant (id, title, product_id, thumbnail, metadata,
        created_at, updated_at) VALUES (:id, :title, :product_id, :thumbnail,
        CAST(:metadata AS jsonb), :created_at, :updated_at)"""), variant_rows)
    if link_rows:
        conn.execute(text("""INSERT INTO product_variant_product_image (id, variant_id, image_id,
            created_at, updated_at) VALUES (:id, :variant_id, :image_id, :created_at,
            :updated_at)"""), link_rows)
    for table in ("cart_line_item", "order_line_item"):
        if copies:
            conn.execute(text(f"""INSERT INTO {table} (id, title, thumbnail, product_id, variant_id)
                VALUES (:id || '_{table[:3]}', :title, :thumbnail, :product_id, :variant_id)"""),
                copies)
    conn.execute(text("""INSERT INTO inventory_item (id, sku, title, thumbnail)
        SELECT 'iitem_' || v.id, 'SKU-' || v.id, v.title, p.thumbnail
        FROM product_variant v JOIN product p ON p.id = v.product_id"""))
    return {"products": len(product_rows), "images": len(image_rows),
            "variants": len(variant_rows), "variant_links": len(link_rows)}
