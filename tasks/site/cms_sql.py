"""Every SQL statement of the CMS site-structure reset, for one site at a time.

A reset removes a site's blueprint structure: the SEO meta of its categories,
authors and pages; its categories (tags stay), authors, pages and content
types; then resets the site's blueprint state. Each *kind* below names one
set of rows the reset removes or changes, with the same definition used to
plan, to snapshot, to hash and to restore, so the four can never disagree.

Rows are hashed with their full text, so the plan hash changes when a row
that would be deleted is edited, not only when rows come and go: an apply
under an approved hash deletes exactly the rows the snapshot holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, text

from safeops.core.errors import SafeopsError, SnapshotInvalid
from safeops.core.models import Plan, plan_hash_of

SITE_FORMAT = "safeops/cms-site-structure-snapshot"

# Sets of ids the reset works on, as SQL over :site.
CATEGORIES = "SELECT id FROM terms WHERE site_id = :site AND type = 'category'"
AUTHORS = "SELECT id FROM authors WHERE site_id = :site"
PAGES = "SELECT id FROM content WHERE site_id = :site AND type = 'page'"
CONTENT_TYPES = "SELECT id FROM content_type WHERE site_id = :site"


@dataclass(frozen=True)
class Kind:
    """One set of rows the reset deletes (``table`` rows) or changes (``columns``)."""

    name: str
    table: str
    where: str  # over alias t, bound :site
    key: str  # unique text key of a row, over alias t
    columns: tuple[str, ...] = ()  # empty: the whole row is deleted and snapshotted

    def row_expr(self) -> str:
        if not self.columns:
            return "row_to_json(t)"
        return "json_build_object(" + ", ".join(f"'{c}', t.{c}" for c in self.columns) + ")"

    @property
    def temp(self) -> str:
        return f"_snap_{self.name}"


KINDS: tuple[Kind, ...] = (
    Kind("seo_entries", "seo_meta",
         f"(t.entity_type = 'term' AND t.entity_id IN ({CATEGORIES})) "
         f"OR (t.entity_type = 'author' AND t.entity_id IN ({AUTHORS})) "
         f"OR (t.entity_type = 'content' AND t.entity_id IN ({PAGES}))", "t.id::text"),
    Kind("categories", "terms", "t.site_id = :site AND t.type = 'category'", "t.id::text"),
    Kind("authors", "authors", "t.site_id = :site", "t.id::text"),
    Kind("pages", "content", "t.site_id = :site AND t.type = 'page'", "t.id::text"),
    Kind("content_types", "content_type", "t.site_id = :site", "t.id::text"),
    Kind("term_links", "content_terms",
         f"t.term_id IN ({CATEGORIES}) OR t.content_id IN ({PAGES})",
         "t.content_id::text || '/' || t.term_id::text"),
    Kind("post_refs", "content",
         f"t.type = 'post' AND (t.author_id IN ({AUTHORS}) "
         f"OR t.content_type_id IN ({CONTENT_TYPES}))", "t.id::text",
         ("id", "author_id", "content_type_id")),
    Kind("detached_terms", "terms",
         f"t.parent_id IN ({CATEGORIES}) AND NOT (t.site_id = :site AND t.type = 'category')",
         "t.id::text", ("id", "parent_id")),
    Kind("site_state", "sites", "t.id = :site", "t.id::text",
         ("id", "active_blueprint_version", "setup_status")),
)
BY_NAME = {k.name: k for k in KINDS}
# What the original success alert listed.
HEADLINE = ("categories", "authors", "pages", "content_types", "seo_entries")


# Site-sized statements: the kinds select by ``IN (subquery)`` under ORs, which
# PostgreSQL runs as hashed subplans only while the subquery fits in work_mem;
# past that (tens of thousands of categories or authors, or a bloated table's
# estimates) it falls back to rescanning the subquery for every row, which took
# 116 s instead of 2 s for one plan at 100k SEO rows. JIT compilation costs more
# than it saves on these statements.
SITE_SETTINGS = ("SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off")


def tune_for_site(conn: Connection) -> None:
    """Transaction-local settings for statements over a whole site's rows."""
    for statement in SITE_SETTINGS:
        conn.execute(text(statement))


# The key of each kind in its native types: ordering uuids is cheaper than
# ordering their text, and both orders are total (the keys are unique).
_NATIVE_ORDER = {"t.id::text": "t.id",
                 "t.content_id::text || '/' || t.term_id::text": "t.content_id, t.term_id"}


# How a kind's rows are digested for the plan hash. 2 (current): the count and a sum
# of a 64-bit hash of each row's text: no sort and no site-sized string, so a DELETE
# can digest the rows it returns for a fraction of what it costs (the ordered md5
# took 4x the delete itself on 100k SEO rows). A changed row changes the sum unless
# two 64-bit hashes collide (2^-64 per change): a guard against a site that moved,
# not against someone who can write to it anyway. 1: one md5 over the rows' text in
# key order; snapshots written before version 2 record no "planDigest" and keep
# verifying (and restoring) with it.
DIGEST_VERSION = 2


def _row_hash(kind: Kind) -> str:
    """A row's share of a version-2 digest."""
    return f"hashtextextended(({kind.row_expr()})::text, 0)"


def _digest_sql(kind: Kind, source: str, where: str, extra: str = "",
                version: int = DIGEST_VERSION) -> str:
    """SELECT of (count, digest[, extra]) over the kind's rows in ``source``."""
    if version == 1:
        order = _NATIVE_ORDER.get(kind.key, kind.key)
        digest = (f"md5(COALESCE(string_agg(({kind.row_expr()})::text, ',' ORDER BY {order}), "
                  "''))")
    elif version == 2:
        digest = f"COALESCE(sum({_row_hash(kind)}), 0)::text"
    else:
        raise SnapshotInvalid(f"Unknown plan digest version {version!r}.")
    return (f"SELECT count(*), {digest}" + (f", {extra}" if extra else "")
            + f" FROM {source} t WHERE {where}")


Parts = dict[str, list[int | str]]  # kind name -> [row count, md5 of its rows' text]

# What the SET NULL links of a site's authors and content types do to posts (any site).
POST_EFFECTS = (f"count(*) FILTER (WHERE t.author_id IN ({AUTHORS})), "
                f"count(*) FILTER (WHERE t.content_type_id IN ({CONTENT_TYPES}))")
CATEGORY_LINKS_OF_POSTS = text(f"""
    SELECT count(*) FROM content_terms ct JOIN content c ON c.id = ct.content_id
    WHERE c.type = 'post' AND ct.term_id IN ({CATEGORIES})""")


def plan_of_parts(site_id: str, parts: Parts, effects: dict[str, int], target: str,
                  version: int = DIGEST_VERSION) -> Plan:
    """The one place a reset plan and its hash are assembled, whether its parts were
    read from live rows, from a loaded snapshot, or from the rows an apply deleted:
    a hash computed any other way could disagree with saved plans and old snapshots."""
    counts = {k.name: int(parts[k.name][0]) for k in KINDS if k.name != "site_state"}
    counts.update(effects)
    hashed: dict[str, object] = {"reset-site-structure": parts, "site": site_id}
    if version != 1:  # version 1 hashes stay exactly what they were
        hashed["digest"] = version
    return Plan(kind="reset-site-structure", target=target, counts=counts,
                plan_hash=plan_hash_of(hashed))


def post_effects(conn: Connection, site_id: str) -> dict[str, int]:
    """Posts the reset changes without deleting them (counts shown before approval)."""
    losing_author, losing_type = conn.execute(text(
        f"SELECT {POST_EFFECTS} FROM content t WHERE {BY_NAME['post_refs'].where}"),
        {"site": site_id}).one()
    links = conn.execute(CATEGORY_LINKS_OF_POSTS, {"site": site_id}).scalar_one()
    state = conn.execute(text(
        "SELECT count(*) FROM sites WHERE id = CAST(:site AS uuid) AND "
        "(active_blueprint_version, setup_status) IS DISTINCT FROM (NULL, 'draft')"),
        {"site": site_id}).scalar_one()
    return {"posts_losing_author": int(losing_author),
            "posts_losing_content_type": int(losing_type),
            "posts_losing_category_links": int(links),
            # 1 while the blueprint state still has to go back to draft: with it, an
            # all-zero plan means the site is reset already and there is nothing to do.
            "site_state_to_reset": int(state)}


def _plan_from(conn: Connection, site_id: str, source_of: dict[str, tuple[str, str]],
               target: str, version: int = DIGEST_VERSION) -> Plan:
    parts: Parts = {}
    for kind in KINDS:
        source, where = source_of[kind.name]
        n, digest = conn.execute(text(_digest_sql(kind, source, where, version=version)),
                                 {"site": site_id}).one()
        parts[kind.name] = [int(n), str(digest)]
    effects = post_effects(conn, site_id) if source_of is LIVE else {}
    return plan_of_parts(site_id, parts, effects, target, version)


LIVE: dict[str, tuple[str, str]] = {k.name: (k.table, k.where) for k in KINDS}
SNAPSHOT: dict[str, tuple[str, str]] = {k.name: (k.temp, "true") for k in KINDS}


def reset_plan(conn: Connection, site_id: str, target: str) -> Plan:
    tune_for_site(conn)
    return _plan_from(conn, site_id, LIVE, target)


def snapshot_plan_hash(conn: Connection, site_id: str,
                       version: int = DIGEST_VERSION) -> tuple[str, dict[str, int]]:
    """The plan hash recomputed from a loaded snapshot (must equal the recorded one),
    with the digest version the snapshot was written with."""
    plan = _plan_from(conn, site_id, SNAPSHOT, "", version)
    return plan.plan_hash, plan.counts


# ---------------------------------------------------------------- site and guard

def site_row(conn: Connection, site_id: str, lock: bool = False) -> tuple[str, str] | None:
    """(slug, name) of the site; FOR UPDATE also blocks new content for it (FK key-share)."""
    row = conn.execute(text("SELECT slug, name FROM sites WHERE id = CAST(:site AS uuid)"
                            + (" FOR UPDATE" if lock else "")), {"site": site_id}).one_or_none()
    return (row[0], row[1]) if row else None


def published_posts(conn: Connection, site_id: str) -> int:
    return int(conn.execute(text(
        "SELECT count(*) FROM content WHERE site_id = :site AND type = 'post' "
        "AND status = 'published'"), {"site": site_id}).scalar_one())


def lock_site_for_reset(conn: Connection, site_id: str) -> None:
    """Close the check-then-delete race of the original feature.

    ``FOR UPDATE`` on the site row conflicts with the ``FOR KEY SHARE`` lock
    that every INSERT of content for this site takes through its foreign key,
    so no new post (published or not) can appear until we commit; ``FOR
    UPDATE`` on the site's existing content rows makes a concurrent
    ``UPDATE ... SET status = 'published'`` wait (or makes us wait for one in
    flight). The published count is then re-read by a fresh READ COMMITTED
    statement, which sees every publish that committed before the locks."""
    tune_for_site(conn)
    conn.execute(text("SELECT 1 FROM sites WHERE id = CAST(:site AS uuid) FOR UPDATE"),
                 {"site": site_id})
    conn.execute(text("SELECT 1 FROM content WHERE site_id = :site FOR UPDATE"),
                 {"site": site_id})


# ---------------------------------------------------------------- snapshot

def stream_snapshot_docs(conn: Connection, site_id: str) -> Iterator[tuple[str, str]]:
    """(kind, one-line JSON document) for every row the reset removes or changes."""
    tune_for_site(conn)
    for kind in KINDS:
        statement = text(
            f"SELECT json_build_object('kind', '{kind.name}', 'row', {kind.row_expr()})::text "
            f"FROM {kind.table} t WHERE {kind.where} ORDER BY {kind.key}")
        result = conn.execute(statement.execution_options(stream_results=True, yield_per=1000),
                              {"site": site_id})
        for (doc,) in result:
            yield kind.name, doc


def load_snapshot(conn: Connection, documents: Iterator[bytes], uri: str) -> dict[str, int]:
    """Copy the documents into temp tables shaped like the live tables."""
    tune_for_site(conn)
    conn.execute(text("CREATE TEMP TABLE _snap_doc (doc text NOT NULL) ON COMMIT DROP"))
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy("COPY _snap_doc (doc) FROM STDIN") as copy:  # type: ignore[union-attr]
        for doc in documents:
            copy.write_row((doc.decode("utf-8", errors="replace"),))
    try:
        with conn.begin_nested():
            # Each document is parsed once, into jsonb (OFFSET 0 keeps the cast
            # from being inlined into both extractions, which would parse twice).
            conn.execute(text("CREATE TEMP TABLE _snap_json ON COMMIT DROP AS "
                              "SELECT j->>'kind' AS kind, j->'row' AS row "
                              "FROM (SELECT doc::jsonb AS j FROM _snap_doc OFFSET 0) d"))
            for kind in KINDS:
                cols = ", ".join(f"r.{c}" for c in kind.columns) if kind.columns else "r.*"
                conn.execute(text(
                    f"CREATE TEMP TABLE {kind.temp} ON COMMIT DROP AS SELECT {cols} "
                    f"FROM _snap_json j, jsonb_populate_record(NULL::{kind.table}, j.row) r "
                    f"WHERE j.kind = '{kind.name}'"))
            unknown = conn.execute(text(
                "SELECT count(*) FROM _snap_json WHERE kind <> ALL(:kinds)"),
                {"kinds": [k.name for k in KINDS]}).scalar_one()
    except Exception as exc:
        raise SnapshotInvalid(f"Snapshot {uri} failed the format check: its documents do not "
                              f"fit the CMS tables ({str(exc).splitlines()[0]})") from None
    if unknown:
        raise SnapshotInvalid(f"Snapshot {uri} failed the format check: {unknown} document(s) "
                              "of unknown kind")
    return {k.name: int(conn.execute(text(f"SELECT count(*) FROM {k.temp}")).scalar_one())
            for k in KINDS}


# ---------------------------------------------------------------- apply

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
        row = conn.execute(text(_digest_sql(kind, locked, "true", extra)),
                           {"site": site_id}).one()
        parts[name] = [int(row[0]), str(row[1])]
        if name == "post_refs":
            effects["posts_losing_author"] = int(row[2])
            effects["posts_losing_content_type"] = int(row[3])
    effects["posts_losing_category_links"] = int(
        conn.execute(CATEGORY_LINKS_OF_POSTS, {"site": site_id}).scalar_one())
    return parts, effects


def _deleting_digest_sql(kind: Kind) -> str:
    """The DELETE itself returns what the plan hash covers: the proof that exactly the
    approved rows went is read off the rows that did go, not off a separate SELECT
    that a concurrent edit could make disagree with them. Each deleted row returns
    only its hash, the very expression _digest_sql sums over a kind's rows, so no
    copy of the deleted rows is kept for the sum (a third of the digest's cost)."""
    return (f"WITH gone AS (DELETE FROM {kind.table} t WHERE {kind.where} "
            f"RETURNING {_row_hash(kind)} AS h) "
            "SELECT count(*), COALESCE(sum(h), 0)::text FROM gone")


def delete_digested(conn: Connection, site_id: str) -> Parts:
    """Delete the site's structure; [count, digest] of every deleted kind."""
    p = {"site": site_id}
    parts: Parts = {}
    for name in DELETED_KINDS:
        if name == "term_links":
            conn.execute(text(f"UPDATE terms t SET parent_id = NULL "
                              f"WHERE {BY_NAME['detached_terms'].where}"), p)
        n, digest = conn.execute(text(_deleting_digest_sql(BY_NAME[name])), p).one()
        parts[name] = [int(n), str(digest)]
    conn.execute(text("UPDATE sites SET active_blueprint_version = NULL, setup_status = 'draft' "
                      "WHERE id = :site"), p)
    return parts


def delete_structure(conn: Connection, site_id: str) -> dict[str, int]:
    """Row counts of delete_digested, per deleted kind."""
    parts = delete_digested(conn, site_id)
    return {name: int(parts[name][0]) for name in DELETED_KINDS}


# ---------------------------------------------------------------- rows a reset must keep

Writes = dict[str, tuple[int, int, int]]  # table -> (inserted, updated, deleted)
NO_WRITES = (0, 0, 0)

# This transaction's own row writes per table, FK cascades and triggers included.
# safeops' audit schema and temp tables are ours; everything else is the CMS's.
TABLE_WRITES_SQL = text(r"""
SELECT relid::regclass::text, n_tup_ins, n_tup_upd, n_tup_del
FROM pg_stat_xact_user_tables
WHERE schemaname <> 'safeops' AND schemaname NOT LIKE 'pg\_temp\_%'""")


def table_writes(conn: Connection) -> Writes:
    return {str(name): (int(i), int(u), int(d))
            for name, i, u, d in conn.execute(TABLE_WRITES_SQL)}


def expected_writes(counts: dict[str, int]) -> Writes:
    """Row writes a reset of an approved plan makes, table by table (cms.sql's ON DELETE
    actions): deleting pages and categories cascades nothing, because their links
    and SEO rows went first and subcategories go in the same statement; deleting
    authors and content types sets NULL on posts, one UPDATE per link, so a post
    losing both is updated twice; the site row is updated once."""
    b = BY_NAME
    return {
        b["seo_entries"].table: (0, 0, counts["seo_entries"]),
        b["term_links"].table: (0, 0, counts["term_links"]),
        b["pages"].table: (0, counts["posts_losing_author"]
                           + counts["posts_losing_content_type"], counts["pages"]),
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
                wrong.append(f"{table} inserted/updated/deleted {'/'.join(map(str, did))}, "
                             f"planned {'/'.join(map(str, expected.get(table, NO_WRITES)))}")
        if wrong:
            raise SafeopsError("Reset would have changed rows it must keep; rolled back, "
                               "nothing changed (" + "; ".join(wrong) + ").")


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
    return dict(zip(("categories", "authors", "pages", "content_types", "orphan_seo_entries",
                     "published_posts"), (int(v) for v in row), strict=True))


# ---------------------------------------------------------------- restore

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
SUBCATEGORIES_BLOCKED_SQL = text(RESTORABLE_CATEGORIES + """
SELECT (SELECT count(*) FROM free) - (SELECT count(*) FROM ok)""")

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
    return int(conn.execute(text(
        f"INSERT INTO {table} SELECT s.* FROM {temp} s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.id = s.id) "
        f"AND NOT EXISTS (SELECT 1 FROM {table} x WHERE {unique_on})")).rowcount)


def insert_structure(conn: Connection, site_id: str) -> dict[str, int]:
    """Put rows back with their ids; FK checks run at statement end, so parents
    and children of one table go in one statement."""
    if not site_row(conn, site_id, lock=True):
        raise SafeopsError(f"Site {site_id} no longer exists; nothing to restore into.")
    out = {
        "content_types": _insert_missing(conn, "content_type", "_snap_content_types",
                                         "x.site_id = s.site_id AND x.key = s.key"),
        "authors": _insert_missing(conn, "authors", "_snap_authors",
                                   "x.site_id = s.site_id AND x.slug = s.slug"),
        "categories": int(conn.execute(text(
            RESTORABLE_CATEGORIES + " INSERT INTO terms SELECT s.* FROM _snap_categories s "
            "WHERE s.id IN (SELECT id FROM ok)")).rowcount),
    }
    # A page's author or content type skipped as a conflict: the page goes back without
    # it, as its ON DELETE SET NULL link would have it; inserting it would break the FK.
    conn.execute(text(
        "UPDATE _snap_pages s SET author_id = NULL WHERE s.author_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM authors a WHERE a.id = s.author_id)"))
    conn.execute(text(
        "UPDATE _snap_pages s SET content_type_id = NULL WHERE s.content_type_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM content_type x WHERE x.id = s.content_type_id)"))
    out["pages"] = _insert_missing(conn, "content", "_snap_pages",
                                   "x.site_id = s.site_id AND x.type = s.type "
                                   "AND x.slug = s.slug")
    out["seo_entries"] = int(conn.execute(text(
        "INSERT INTO seo_meta SELECT s.* FROM _snap_seo_entries s "
        "WHERE NOT EXISTS (SELECT 1 FROM seo_meta x WHERE x.id = s.id "
        "   OR (x.entity_type = s.entity_type AND x.entity_id = s.entity_id)) "
        "AND ((s.entity_type = 'term' AND EXISTS (SELECT 1 FROM terms e WHERE e.id = s.entity_id))"
        " OR (s.entity_type = 'author' AND EXISTS (SELECT 1 FROM authors e "
        "     WHERE e.id = s.entity_id))"
        " OR (s.entity_type = 'content' AND EXISTS (SELECT 1 FROM content e "
        "     WHERE e.id = s.entity_id)))")).rowcount)
    out["term_links"] = int(conn.execute(text(
        "INSERT INTO content_terms SELECT s.* FROM _snap_term_links s "
        "WHERE EXISTS (SELECT 1 FROM content c WHERE c.id = s.content_id) "
        "AND EXISTS (SELECT 1 FROM terms t WHERE t.id = s.term_id) "
        "ON CONFLICT DO NOTHING")).rowcount)
    out["post_authors"] = int(conn.execute(text(
        "UPDATE content c SET author_id = s.author_id FROM _snap_post_refs s "
        "WHERE c.id = s.id AND c.author_id IS NULL AND s.author_id IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM authors a WHERE a.id = s.author_id)")).rowcount)
    out["post_content_types"] = int(conn.execute(text(
        "UPDATE content c SET content_type_id = s.content_type_id FROM _snap_post_refs s "
        "WHERE c.id = s.id AND c.content_type_id IS NULL AND s.content_type_id IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM content_type x WHERE x.id = s.content_type_id)")).rowcount)
    out["tags_reattached"] = int(conn.execute(text(
        "UPDATE terms t SET parent_id = s.parent_id FROM _snap_detached_terms s "
        "WHERE t.id = s.id AND t.parent_id IS NULL "
        "AND EXISTS (SELECT 1 FROM terms p WHERE p.id = s.parent_id)")).rowcount)
    out["site_state"] = int(conn.execute(text(
        "UPDATE sites x SET active_blueprint_version = s.active_blueprint_version, "
        "setup_status = s.setup_status FROM _snap_site_state s "
        "WHERE x.id = s.id AND x.active_blueprint_version IS NULL "
        "AND (x.active_blueprint_version, x.setup_status) IS DISTINCT FROM "
        "(s.active_blueprint_version, s.setup_status)")).rowcount)
    return out


RESTORE_TODO_SQL = text(RESTORABLE_CATEGORIES + """
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
""")


def restore_todo(conn: Connection) -> dict[str, int]:
    row = conn.execute(RESTORE_TODO_SQL).one()
    return dict(zip((*NAMES, "term_links", "post_refs", "site_state"), (int(v) for v in row),
                    strict=True))


def snapshot_site_id(conn: Connection) -> str:
    row = conn.execute(text("SELECT id::text FROM _snap_site_state")).all()
    if len(row) != 1:
        raise SnapshotInvalid("The snapshot does not name exactly one site.")
    return str(row[0][0])
