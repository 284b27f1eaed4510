"""The reset itself: ``apply-site-reset`` locks the site, re-checks the guard,
deletes the structure with each DELETE digesting the rows it removed, and proves
the result is the approved plan and nothing more; ``verify-site-reset`` counts
what is left."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, transaction
from safeops.core.errors import ResetNotAllowed, SafeopsError, SnapshotInvalid
from safeops.core.models import Approval, Plan
from safeops.core.settings import describe_target, get_settings
from tasks.common.audit import applied_counts, write_audit
from tasks.common.guards import FileCheck, refuse_if_plan_moved
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.common.snapshots import open_snapshot, refuse_foreign
from tasks.site.check import eligibility, published_posts, require_site
from tasks.site.kept_rows import KeptRowsGuard, expected_writes
from tasks.site.snapshot import SITE_FORMAT
from tasks.site.structure import (
    AUTHORS,
    BY_NAME,
    CATEGORIES,
    CATEGORY_LINKS_OF_POSTS,
    CONTENT_TYPES,
    POST_EFFECTS,
    Kind,
    Parts,
    digest_sql,
    plan_of_parts,
    row_hash,
    tune_for_site,
)


def lock_site_for_reset(conn: Connection, site_id: str) -> None:
    """Close the check-then-delete race of the original feature.

    ``FOR UPDATE`` on the site row conflicts with the ``FOR KEY SHARE`` lock
    that every INSERT of content for this site takes through its foreign key,
    so no new post (published or not) can appear until we commit; ``FOR
    UPDATE`` on the site's existing content rows makes a concurrent
    ``UPDATE ... SET status = 'published'`` wait (or makes us wait for one in
    flight). The published count is then re-read by a fresh READ COMMITTED
    statement, which sees every publish that committed before the locks.

    The rows the reset deletes that others can point at (its categories, authors
    and content types) are locked ``FOR UPDATE`` too: a new link, post or child
    term of any site that references one of them takes ``FOR KEY SHARE`` on it, so
    none can appear between the digests and the deletes. Without this, such a row
    could be changed by the deletes' ON DELETE actions: refused by the table-write
    check where PostgreSQL counts writes, silently where ``track_counts`` is off."""
    tune_for_site(conn)
    p = {"site": site_id}
    conn.execute(text("SELECT 1 FROM sites WHERE id = CAST(:site AS uuid) FOR UPDATE"), p)
    conn.execute(text("SELECT 1 FROM content WHERE site_id = :site FOR UPDATE"), p)
    for referenced in (CATEGORIES, AUTHORS, CONTENT_TYPES):
        conn.execute(text(f"{referenced} FOR UPDATE"), p)


# Kinds an apply changes without deleting them: their rows stay, so no DELETE can
# return them. They are few and locked before the deletes (see lock_changed_rows).
CHANGED_KINDS = ("post_refs", "detached_terms", "site_state")
# Kinds an apply deletes, in dependency order: SEO meta first, so no orphan can
# survive a later failure; links before the pages and categories they point at.
DELETED_KINDS = ("seo_entries", "term_links", "pages", "categories", "authors", "content_types")


def lock_changed_rows(conn: Connection, site_id: str) -> tuple[Parts, dict[str, int]]:
    """Digests of the rows the apply updates (or FK cascades update), read under FOR UPDATE.

    The site row and the site's own content are locked already (lock_site_for_reset),
    but posts of other sites that use this site's authors or content types, and
    terms of any site whose parent is one of its categories, are not: an edit of
    one of them between this read and the deletes would make the digest describe
    rows other than those changed. Locking them here closes that window; a row
    that starts to reference the site afterwards can only add cascade effects,
    which the table-write check then refuses."""
    parts: Parts = {}
    effects: dict[str, int] = {}
    for name in CHANGED_KINDS:
        kind = BY_NAME[name]
        locked = f"(SELECT t.* FROM {kind.table} t WHERE {kind.where} FOR UPDATE OF t)"
        extra = POST_EFFECTS if name == "post_refs" else ""
        row = conn.execute(text(digest_sql(kind, locked, "true", extra)), {"site": site_id}).one()
        parts[name] = [int(row[0]), str(row[1])]
        if name == "post_refs":
            effects["posts_losing_author"] = int(row[2])
            effects["posts_losing_content_type"] = int(row[3])
    effects["posts_losing_category_links"] = int(
        conn.execute(CATEGORY_LINKS_OF_POSTS, {"site": site_id}).scalar_one()
    )
    return parts, effects


def _deleting_digest_sql(kind: Kind) -> str:
    """The DELETE itself returns what the plan hash covers: the proof that exactly the
    approved rows went is read off the rows that did go, not off a separate SELECT
    that a concurrent edit could make disagree with them. Each deleted row returns
    only its hash, the very expression digest_sql sums over a kind's rows, so no
    copy of the deleted rows is kept for the sum (a third of the digest's cost)."""
    return (
        f"WITH gone AS (DELETE FROM {kind.table} t WHERE {kind.where} "
        f"RETURNING {row_hash(kind)} AS h) "
        "SELECT count(*), COALESCE(sum(h), 0)::text FROM gone"
    )


# The posts that lose their author or content type, released in one set-based UPDATE
# before the authors and content types go: their ON DELETE SET NULL would otherwise
# run one UPDATE per deleted author or content type (and write a post losing both
# twice), which was 1.3 s of a 1.9 s reset at 33k authors; the FK actions then find
# nothing left to do. Posts only (post_refs): a page of another site pointing at
# one of these authors is still updated by the FK action, which the table-write
# check refuses as before.
RELEASE_POSTS_SQL = text(
    f"""UPDATE content t SET
      author_id = CASE WHEN t.author_id IN ({AUTHORS}) THEN NULL ELSE t.author_id END,
      content_type_id = CASE WHEN t.content_type_id IN ({CONTENT_TYPES})
                             THEN NULL ELSE t.content_type_id END
    WHERE {BY_NAME["post_refs"].where}"""
)


def delete_digested(conn: Connection, site_id: str) -> Parts:
    """Delete the site's structure; [count, digest] of every deleted kind."""
    p = {"site": site_id}
    parts: Parts = {}
    for name in DELETED_KINDS:
        if name == "term_links":
            conn.execute(
                text(
                    f"UPDATE terms t SET parent_id = NULL WHERE {BY_NAME['detached_terms'].where}"
                ),
                p,
            )
        if name == "authors":
            conn.execute(RELEASE_POSTS_SQL, p)
        n, digest = conn.execute(text(_deleting_digest_sql(BY_NAME[name])), p).one()
        parts[name] = [int(n), str(digest)]
    conn.execute(
        text(
            "UPDATE sites SET active_blueprint_version = NULL, setup_status = 'draft' "
            "WHERE id = :site"
        ),
        p,
    )
    return parts


def delete_structure(conn: Connection, site_id: str) -> dict[str, int]:
    """Row counts of delete_digested, per deleted kind."""
    parts = delete_digested(conn, site_id)
    return {name: int(parts[name][0]) for name in DELETED_KINDS}


LEFTOVERS_SQL = text("""
SELECT
  (SELECT count(*) FROM terms WHERE site_id = :site AND type = 'category'),
  (SELECT count(*) FROM authors WHERE site_id = :site),
  (SELECT count(*) FROM content WHERE site_id = :site AND type = 'page'),
  (SELECT count(*) FROM content_type WHERE site_id = :site),
  (SELECT count(*) FROM seo_meta s WHERE s.site_id = :site AND (
     (s.entity_type = 'term' AND NOT EXISTS (SELECT 1 FROM terms x WHERE x.id = s.entity_id))
     OR (s.entity_type = 'author' AND NOT EXISTS (SELECT 1 FROM authors x WHERE x.id = s.entity_id))
     OR (s.entity_type = 'content' AND NOT EXISTS (SELECT 1 FROM content x
                                                   WHERE x.id = s.entity_id)))),
  (SELECT count(*) FROM content WHERE site_id = :site AND type = 'post'
     AND status = 'published')
""")


def leftovers(conn: Connection, site_id: str) -> dict[str, int]:
    tune_for_site(conn)
    row = conn.execute(LEFTOVERS_SQL, {"site": site_id}).one()
    return dict(
        zip(
            (
                "categories",
                "authors",
                "pages",
                "content_types",
                "orphan_seo_entries",
                "published_posts",
            ),
            (int(v) for v in row),
            strict=True,
        )
    )


def _require_approved_snapshot(
    conn: Connection, uri: str, site_id: str, approved_plan_hash: str
) -> None:
    """The summary alone names what the undo point is for: its rows were proven against
    it by the verify, and FileCheck proves the file is still those verified bytes."""
    with open_snapshot(uri, SITE_FORMAT) as reader:
        refuse_foreign(reader, fingerprint(conn), force=False)
        summary = reader.summary
    if summary.get("siteId") != site_id or summary.get("planHash") != approved_plan_hash:
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the plan-hash check: it records site "
            f"{summary.get('siteId')} and plan "
            f"{str(summary.get('planHash'))[:16]}…, the approved reset is of "
            f"site {site_id} with plan {approved_plan_hash[:16]}…; nothing "
            "changed."
        )


def _reset_locked(
    conn: Connection, site_id: str, target: str, file_check: FileCheck, approved_plan_hash: str
) -> Plan:
    """Delete under the site's locks; the plan of what actually changed, proven approved."""
    require_site(conn, site_id)
    lock_site_for_reset(conn, site_id)
    published = published_posts(conn, site_id)
    if published:
        raise ResetNotAllowed(
            eligibility(published)["reason"] + " (published since the check; nothing changed)"
        )
    kept = KeptRowsGuard(conn, site_id)
    changed, effects = lock_changed_rows(conn, site_id)
    file_check.require_unchanged()
    deleted = delete_digested(conn, site_id)
    plan = plan_of_parts(
        site_id, {**changed, **deleted}, effects, describe_target(target), str(fingerprint(conn))
    )
    refuse_if_plan_moved(
        plan, approved_plan_hash, "the site's structure changed since it was approved"
    )
    kept.require_only(expected_writes(plan.counts))
    left = leftovers(conn, site_id)
    if any(left.values()):
        raise SafeopsError(f"Reset left rows behind ({left}); rolled back, nothing changed.")
    return plan


@task(name="apply-site-reset", **TRANSIENT_RETRIES)
def apply_site_reset(
    target: str,
    site_id: str,
    snapshot_uri: str,
    approved_plan_hash: str,
    verified_sha256: str,
    approval: Approval,
    started_at: datetime,
) -> dict[str, int]:
    """One READ COMMITTED transaction that deletes exactly the approved rows or nothing.

    The undo point is not re-read into the database: ``verified_sha256`` is the
    hash of the whole file that verify_site_snapshot proved, before the approval,
    to be the bytes the snapshot's consistent view rendered (whose plan is the
    approved one), and FileCheck hashes the stored file
    again (in a thread, while the SQL runs) so that any edit since, summary or
    body, refuses before the first delete.

    The plan hash is not re-derived by a separate pass either: each DELETE
    returns the rows it removed and is digested the way the plan digests them, the
    few updated rows are digested under row locks, and the hash of those parts
    must be the approved one, or the transaction rolls back. So the hash binds the
    rows that really went, not a read that merely preceded them. Per-table write
    counts of this transaction then prove nothing else changed anywhere."""
    flow_run_id = current_flow_run_id()
    file_check = FileCheck(snapshot_uri, verified_sha256)
    try:
        with transaction(engine_for(target), lock_timeout_s=get_settings().lock_timeout_s) as conn:
            done = applied_counts(conn, flow_run_id, "reset-site-structure", approved_plan_hash)
            if done is not None:
                return done
            _require_approved_snapshot(conn, snapshot_uri, site_id, approved_plan_hash)
            plan = _reset_locked(conn, site_id, target, file_check, approved_plan_hash)
            # These counts are the statements' own, already bound by the approved hash:
            # comparing them with the plan (require_as_planned) would compare it with itself.
            deleted = {k: plan.counts[k] for k in DELETED_KINDS}
            write_audit(
                conn,
                flow_run_id=flow_run_id,
                flow_name="reset-site-structure",
                target=describe_target(target),
                plan_hash=plan.plan_hash,
                approval=approval,
                counts={"site_id": site_id, "planned": plan.counts, "deleted": deleted},
                snapshot_uri=snapshot_uri,
                started_at=started_at,
            )
    finally:
        file_check.cancel()
    return deleted


@task(name="verify-site-reset", **TRANSIENT_RETRIES)
def verify_site_reset(target: str, site_id: str) -> dict[str, int]:
    with transaction(engine_for(target), read_only=True) as conn:
        return leftovers(conn, site_id)
