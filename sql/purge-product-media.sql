-- purge-product-media.sql: the safeops media purge as ONE plain-SQL transaction.
--
-- Fallback for when the safeops flow cannot run. It removes every image reference from the
-- Medusa v2 catalog:
--   * every row of image (soft-deleted ones too),
--   * every row of product_variant_product_image,
--   * product.thumbnail (set to NULL, updated_at = now()),
--   * product_variant.thumbnail of variants with product_id NOT NULL (NULL, updated_at = now()).
-- It never touches cart_line_item, order_line_item or inventory_item (their thumbnails are
-- historical copies), nor product.metadata. Medusa has no updated_at trigger, so this file
-- sets updated_at itself, on the rows it changes and no others.
--
-- Usage:
--   1. Take a snapshot FIRST; it is the only way back:
--        safeops media snapshot
--   2. Dry run. As shipped this file ends in ROLLBACK, so nothing is kept:
--        psql "$MEDUSA_DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/purge-product-media.sql
--      Read the output: the "before" counts, the rows each statement changed, and the
--      "after" counts (all zero).
--   3. Only if those counts are what you expect, make a copy whose last line is COMMIT; and run
--      that copy with the same command:
--        sed 's/^ROLLBACK;$/COMMIT;/' sql/purge-product-media.sql > /tmp/purge-commit.sql
--        psql "$MEDUSA_DATABASE_URL" -v ON_ERROR_STOP=1 -f /tmp/purge-commit.sql
--
-- Always pass -v ON_ERROR_STOP=1, so that psql stops at the first error (then nothing is
-- committed). Do not add -1/--single-transaction: the file has its own BEGIN and ROLLBACK.
-- The tables are locked against writers (readers can go on) for the whole transaction; if the
-- locks cannot be taken within 30 s the script fails and changes nothing. Retry when the store
-- is quieter.

BEGIN;

SET LOCAL lock_timeout = '30s';

-- Blocks concurrent INSERT/UPDATE/DELETE (and other purges); plain SELECTs go on.
LOCK TABLE product, product_variant, image, product_variant_product_image
    IN SHARE ROW EXCLUSIVE MODE;

\echo '== Counts BEFORE the purge'
SELECT 'before' AS stage,
       (SELECT count(*) FROM image) AS images,
       (SELECT count(*) FROM product_variant_product_image) AS variant_links,
       (SELECT count(*) FROM product WHERE thumbnail IS NOT NULL) AS product_thumbnails,
       (SELECT count(*) FROM product_variant
         WHERE product_id IS NOT NULL AND thumbnail IS NOT NULL) AS variant_thumbnails;

-- Medusa's only index on product_variant_product_image(image_id) is partial (WHERE deleted_at
-- IS NULL), which the ON DELETE CASCADE from image cannot use: without the index below, the
-- image DELETE scans the whole link table once per image (20k images: 2.5 s instead of 0.1 s;
-- 200k: hours instead of 2-3 s). It lives only inside this transaction: dropped before the
-- end, never seen by another session. Creating it needs the table's owner; a role that is
-- not may delete this line and the DROP INDEX below (the purge is then only slower).
CREATE INDEX safeops_purge_link_image_id ON product_variant_product_image (image_id);

\echo '== Deleting variant image links (product_variant_product_image)'
WITH deleted AS (
    DELETE FROM product_variant_product_image
    RETURNING 1
)
SELECT count(*) AS variant_links_deleted FROM deleted;

\echo '== Deleting images (including soft-deleted ones)'
WITH deleted AS (
    DELETE FROM image
    RETURNING 1
)
SELECT count(*) AS images_deleted FROM deleted;

\echo '== Clearing product thumbnails'
WITH cleared AS (
    UPDATE product
       SET thumbnail = NULL,
           updated_at = now()
     WHERE thumbnail IS NOT NULL
    RETURNING 1
)
SELECT count(*) AS product_thumbnails_cleared FROM cleared;

\echo '== Clearing variant thumbnails (variants of a product)'
WITH cleared AS (
    UPDATE product_variant
       SET thumbnail = NULL,
           updated_at = now()
     WHERE product_id IS NOT NULL
       AND thumbnail IS NOT NULL
    RETURNING 1
)
SELECT count(*) AS variant_thumbnails_cleared FROM cleared;

-- ACCESS EXCLUSIVE on the link table from here to the end (milliseconds); it waits for
-- reads of that table already running, at most lock_timeout.
DROP INDEX safeops_purge_link_image_id;

\echo '== Counts AFTER the purge (all must be 0)'
SELECT 'after' AS stage,
       (SELECT count(*) FROM image) AS images,
       (SELECT count(*) FROM product_variant_product_image) AS variant_links,
       (SELECT count(*) FROM product WHERE thumbnail IS NOT NULL) AS product_thumbnails,
       (SELECT count(*) FROM product_variant
         WHERE product_id IS NOT NULL AND thumbnail IS NOT NULL) AS variant_thumbnails;

\echo '== As shipped, the next line rolls everything back. Edit it to COMMIT; to keep the purge.'
ROLLBACK;
