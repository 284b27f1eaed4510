"""The media pipeline's @task steps, one module per phase, each with the SQL it runs.

Scope ("every image reference"): all ``image`` rows (soft-deleted too), all
``product_variant_product_image`` rows (each points at an image),
``product.thumbnail`` and ``product_variant.thumbnail`` of variants that belong
to a product. Copies in cart/order/inventory tables are history and out of scope.

- ``snapshot``: render every product's references and write them to a snapshot file;
- ``loaded``: a snapshot file against the live rows, streamed or loaded into
  temp tables (shared by verify, purge, restore and refs);
- ``verify``: is a snapshot file whole, ours, unedited and equal to the live rows;
- ``purge``: plan and apply the purge (lock, prove, delete, audit);
- ``restore``: plan and apply the restore (insert what the snapshot holds);
- ``refs``: the ImageRef migration (plan, copy, write) and uploads;
- ``objects``: questions about, and verified writes of, the files in S3.

Each task opens its own connection and transaction, so a retry after a
dropped connection starts clean; refusals are never retried.
"""
