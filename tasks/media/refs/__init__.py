"""The ImageRef migration (plan, copy, write refs) and uploads, one module per step.

Source images (live ``image`` rows, or a verified media snapshot after a
purge) are mapped to bucket keys, HEAD-ed, and classified:

- ``copy``: server-side ``copy_object`` to ``products/<id>/<stamp>-<uuid4><ext>``;
- ``reuse``: an earlier run copied it but crashed before writing the ref; the
  copy is found by listing ``products/<id>/`` and reading the
  ``safeops-source-image-id`` / ``safeops-source-etag`` metadata every copy
  carries, and adopted instead of copied again;
- ``already_done``: the product already has a ref with this ``sourceImageId``
  whose etag matches the source object;
- ``skipped_<reason>``: reported with counts and the first few ids, never
  fatal for the others.

All S3 calls of a step run in ONE task through a bounded thread pool (one
Prefect task per image would swamp the API). Refs are written in short
transactions of ``WRITE_BATCH`` products, each locking its product rows,
merging with what is there now and writing only ``metadata.media``.

- ``plan``: read the sources, classify, hash (task ``plan-media-refs``);
- ``copy``: re-derive, refuse drift, copy concurrently (task ``copy-media-objects``);
- ``write``: merge and write ``metadata.media`` (task ``write-media-refs``);
- ``upload``: files from the CLI as new refs of one product;
- ``products``: the product rows' SQL (read, lock, write) and ``metadata.media`` parsing;
- ``store``: the bucket, Medusa's file_url and the S3 concurrency, from settings;
- ``report``: the planned/done counts table.
"""
