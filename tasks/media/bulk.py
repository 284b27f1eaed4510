"""Transaction-local settings for the media pipeline's catalog-sized statements.

Apart from the snapshot so that the plan (``plan``), which the snapshot computes
in its own view, and the snapshot can both use them without importing each other.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# Bulk statements over the whole catalog: JIT compilation costs seconds per
# statement here and buys nothing for row_to_json/string_agg work; the sorts
# stay in memory instead of spilling at catalog scale; and the planner's default
# price for passing rows up from parallel workers keeps it from ever sharing the
# rendering and digests (3.3 s instead of 4.8 s for the 1M-image snapshot query
# on two cores). Parallel workers stay bounded by max_parallel_workers_per_gather.
BULK_SETTINGS = (
    "SET LOCAL jit = off",
    "SET LOCAL work_mem = '64MB'",
    "SET LOCAL parallel_tuple_cost = 0.001",
    "SET LOCAL parallel_setup_cost = 10",
)


def tune_for_bulk(conn: Connection) -> None:
    """Transaction-local settings for catalog-sized statements."""
    for statement in BULK_SETTINGS:
        conn.execute(text(statement))
