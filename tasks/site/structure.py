"""What a site's structure is, to a reset: the kinds of rows it removes or changes,
how their rows are digested, and the plan (counts and hash) built from those digests.

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

from dataclasses import dataclass

from sqlalchemy import Connection, text

from safeops.core.db import fingerprint
from safeops.core.errors import SnapshotInvalid
from safeops.core.models import Plan, plan_hash_of

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
    def order(self) -> str:
        """The key in its native types, as one value (a row of them where it has two)."""
        return f"({_NATIVE_ORDER.get(self.key, self.key)})"

    @property
    def temp(self) -> str:
        return f"_snap_{self.name}"


KINDS: tuple[Kind, ...] = (
    Kind(
        "seo_entries",
        "seo_meta",
        f"(t.entity_type = 'term' AND t.entity_id IN ({CATEGORIES})) "
        f"OR (t.entity_type = 'author' AND t.entity_id IN ({AUTHORS})) "
        f"OR (t.entity_type = 'content' AND t.entity_id IN ({PAGES}))",
        "t.id::text",
    ),
    Kind("categories", "terms", "t.site_id = :site AND t.type = 'category'", "t.id::text"),
    Kind("authors", "authors", "t.site_id = :site", "t.id::text"),
    Kind("pages", "content", "t.site_id = :site AND t.type = 'page'", "t.id::text"),
    Kind("content_types", "content_type", "t.site_id = :site", "t.id::text"),
    Kind(
        "term_links",
        "content_terms",
        f"t.term_id IN ({CATEGORIES}) OR t.content_id IN ({PAGES})",
        "t.content_id::text || '/' || t.term_id::text",
    ),
    Kind(
        "post_refs",
        "content",
        f"t.type = 'post' AND (t.author_id IN ({AUTHORS}) "
        f"OR t.content_type_id IN ({CONTENT_TYPES}))",
        "t.id::text",
        ("id", "author_id", "content_type_id"),
    ),
    Kind(
        "detached_terms",
        "terms",
        f"t.parent_id IN ({CATEGORIES}) AND NOT (t.site_id = :site AND t.type = 'category')",
        "t.id::text",
        ("id", "parent_id"),
    ),
    Kind(
        "site_state",
        "sites",
        "t.id = :site",
        "t.id::text",
        ("id", "active_blueprint_version", "setup_status"),
    ),
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
_NATIVE_ORDER = {
    "t.id::text": "t.id",
    "t.content_id::text || '/' || t.term_id::text": "t.content_id, t.term_id",
}


# How a kind's rows are digested for the plan hash. 2 (current): the count and a sum
# of a 64-bit hash of each row's text: no sort and no site-sized string, so a DELETE
# can digest the rows it returns for a fraction of what it costs (the ordered md5
# took 4x the delete itself on 100k SEO rows). A changed row changes the sum unless
# two 64-bit hashes collide (2^-64 per change): a guard against a site that moved,
# not against someone who can write to it anyway. 1: one md5 over the rows' text in
# key order; snapshots written before version 2 record no "planDigest" and keep
# verifying (and restoring) with it. 3: version 2's digest, and the plan hash covers
# the database's fingerprint too (a plan reviewed on one database never approves
# another); the row digests of versions 2 and 3 are the same sums.
DIGEST_VERSION = 3


def text_hash(rendered: str) -> str:
    """The 64-bit hash of a rendering's text: what a row adds to a version-2 digest."""
    return f"hashtextextended(({rendered})::text, 0)"


def row_hash(kind: Kind) -> str:
    """A row's share of a version-2 digest."""
    return text_hash(kind.row_expr())


def digest_sql(
    kind: Kind, source: str, where: str, extra: str = "", version: int = DIGEST_VERSION
) -> str:
    """SELECT of (count, digest[, extra]) over the kind's rows in ``source``."""
    if version == 1:
        order = _NATIVE_ORDER.get(kind.key, kind.key)
        digest = f"md5(COALESCE(string_agg(({kind.row_expr()})::text, ',' ORDER BY {order}), ''))"
    elif version in (2, 3):
        digest = f"COALESCE(sum({row_hash(kind)}), 0)::text"
    else:
        raise SnapshotInvalid(f"Unknown plan digest version {version!r}.")
    return (
        f"SELECT count(*), {digest}"
        + (f", {extra}" if extra else "")
        + f" FROM {source} t WHERE {where}"
    )


Parts = dict[str, list[int | str]]  # kind name -> [row count, md5 of its rows' text]

# What the SET NULL links of a site's authors and content types do to posts (any site).
POST_EFFECTS = (
    f"count(*) FILTER (WHERE t.author_id IN ({AUTHORS})), "
    f"count(*) FILTER (WHERE t.content_type_id IN ({CONTENT_TYPES}))"
)
CATEGORY_LINKS_OF_POSTS = text(f"""
    SELECT count(*) FROM content_terms ct JOIN content c ON c.id = ct.content_id
    WHERE c.type = 'post' AND ct.term_id IN ({CATEGORIES})""")


def plan_of_parts(
    site_id: str,
    parts: Parts,
    effects: dict[str, int],
    target: str,
    database: str,
    version: int = DIGEST_VERSION,
) -> Plan:
    """The one place a reset plan and its hash are assembled, whether its parts were
    read from live rows, from a loaded snapshot, or from the rows an apply deleted:
    a hash computed any other way could disagree with saved plans and old snapshots."""
    counts = {k.name: int(parts[k.name][0]) for k in KINDS if k.name != "site_state"}
    counts.update(effects)
    hashed: dict[str, object] = {"reset-site-structure": parts, "site": site_id}
    if version != 1:  # version 1 hashes stay exactly what they were
        hashed["digest"] = version
    return Plan(
        kind="reset-site-structure",
        target=target,
        counts=counts,
        plan_hash=plan_hash_of(hashed, database=database if version >= 3 else ""),
    )


def post_effects(conn: Connection, site_id: str) -> dict[str, int]:
    """Posts the reset changes without deleting them (counts shown before approval)."""
    losing_author, losing_type = conn.execute(
        text(f"SELECT {POST_EFFECTS} FROM content t WHERE {BY_NAME['post_refs'].where}"),
        {"site": site_id},
    ).one()
    links = conn.execute(CATEGORY_LINKS_OF_POSTS, {"site": site_id}).scalar_one()
    state = conn.execute(
        text(
            "SELECT count(*) FROM sites WHERE id = CAST(:site AS uuid) AND "
            "(active_blueprint_version, setup_status) IS DISTINCT FROM (NULL, 'draft')"
        ),
        {"site": site_id},
    ).scalar_one()
    return {
        "posts_losing_author": int(losing_author),
        "posts_losing_content_type": int(losing_type),
        "posts_losing_category_links": int(links),
        # 1 while the blueprint state still has to go back to draft: with it, an
        # all-zero plan means the site is reset already and there is nothing to do.
        "site_state_to_reset": int(state),
    }


def plan_from(
    conn: Connection,
    site_id: str,
    source_of: dict[str, tuple[str, str]],
    target: str,
    version: int = DIGEST_VERSION,
) -> Plan:
    parts: Parts = {}
    for kind in KINDS:
        source, where = source_of[kind.name]
        n, digest = conn.execute(
            text(digest_sql(kind, source, where, version=version)), {"site": site_id}
        ).one()
        parts[kind.name] = [int(n), str(digest)]
    effects = post_effects(conn, site_id) if source_of is LIVE else {}
    return plan_of_parts(site_id, parts, effects, target, str(fingerprint(conn)), version)


LIVE: dict[str, tuple[str, str]] = {k.name: (k.table, k.where) for k in KINDS}
SNAPSHOT: dict[str, tuple[str, str]] = {k.name: (k.temp, "true") for k in KINDS}


def reset_plan(conn: Connection, site_id: str, target: str) -> Plan:
    """The plan read from the live rows by the definitions above, independently of any
    rendering: what the snapshot's plan (summed from its renderings) must equal in the
    same view, and what the tests hold it to."""
    tune_for_site(conn)
    return plan_from(conn, site_id, LIVE, target)
