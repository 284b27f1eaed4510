"""Putting a reset site back from its snapshot: ``plan-site-restore`` counts what
would go back, what is present already and what conflicts; ``apply-site-restore``
inserts the missing rows with their ids and re-links what the reset detached."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.errors import RestoreConflict, SafeopsError
from safeops.core.models import Approval, Plan, plan_hash_of
from safeops.core.settings import describe_target, get_settings
from tasks.common.audit import applied_counts, write_audit
from tasks.common.guards import refuse_if_plan_moved
from tasks.common.register import trace_of
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.common.snapshots import open_snapshot, refuse_foreign
from tasks.site.check import parse_site_id, require_site, site_row
from tasks.site.snapshot import SITE_FORMAT, load_verified

CONFLICTS_SQL = text("""
SELECT
  (SELECT count(*) FROM _snap_content_types s JOIN content_type x
     ON x.site_id = s.site_id AND x.key = s.key AND x.id <> s.id),
  (SELECT count(*) FROM _snap_authors s JOIN authors x
     ON x.site_id = s.site_id AND x.slug = s.slug AND x.id <> s.id),
  (SELECT count(*) FROM _snap_categories s JOIN terms x
     ON x.site_id = s.site_id AND x.type = s.type AND x.slug = s.slug AND x.id <> s.id),
  (SELECT count(*) FROM _snap_pages s JOIN content x
     ON x.site_id = s.site_id AND x.type = s.type AND x.slug = s.slug AND x.id <> s.id),
  (SELECT count(*) FROM _snap_seo_entries s JOIN seo_meta x
     ON x.entity_type = s.entity_type AND x.entity_id = s.entity_id AND x.id <> s.id)
""")

# Snapshot categories that can go back: free (id absent, slug not taken) and whose parent
# exists or goes back too. A child of a skipped category is skipped with it, as its
# ON DELETE CASCADE parent link would have it; inserting it would break the FK.
RESTORABLE_CATEGORIES = """
WITH RECURSIVE free AS (
  SELECT s.id, s.parent_id FROM _snap_categories s
  WHERE NOT EXISTS (SELECT 1 FROM terms x WHERE x.id = s.id
                    OR (x.site_id = s.site_id AND x.type = s.type AND x.slug = s.slug))
), ok AS (
  SELECT f.id FROM free f
  WHERE f.parent_id IS NULL OR EXISTS (SELECT 1 FROM terms p WHERE p.id = f.parent_id)
  UNION
  SELECT f.id FROM free f JOIN ok ON f.parent_id = ok.id
)"""
SUBCATEGORIES_BLOCKED_SQL = text(
    RESTORABLE_CATEGORIES
    + """
SELECT (SELECT count(*) FROM free) - (SELECT count(*) FROM ok)"""
)

PRESENT_SQL = text("""
SELECT
  (SELECT count(*) FROM _snap_content_types s JOIN content_type x USING (id)),
  (SELECT count(*) FROM _snap_authors s JOIN authors x USING (id)),
  (SELECT count(*) FROM _snap_categories s JOIN terms x USING (id)),
  (SELECT count(*) FROM _snap_pages s JOIN content x USING (id)),
  (SELECT count(*) FROM _snap_seo_entries s JOIN seo_meta x USING (id))
""")

NAMES = ("content_types", "authors", "categories", "pages", "seo_entries")


def restore_conflicts(conn: Connection) -> dict[str, int]:
    """Rows whose unique key was taken since the reset, plus the subcategories that
    cannot go back because their parent category is one of them."""
    out = dict(zip(NAMES, (int(v) for v in conn.execute(CONFLICTS_SQL).one()), strict=True))
    out["subcategories"] = int(conn.execute(SUBCATEGORIES_BLOCKED_SQL).scalar_one())
    return out


def restore_present(conn: Connection) -> dict[str, int]:
    return dict(zip(NAMES, (int(v) for v in conn.execute(PRESENT_SQL).one()), strict=True))


def _insert_missing(conn: Connection, table: str, temp: str, unique_on: str) -> int:
    """Rows of the snapshot whose id is absent and whose unique key is free."""
    return int(
        conn.execute(
            text(
                f"INSERT INTO {table} SELECT s.* FROM {temp} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.id = s.id) "
                f"AND NOT EXISTS (SELECT 1 FROM {table} x WHERE {unique_on})"
            )
        ).rowcount
    )


def insert_structure(conn: Connection, site_id: str) -> dict[str, int]:
    """Put rows back with their ids; FK checks run at statement end, so parents
    and children of one table go in one statement."""
    if not site_row(conn, site_id, lock=True):
        raise SafeopsError(f"Site {site_id} no longer exists; nothing to restore into.")
    out = {
        "content_types": _insert_missing(
            conn, "content_type", "_snap_content_types", "x.site_id = s.site_id AND x.key = s.key"
        ),
        "authors": _insert_missing(
            conn, "authors", "_snap_authors", "x.site_id = s.site_id AND x.slug = s.slug"
        ),
        "categories": int(
            conn.execute(
                text(
                    RESTORABLE_CATEGORIES + " INSERT INTO terms SELECT s.* FROM _snap_categories s "
                    "WHERE s.id IN (SELECT id FROM ok)"
                )
            ).rowcount
        ),
    }
    # A page's author or content type skipped as a conflict: the page goes back without
    # it, as its ON DELETE SET NULL link would have it; inserting it would break the FK.
    conn.execute(
        text(
            "UPDATE _snap_pages s SET author_id = NULL WHERE s.author_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM authors a WHERE a.id = s.author_id)"
        )
    )
    conn.execute(
        text(
            "UPDATE _snap_pages s SET content_type_id = NULL WHERE s.content_type_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM content_type x WHERE x.id = s.content_type_id)"
        )
    )
    out["pages"] = _insert_missing(
        conn,
        "content",
        "_snap_pages",
        "x.site_id = s.site_id AND x.type = s.type AND x.slug = s.slug",
    )
    out["seo_entries"] = int(
        conn.execute(
            text(
                "INSERT INTO seo_meta SELECT s.* FROM _snap_seo_entries s "
                "WHERE NOT EXISTS (SELECT 1 FROM seo_meta x WHERE x.id = s.id "
                "   OR (x.entity_type = s.entity_type AND x.entity_id = s.entity_id)) "
                "AND ((s.entity_type = 'term' AND EXISTS (SELECT 1 FROM terms e "
                "     WHERE e.id = s.entity_id))"
                " OR (s.entity_type = 'author' AND EXISTS (SELECT 1 FROM authors e "
                "     WHERE e.id = s.entity_id))"
                " OR (s.entity_type = 'content' AND EXISTS (SELECT 1 FROM content e "
                "     WHERE e.id = s.entity_id)))"
            )
        ).rowcount
    )
    out["term_links"] = int(
        conn.execute(
            text(
                "INSERT INTO content_terms SELECT s.* FROM _snap_term_links s "
                "WHERE EXISTS (SELECT 1 FROM content c WHERE c.id = s.content_id) "
                "AND EXISTS (SELECT 1 FROM terms t WHERE t.id = s.term_id) "
                "ON CONFLICT DO NOTHING"
            )
        ).rowcount
    )
    out["post_authors"] = int(
        conn.execute(
            text(
                "UPDATE content c SET author_id = s.author_id FROM _snap_post_refs s "
                "WHERE c.id = s.id AND c.author_id IS NULL AND s.author_id IS NOT NULL "
                "AND EXISTS (SELECT 1 FROM authors a WHERE a.id = s.author_id)"
            )
        ).rowcount
    )
    out["post_content_types"] = int(
        conn.execute(
            text(
                "UPDATE content c SET content_type_id = s.content_type_id FROM _snap_post_refs s "
                "WHERE c.id = s.id AND c.content_type_id IS NULL AND s.content_type_id IS NOT NULL "
                "AND EXISTS (SELECT 1 FROM content_type x WHERE x.id = s.content_type_id)"
            )
        ).rowcount
    )
    out["tags_reattached"] = int(
        conn.execute(
            text(
                "UPDATE terms t SET parent_id = s.parent_id FROM _snap_detached_terms s "
                "WHERE t.id = s.id AND t.parent_id IS NULL "
                "AND EXISTS (SELECT 1 FROM terms p WHERE p.id = s.parent_id)"
            )
        ).rowcount
    )
    out["site_state"] = int(
        conn.execute(
            text(
                "UPDATE sites x SET active_blueprint_version = s.active_blueprint_version, "
                "setup_status = s.setup_status FROM _snap_site_state s "
                "WHERE x.id = s.id AND x.active_blueprint_version IS NULL "
                "AND (x.active_blueprint_version, x.setup_status) IS DISTINCT FROM "
                "(s.active_blueprint_version, s.setup_status)"
            )
        ).rowcount
    )
    return out


RESTORE_TODO_SQL = text(
    RESTORABLE_CATEGORIES
    + """
SELECT
  (SELECT count(*) FROM _snap_content_types s WHERE NOT EXISTS
     (SELECT 1 FROM content_type x WHERE x.id = s.id OR (x.site_id = s.site_id AND x.key = s.key))),
  (SELECT count(*) FROM _snap_authors s WHERE NOT EXISTS
     (SELECT 1 FROM authors x WHERE x.id = s.id OR (x.site_id = s.site_id AND x.slug = s.slug))),
  (SELECT count(*) FROM ok),
  (SELECT count(*) FROM _snap_pages s WHERE NOT EXISTS
     (SELECT 1 FROM content x WHERE x.id = s.id
        OR (x.site_id = s.site_id AND x.type = s.type AND x.slug = s.slug))),
  (SELECT count(*) FROM _snap_seo_entries s WHERE NOT EXISTS
     (SELECT 1 FROM seo_meta x WHERE x.id = s.id
        OR (x.entity_type = s.entity_type AND x.entity_id = s.entity_id))),
  (SELECT count(*) FROM _snap_term_links s WHERE NOT EXISTS
     (SELECT 1 FROM content_terms x WHERE x.content_id = s.content_id AND x.term_id = s.term_id)),
  (SELECT count(*) FROM _snap_post_refs s JOIN content c ON c.id = s.id
     WHERE (c.author_id IS NULL AND s.author_id IS NOT NULL)
        OR (c.content_type_id IS NULL AND s.content_type_id IS NOT NULL)),
  (SELECT count(*) FROM _snap_site_state s JOIN sites x ON x.id = s.id
     WHERE (x.active_blueprint_version, x.setup_status) IS DISTINCT FROM
           (s.active_blueprint_version, s.setup_status))
"""
)


def restore_todo(conn: Connection) -> dict[str, int]:
    row = conn.execute(RESTORE_TODO_SQL).one()
    return dict(
        zip((*NAMES, "term_links", "post_refs", "site_state"), (int(v) for v in row), strict=True)
    )


def _restore_plan(
    conn: Connection, target: str, reader: Any, uri: str, skip_conflicts: bool, allow_untraced: bool
) -> tuple[str, Plan]:
    site_id, _ = load_verified(conn, uri, reader)
    trace = trace_of(conn, reader, uri, allow_untraced=allow_untraced)
    require_site(conn, site_id)
    todo = restore_todo(conn)
    conflicts = restore_conflicts(conn)
    present = restore_present(conn)
    n_conflicts = sum(conflicts.values())
    if n_conflicts and not skip_conflicts:
        raise RestoreConflict(
            "Refused: the site gained structure that conflicts with the snapshot ("
            + ", ".join(f"{k}={v}" for k, v in conflicts.items() if v)
            + "); remove it or pass skip_conflicts; nothing changed."
        )
    counts = {
        **todo,
        **{f"{k}_already_present": v for k, v in present.items()},
        **{f"{k}_conflicting": v for k, v in conflicts.items()},
    }
    notes = [f"{v} {k} skipped (conflict)" for k, v in conflicts.items() if v]
    database = str(fingerprint(conn))
    plan = Plan(
        kind="restore-site-structure",
        target=describe_target(target),
        counts=counts,
        notes=notes,
        plan_hash=plan_hash_of(
            {"restore-site-structure": counts, "snapshot": reader.actual_sha256},
            database=database,
        ),
    )
    return site_id, trace.mark(plan, database)


@task(name="plan-site-restore", **TRANSIENT_RETRIES)
def plan_site_restore(
    target: str, uri: str, skip_conflicts: bool, allow_untraced: bool = False
) -> tuple[str, str, Plan]:
    with open_snapshot(uri, SITE_FORMAT) as reader, read_snapshot(engine_for(target)) as conn:
        refuse_foreign(reader, fingerprint(conn), force=False)
        site_id, plan = _restore_plan(conn, target, reader, uri, skip_conflicts, allow_untraced)
        return site_id, str(reader.summary.get("siteSlug")), plan


@task(name="apply-site-restore", **TRANSIENT_RETRIES)
def apply_site_restore(
    target: str,
    uri: str,
    skip_conflicts: bool,
    approved_plan_hash: str,
    approval: Approval,
    started_at: datetime,
    allow_untraced: bool = False,
) -> dict[str, int]:
    flow_run_id = current_flow_run_id()
    with (
        open_snapshot(uri, SITE_FORMAT) as reader,
        transaction(engine_for(target), lock_timeout_s=get_settings().lock_timeout_s) as conn,
    ):
        done = applied_counts(conn, flow_run_id, "restore-site-structure", approved_plan_hash)
        if done is not None:
            return done
        refuse_foreign(reader, fingerprint(conn), force=False)
        site_id = str(reader.summary.get("siteId"))
        require_site(conn, parse_site_id(site_id), lock=True)
        _, plan = _restore_plan(conn, target, reader, uri, skip_conflicts, allow_untraced)
        refuse_if_plan_moved(
            plan, approved_plan_hash, "the site changed since the restore was planned"
        )
        restored = insert_structure(conn, site_id)
        write_audit(
            conn,
            flow_run_id=flow_run_id,
            flow_name="restore-site-structure",
            target=describe_target(target),
            plan_hash=plan.plan_hash,
            approval=approval,
            counts={"site_id": site_id, "planned": plan.counts, "restored": restored},
            snapshot_uri=uri,
            started_at=started_at,
        )
    return restored
