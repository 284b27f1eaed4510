"""The proof that a reset wrote nothing but what its plan names: this transaction's
own per-table write counts against the plan's, or, on a server with track_counts
off, a checksum of the rows a reset must keep, taken before and after."""

from __future__ import annotations

from sqlalchemy import Connection, text

from safeops.core.errors import SafeopsError
from tasks.site.structure import BY_NAME

KEPT_CHECKSUM_SQL = text("""
SELECT md5(concat_ws('|',
  (SELECT md5(COALESCE(string_agg(json_build_object('id', id, 'type', type, 'status', status,
        'title', title, 'slug', slug, 'body', body, 'published_at', published_at,
        'scheduled_for', scheduled_for, 'created_at', created_at)::text, ',' ORDER BY id), ''))
     FROM content WHERE site_id = :site AND type = 'post'),
  (SELECT md5(COALESCE(string_agg(json_build_object('id', id, 'name', name, 'slug', slug)::text,
        ',' ORDER BY id), '')) FROM terms WHERE site_id = :site AND type = 'tag'),
  (SELECT md5(COALESCE(string_agg(ct.content_id::text || ct.term_id::text, ','
        ORDER BY ct.content_id, ct.term_id), ''))
     FROM content_terms ct JOIN content c ON c.id = ct.content_id
     JOIN terms tg ON tg.id = ct.term_id
     WHERE c.site_id = :site AND c.type = 'post' AND tg.type = 'tag'),
  (SELECT md5(COALESCE(string_agg(s::text, ',' ORDER BY s.id), '')) FROM seo_meta s
     WHERE s.site_id = :site AND NOT (
       (s.entity_type = 'term' AND s.entity_id IN (SELECT id FROM terms
            WHERE site_id = :site AND type = 'category'))
       OR (s.entity_type = 'author' AND s.entity_id IN (SELECT id FROM authors
            WHERE site_id = :site))
       OR (s.entity_type = 'content' AND s.entity_id IN (SELECT id FROM content
            WHERE site_id = :site AND type = 'page')))),
  (SELECT md5(COALESCE(string_agg(b::text, ',' ORDER BY b.id), '')) FROM site_blueprint b
     WHERE b.site_id = :site),
  (SELECT md5(COALESCE(string_agg(a::text, ',' ORDER BY a.id), '')) FROM ai_jobs a
     WHERE a.site_id = :site),
  (SELECT md5(COALESCE(string_agg(m::text, ',' ORDER BY m.id), '')) FROM media m
     WHERE m.site_id = :site),
  (SELECT md5(COALESCE(string_agg(d::text, ',' ORDER BY d.id), '')) FROM domains d
     WHERE d.site_id = :site),
  (SELECT md5(COALESCE(string_agg(x::text, ','), '')) FROM site_settings x
     WHERE x.site_id = :site),
  (SELECT md5(COALESCE(string_agg(u::text, ',' ORDER BY u.id), '')) FROM users u),
  (SELECT json_build_object('name', name, 'slug', slug, 'site_type', site_type,
        'created_at', created_at)::text FROM sites WHERE id = :site)
))
""")


def kept_checksum(conn: Connection, site_id: str) -> str:
    """What a reset must leave alone, as one digest (SEO rows of deleted entities excluded
    from the 'before' value by definition, so before == after proves nothing else went).

    Only KeptRowsGuard's fallback for servers with track_counts off: it reads every kept
    row of the site twice and sees neither other tables nor other sites."""
    return str(conn.execute(KEPT_CHECKSUM_SQL, {"site": site_id}).scalar_one())


Writes = dict[str, tuple[int, int, int]]  # table -> (inserted, updated, deleted)
NO_WRITES = (0, 0, 0)

# This transaction's own row writes per table, FK cascades and triggers included.
# safeops' audit schema and temp tables are ours; everything else is the CMS's.
TABLE_WRITES_SQL = text(r"""
SELECT relid::regclass::text, n_tup_ins, n_tup_upd, n_tup_del
FROM pg_stat_xact_user_tables
WHERE schemaname <> 'safeops' AND schemaname NOT LIKE 'pg\_temp\_%'""")


def table_writes(conn: Connection) -> Writes:
    return {str(name): (int(i), int(u), int(d)) for name, i, u, d in conn.execute(TABLE_WRITES_SQL)}


def expected_writes(counts: dict[str, int]) -> Writes:
    """Row writes a reset of an approved plan makes, table by table (cms.sql's ON DELETE
    actions): deleting pages and categories cascades nothing, because their links
    and SEO rows went first and subcategories go in the same statement; the posts
    that lose their author or content type are updated once each, by the apply
    (reset.RELEASE_POSTS_SQL), before those go, so their ON DELETE SET NULL finds
    nothing to write; the site row is updated once."""
    b = BY_NAME
    return {
        b["seo_entries"].table: (0, 0, counts["seo_entries"]),
        b["term_links"].table: (0, 0, counts["term_links"]),
        b["pages"].table: (
            0,
            counts["post_refs"],
            counts["pages"],
        ),
        b["categories"].table: (0, counts["detached_terms"], counts["categories"]),
        b["authors"].table: (0, 0, counts["authors"]),
        b["content_types"].table: (0, 0, counts["content_types"]),
        b["site_state"].table: (0, 1, 0),
    }


class KeptRowsGuard:
    """Proves a reset wrote nothing but what its plan names, in O(tables).

    PostgreSQL counts each transaction's inserted, updated and deleted rows per
    table, FK cascades and triggers included, and only its own: unlike a checksum
    of the rows a reset must keep, the counts cover every table (users, and
    tables safeops has never heard of) and cannot be moved by other sessions'
    concurrent edits. The counts of a backend's earlier transactions may linger
    unflushed in the same view, so the guard compares differences from a reading
    taken before the first write. With track_counts off the view stays at zero;
    the guard then falls back to the checksum of the kept rows before and after."""

    def __init__(self, conn: Connection, site_id: str) -> None:
        self._conn, self._site_id = conn, site_id
        self.counted = str(conn.execute(text("SHOW track_counts")).scalar_one()) == "on"
        self._before = table_writes(conn) if self.counted else {}
        self._kept = "" if self.counted else kept_checksum(conn, site_id)

    def require_only(self, expected: Writes) -> None:
        """Raise SafeopsError (the transaction rolls back) on any write beyond ``expected``."""
        # Deferred constraint triggers would otherwise write at COMMIT, after this check.
        self._conn.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        if not self.counted:
            if kept_checksum(self._conn, self._site_id) != self._kept:
                raise SafeopsError("Reset would have changed rows it must keep; rolled back.")
            return
        after = table_writes(self._conn)
        wrong = []
        for table in sorted(after.keys() | expected.keys()):
            before = self._before.get(table, NO_WRITES)
            did = tuple(a - b for a, b in zip(after.get(table, NO_WRITES), before, strict=True))
            if did != expected.get(table, NO_WRITES):
                wrong.append(
                    f"{table} inserted/updated/deleted {'/'.join(map(str, did))}, "
                    f"planned {'/'.join(map(str, expected.get(table, NO_WRITES)))}"
                )
        if wrong:
            raise SafeopsError(
                "Reset would have changed rows it must keep; rolled back, "
                "nothing changed (" + "; ".join(wrong) + ")."
            )
