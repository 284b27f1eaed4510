-- Medusa v2.11+ product-module shape (the parts safeops touches), for tests and the demo.
-- Written from Medusa's documented facts; load into an empty database with psql -f.
-- Not a migration of a real store: safeops never creates these tables in production.

CREATE TABLE IF NOT EXISTS product (
    id          text PRIMARY KEY,                  -- prod_<ULID>, no default (Medusa generates ids)
    title       text NOT NULL,
    handle      text NOT NULL,
    subtitle    text NULL,
    description text NULL,
    is_giftcard boolean NOT NULL DEFAULT false,
    status      text NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'proposed', 'published', 'rejected')),
    thumbnail   text NULL,                         -- plain URL copy, no FK
    external_id text NULL,
    metadata    jsonb NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "IDX_product_handle_unique"
    ON product (handle) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS "IDX_product_deleted_at" ON product (deleted_at);

CREATE TABLE IF NOT EXISTS image (
    id         text PRIMARY KEY,                   -- img_<ULID>
    url        text NOT NULL,                      -- not unique
    metadata   jsonb NULL,
    rank       integer NOT NULL DEFAULT 0,
    product_id text NOT NULL REFERENCES product (id) ON UPDATE CASCADE ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS "IDX_image_product_id" ON image (product_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS "IDX_image_deleted_at" ON image (deleted_at) WHERE deleted_at IS NULL;
-- Not in Medusa's partial indexes; soft-deleted images are part of every purge,
-- so the snapshot needs to find them by product without a sequential scan.
CREATE INDEX IF NOT EXISTS "IDX_image_product_id_all" ON image (product_id);

CREATE TABLE IF NOT EXISTS product_variant (
    id         text PRIMARY KEY,                   -- variant_<ULID>
    title      text NOT NULL,
    sku        text NULL,
    product_id text NULL REFERENCES product (id) ON UPDATE CASCADE ON DELETE CASCADE,
    thumbnail  text NULL,
    variant_rank integer NULL DEFAULT 0,
    metadata   jsonb NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS "IDX_product_variant_product_id"
    ON product_variant (product_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS "IDX_product_variant_product_id_all" ON product_variant (product_id);

CREATE TABLE IF NOT EXISTS product_variant_product_image (
    id         text PRIMARY KEY,                   -- pvpi_<ULID>
    variant_id text NOT NULL,                      -- no FK, no unique (variant_id, image_id)
    image_id   text NOT NULL REFERENCES image (id) ON UPDATE CASCADE ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS "IDX_product_variant_product_image_variant_id"
    ON product_variant_product_image (variant_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS "IDX_product_variant_product_image_image_id"
    ON product_variant_product_image (image_id);

-- Other modules keep historical copies of thumbnail URLs; safeops never touches them.
CREATE TABLE IF NOT EXISTS cart_line_item (
    id         text PRIMARY KEY,
    title      text NOT NULL,
    thumbnail  text NULL,
    product_id text NULL,
    variant_id text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL
);
CREATE TABLE IF NOT EXISTS order_line_item (
    id         text PRIMARY KEY,
    title      text NOT NULL,
    thumbnail  text NULL,
    product_id text NULL,
    variant_id text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL
);
CREATE TABLE IF NOT EXISTS inventory_item (
    id         text PRIMARY KEY,
    sku        text NULL,
    title      text NULL,
    thumbnail  text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL
);
