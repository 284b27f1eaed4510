"""A small multi-site CMS data set (``schemas/cms.sql``) for the "reset site" demo and tests.

A reset deletes a site's *blueprint structure* (authors, categories, pages, content types and
their SEO rows) and puts the site's blueprint state back to draft with no blueprint; its
draft and scheduled posts stay (detached from what was deleted), and the kept tables
(sites, site_blueprint, ai_jobs, media, users, domains, site_settings) stay as they are. It is
only safe while the site has no published post, so the seed ships one resettable site, one that
must be refused and one without any post.

Blueprint slugs are derived from names only (never from ids, counters or clocks), so applying
the same blueprint again after a reset yields the very same slugs and canonical URLs.

One module (~540 lines) on purpose: it is a single data set written as the CMS's own
operations (create a site, apply a blueprint, add a post), and each step reads what the
previous one wrote (slugs, base URLs, SEO rows); split, every part would import the others.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

DOMAIN_SUFFIX = "example.test"

# (name, parent name): a parent is always listed before its children.
CATEGORY_NAMES: list[tuple[str, str | None]] = [
    ("Guides", None),
    ("How-to", "Guides"),
    ("News", None),
    ("Reviews", None),
    ("Interviews", None),
    ("Opinion", None),
    ("Events", None),
    ("Resources", None),
]
AUTHOR_NAMES: list[tuple[str, str]] = [
    ("Maya Fischer", "Editor in chief; writes about design and making things."),
    ("Jonas Weber", "Staff writer covering tools, workshops and the people behind them."),
    ("Léa Martin", "Contributing editor, interviews and long reads."),
    ("Noah Keller", "Photographer and occasional reviewer."),
]
PAGE_NAMES: list[tuple[str, str]] = [
    ("About", "Who we are and what this site is about."),
    ("Contact", "How to reach the editors."),
    ("Privacy Policy", "What we collect and why."),
    ("Terms of Service", "The rules for using this site."),
    ("Imprint", "Legal notice."),
    ("FAQ", "Answers to the questions readers ask most."),
]
CONTENT_TYPES: list[tuple[str, str, list[dict[str, Any]]]] = [
    (
        "article",
        "Article",
        [
            {"key": "subtitle", "label": "Subtitle", "type": "text", "required": False},
            {"key": "hero_image", "label": "Hero image", "type": "media", "required": False},
            {
                "key": "reading_time",
                "label": "Reading time (min)",
                "type": "number",
                "required": False,
            },
        ],
    ),
    (
        "review",
        "Review",
        [
            {"key": "product", "label": "Product", "type": "text", "required": True},
            {"key": "rating", "label": "Rating", "type": "number", "required": True},
            {"key": "verdict", "label": "Verdict", "type": "richtext", "required": False},
        ],
    ),
    (
        "event",
        "Event",
        [
            {"key": "starts_at", "label": "Starts at", "type": "datetime", "required": True},
            {"key": "venue", "label": "Venue", "type": "text", "required": False},
        ],
    ),
    (
        "recipe",
        "Recipe",
        [
            {"key": "servings", "label": "Servings", "type": "number", "required": False},
            {"key": "ingredients", "label": "Ingredients", "type": "list", "required": True},
        ],
    ),
]

POST_STATUSES = ("draft", "scheduled", "published")


# Every table of the CMS schema (safeops/schemas/cms.sql), in dependency order: what the
# tests and the bench compare before and after a reset.
CMS_SCHEMA_TABLES = (
    "sites",
    "authors",
    "terms",
    "content_type",
    "content",
    "content_terms",
    "seo_meta",
    "site_blueprint",
    "ai_jobs",
    "media",
    "users",
    "domains",
    "site_settings",
)


def slugify(name: str) -> str:
    """Deterministic, URL-safe slug: accents folded, lowercase, runs of other chars -> '-'.

    Only the name goes in, so re-applying a blueprint reproduces the same slugs.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    if not slug:
        raise ValueError(f"cannot derive a slug from {name!r}")
    return slug


def _pick(catalogue: Sequence[Any], count: int, filler: str) -> list[Any]:
    """First ``count`` catalogue entries, then numbered fillers ("Category 9") if it runs out.

    The fillers are numbered by position, so they are as deterministic as the catalogue.
    """
    if count < 0:
        raise ValueError(f"{filler.lower()} count must be >= 0, got {count}")
    return [catalogue[i] if i < len(catalogue) else f"{filler} {i + 1}" for i in range(count)]


def _site_slug(conn: Connection, site_id: str) -> str:
    """The site's slug (for canonical URLs); fails loudly on an unknown site id."""
    slug = conn.execute(
        text("SELECT slug FROM sites WHERE id = CAST(:id AS uuid)"), {"id": site_id}
    ).scalar_one_or_none()
    if slug is None:
        raise LookupError(f"no site with id {site_id}")
    return str(slug)


def _base_url(site_slug: str) -> str:
    return f"https://{site_slug}.{DOMAIN_SUFFIX}"


def _add_seo(
    conn: Connection,
    site_id: str,
    entity_type: str,
    entity_id: str,
    title: str,
    description: str | None,
    canonical_url: str,
) -> None:
    conn.execute(
        text("""INSERT INTO seo_meta (site_id, entity_type, entity_id, title, description,
        canonical_url) VALUES (CAST(:site_id AS uuid), :entity_type, CAST(:entity_id AS uuid),
        :title, :description, :canonical_url)"""),
        {
            "site_id": site_id,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "title": title,
            "description": description,
            "canonical_url": canonical_url,
        },
    )


def _blueprint_payload(
    categories: int, authors: int, pages: int, content_types: int
) -> dict[str, Any]:
    """The wizard's resolved output: what the structure rows are built from, names and slugs.

    Stored in site_blueprint so a reset can re-create (and check) exactly this structure.
    """
    cats = []
    for entry in _pick(CATEGORY_NAMES, categories, "Category"):
        name, parent = entry if isinstance(entry, tuple) else (entry, None)
        cats.append(
            {"name": name, "slug": slugify(name), "parent": slugify(parent) if parent else None}
        )
    auths = []
    for entry in _pick(AUTHOR_NAMES, authors, "Author"):
        name, bio = entry if isinstance(entry, tuple) else (entry, None)
        auths.append({"name": name, "slug": slugify(name), "bio": bio})
    pgs = []
    for entry in _pick(PAGE_NAMES, pages, "Page"):
        name, body = entry if isinstance(entry, tuple) else (entry, f"{entry}.")
        pgs.append({"title": name, "slug": slugify(name), "body": body})
    types = []
    for entry in _pick(CONTENT_TYPES, content_types, "Type"):
        if isinstance(entry, tuple):
            key, name, fields = entry
        else:
            key, name, fields = (
                slugify(entry).replace("-", "_"),
                entry,
                [{"key": "summary", "label": "Summary", "type": "text", "required": False}],
            )
        types.append({"key": key, "name": name, "fields": fields})
    return {"categories": cats, "authors": auths, "pages": pgs, "content_types": types}


def apply_blueprint(
    conn: Connection,
    site_id: str,
    version: int,
    *,
    categories: int = 4,
    authors: int = 2,
    pages: int = 3,
    content_types: int = 2,
) -> dict[str, int]:
    """Create a site's blueprint structure the way a CMS setup wizard would.

    Inserts categories (the second one a child of the first), authors, published pages, content
    types and one seo_meta row per category, author and page; records the payload as
    site_blueprint ``version`` and marks the site ready on that version.

    The site_blueprint row is kept by a reset, so re-applying a version that is already recorded
    reuses it, but only if the payload is identical: a different structure under the same
    version would make the history lie. The structure itself is *not* merged: applying onto a
    site that still has it fails on the UNIQUE constraints instead of silently doubling up.
    Pages are published on purpose: only published *posts* block a reset.
    """
    site_slug = _site_slug(conn, site_id)
    base = _base_url(site_slug)
    payload = _blueprint_payload(categories, authors, pages, content_types)
    payload_json = json.dumps(payload, sort_keys=True)

    recorded = conn.execute(
        text("""INSERT INTO site_blueprint (site_id, version, payload)
        VALUES (CAST(:site_id AS uuid), :version, CAST(:payload AS jsonb))
        ON CONFLICT (site_id, version) DO NOTHING RETURNING id"""),
        {"site_id": site_id, "version": version, "payload": payload_json},
    ).first()
    if recorded is None:
        same = conn.execute(
            text("""SELECT payload = CAST(:payload AS jsonb) FROM site_blueprint
            WHERE site_id = CAST(:site_id AS uuid) AND version = :version"""),
            {"site_id": site_id, "version": version, "payload": payload_json},
        ).scalar_one()
        if not same:
            raise ValueError(
                f"site {site_slug} already has blueprint version {version} with a different payload"
            )

    term_ids: dict[str, str] = {}
    for cat in payload["categories"]:
        term_id = str(
            conn.execute(
                text("""INSERT INTO terms (site_id, type, name, slug, parent_id)
            VALUES (CAST(:site_id AS uuid), 'category', :name, :slug, CAST(:parent_id AS uuid))
            RETURNING id"""),
                {
                    "site_id": site_id,
                    "name": cat["name"],
                    "slug": cat["slug"],
                    "parent_id": term_ids[cat["parent"]] if cat["parent"] else None,
                },
            ).scalar_one()
        )
        term_ids[cat["slug"]] = term_id
        _add_seo(
            conn,
            site_id,
            "term",
            term_id,
            f"{cat['name']} | {site_slug}",
            f"Everything filed under {cat['name']}.",
            f"{base}/category/{cat['slug']}",
        )

    author_ids: list[str] = []
    for author in payload["authors"]:
        author_id = str(
            conn.execute(
                text("""INSERT INTO authors (site_id, name, slug, bio)
            VALUES (CAST(:site_id AS uuid), :name, :slug, :bio) RETURNING id"""),
                {"site_id": site_id, **author},
            ).scalar_one()
        )
        author_ids.append(author_id)
        _add_seo(
            conn,
            site_id,
            "author",
            author_id,
            f"{author['name']} | {site_slug}",
            author["bio"],
            f"{base}/author/{author['slug']}",
        )

    now = datetime.now(UTC)
    for page in payload["pages"]:
        page_id = str(
            conn.execute(
                text("""INSERT INTO content (site_id, type, status, title, slug,
            body, author_id, published_at) VALUES (CAST(:site_id AS uuid), 'page', 'published',
            :title, :slug, :body, CAST(:author_id AS uuid), :published_at) RETURNING id"""),
                {
                    "site_id": site_id,
                    **page,
                    "author_id": author_ids[0] if author_ids else None,
                    "published_at": now,
                },
            ).scalar_one()
        )
        _add_seo(
            conn,
            site_id,
            "content",
            page_id,
            f"{page['title']} | {site_slug}",
            page["body"],
            f"{base}/{page['slug']}",
        )

    for ctype in payload["content_types"]:
        conn.execute(
            text("""INSERT INTO content_type (site_id, key, name, fields)
            VALUES (CAST(:site_id AS uuid), :key, :name, CAST(:fields AS jsonb))"""),
            {
                "site_id": site_id,
                "key": ctype["key"],
                "name": ctype["name"],
                "fields": json.dumps(ctype["fields"]),
            },
        )

    conn.execute(
        text("""UPDATE sites SET active_blueprint_version = :version,
        setup_status = 'ready' WHERE id = CAST(:site_id AS uuid)"""),
        {"site_id": site_id, "version": version},
    )
    return {
        "categories": len(payload["categories"]),
        "authors": len(payload["authors"]),
        "pages": len(payload["pages"]),
        "content_types": len(payload["content_types"]),
        "seo_entries": len(payload["categories"]) + len(payload["authors"]) + len(payload["pages"]),
    }


def create_site(conn: Connection, slug: str, name: str | None = None) -> str:
    """Create a site with the kept rows a real one carries (settings, domain, media, AI job, SEO).

    A reset must leave those rows alone, so every seeded site has at least one of each to check.
    Returns the new site id as a string.
    """
    name = name or slug.replace("-", " ").title()
    site_id = str(
        conn.execute(
            text("""INSERT INTO sites (name, slug) VALUES (:name, :slug)
        RETURNING id"""),
            {"name": name, "slug": slug},
        ).scalar_one()
    )
    params = {"site_id": site_id, "slug": slug, "name": name}
    conn.execute(
        text("""INSERT INTO site_settings (site_id, settings)
        VALUES (CAST(:site_id AS uuid), CAST(:settings AS jsonb))"""),
        {
            **params,
            "settings": json.dumps(
                {"locale": "en", "timezone": "UTC", "posts_per_page": 10, "comments": False}
            ),
        },
    )
    conn.execute(
        text("""INSERT INTO domains (site_id, hostname)
        VALUES (CAST(:site_id AS uuid), :hostname)"""),
        {**params, "hostname": f"{slug}.{DOMAIN_SUFFIX}"},
    )
    conn.execute(
        text("""INSERT INTO media (site_id, url, alt)
        VALUES (CAST(:site_id AS uuid), :url, :alt)"""),
        {**params, "url": f"{_base_url(slug)}/media/logo.png", "alt": f"{name} logo"},
    )
    conn.execute(
        text("""INSERT INTO ai_jobs (site_id, kind, status, payload)
        VALUES (CAST(:site_id AS uuid), 'site_setup', 'completed', CAST(:payload AS jsonb))"""),
        {
            **params,
            "payload": json.dumps({"prompt": f"Set up a blog called {name}", "model": "demo"}),
        },
    )
    _add_seo(
        conn,
        site_id,
        "site",
        site_id,
        name,
        f"{name}: stories, guides and news.",
        f"{_base_url(slug)}/",
    )
    return site_id


def _lookup(conn: Connection, sql: str, site_id: str, key: str, what: str) -> str:
    """One id by slug/key within the site; a typo must not silently create an unlinked post."""
    found = conn.execute(text(sql), {"site_id": site_id, "key": key}).scalar_one_or_none()
    if found is None:
        raise LookupError(f"no {what} {key!r} in site {site_id}")
    return str(found)


def _unique_post_slug(conn: Connection, site_id: str, title: str) -> str:
    """Slug from the title, with -2, -3, ... appended when another post already uses it."""
    base = slugify(title)
    taken = set(
        conn.execute(
            text("""SELECT slug FROM content WHERE site_id = CAST(:site_id AS uuid)
        AND type = 'post' AND (slug = :base OR slug LIKE :prefix)"""),
            {"site_id": site_id, "base": base, "prefix": f"{base}-%"},
        ).scalars()
    )
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    return slug


def add_post(
    conn: Connection,
    site_id: str,
    *,
    status: str = "draft",
    title: str | None = None,
    author_slug: str | None = None,
    content_type_key: str | None = None,
    category_slugs: Sequence[str] = (),
    tag_slugs: Sequence[str] = (),
    with_seo: bool = True,
) -> str:
    """Insert one post with the links a real editor would create, and return its id.

    published_at is set for published posts and scheduled_for (a week ahead) for scheduled ones,
    because the reset guard must treat "scheduled" as not yet public. Author, content type and
    categories must already exist (unknown slugs raise LookupError); tags are created on the fly
    as an editor would type them.
    """
    if status not in POST_STATUSES:
        raise ValueError(f"status must be one of {POST_STATUSES}, got {status!r}")
    for arg_name, slugs in (("category_slugs", category_slugs), ("tag_slugs", tag_slugs)):
        if isinstance(slugs, str):
            raise TypeError(f"{arg_name} must be a list of slugs, not a string")
    if title is None:
        count = conn.execute(
            text("""SELECT count(*) FROM content
            WHERE site_id = CAST(:site_id AS uuid) AND type = 'post'"""),
            {"site_id": site_id},
        ).scalar_one()
        title = f"Untitled post {count + 1}"
    site_slug = _site_slug(conn, site_id)
    slug = _unique_post_slug(conn, site_id, title)

    author_id = (
        None
        if author_slug is None
        else _lookup(
            conn,
            """SELECT id FROM authors
        WHERE site_id = CAST(:site_id AS uuid) AND slug = :key""",
            site_id,
            author_slug,
            "author",
        )
    )
    content_type_id = (
        None
        if content_type_key is None
        else _lookup(
            conn,
            """SELECT id
        FROM content_type WHERE site_id = CAST(:site_id AS uuid) AND key = :key""",
            site_id,
            content_type_key,
            "content type",
        )
    )

    now = datetime.now(UTC)
    post_id = str(
        conn.execute(
            text("""INSERT INTO content (site_id, type, status, title, slug,
        body, author_id, content_type_id, published_at, scheduled_for)
        VALUES (CAST(:site_id AS uuid), 'post', :status, :title, :slug, :body,
        CAST(:author_id AS uuid), CAST(:content_type_id AS uuid), :published_at, :scheduled_for)
        RETURNING id"""),
            {
                "site_id": site_id,
                "status": status,
                "title": title,
                "slug": slug,
                "body": f"<p>{title}.</p>",
                "author_id": author_id,
                "content_type_id": content_type_id,
                "published_at": now if status == "published" else None,
                "scheduled_for": now + timedelta(days=7) if status == "scheduled" else None,
            },
        ).scalar_one()
    )

    term_ids = [
        _lookup(
            conn,
            """SELECT id FROM terms WHERE site_id = CAST(:site_id AS uuid)
        AND type = 'category' AND slug = :key""",
            site_id,
            cat,
            "category",
        )
        for cat in category_slugs
    ]
    for tag in tag_slugs:
        conn.execute(
            text("""INSERT INTO terms (site_id, type, name, slug)
            VALUES (CAST(:site_id AS uuid), 'tag', :name, :slug)
            ON CONFLICT (site_id, type, slug) DO NOTHING"""),
            {"site_id": site_id, "name": tag.replace("-", " "), "slug": tag},
        )
        term_ids.append(
            _lookup(
                conn,
                """SELECT id FROM terms WHERE site_id = CAST(:site_id AS uuid)
            AND type = 'tag' AND slug = :key""",
                site_id,
                tag,
                "tag",
            )
        )
    if term_ids:
        conn.execute(
            text("""INSERT INTO content_terms (content_id, term_id)
            VALUES (CAST(:content_id AS uuid), CAST(:term_id AS uuid))
            ON CONFLICT DO NOTHING"""),
            [{"content_id": post_id, "term_id": term_id} for term_id in term_ids],
        )

    if with_seo:
        _add_seo(
            conn,
            site_id,
            "content",
            post_id,
            f"{title} | {site_slug}",
            None,
            f"{_base_url(site_slug)}/blog/{slug}",
        )
    return post_id


def seed_cms(conn: Connection) -> dict[str, str]:
    """Three sites covering the reset guard's cases; returns {site slug: site id}.

    - atelier: drafts and a scheduled post, nothing published -> resettable.
    - gazette: two published posts -> a reset must be refused.
    - empty-site: blueprint only, no posts -> resettable, nothing to lose.
    """
    conn.execute(
        text("INSERT INTO users (email, name) VALUES (:email, :name)"),
        [
            {"email": "owner@example.test", "name": "Site Owner"},
            {"email": "editor@example.test", "name": "Eve Editor"},
        ],
    )
    sites: dict[str, str] = {}

    atelier = sites["atelier"] = create_site(conn, "atelier", "Atelier")
    apply_blueprint(conn, atelier, 1)
    add_post(
        conn,
        atelier,
        title="Sharpening a chisel, properly",
        author_slug="maya-fischer",
        content_type_key="article",
        category_slugs=["guides", "how-to"],
        tag_slugs=["woodworking", "tools"],
    )
    add_post(
        conn,
        atelier,
        title="Five workbenches we liked",
        author_slug="jonas-weber",
        content_type_key="review",
        category_slugs=["reviews"],
        tag_slugs=["tools"],
    )
    add_post(
        conn,
        atelier,
        title="Notes from the spring open studio",
        category_slugs=["news"],
        with_seo=False,
    )
    add_post(
        conn,
        atelier,
        status="scheduled",
        title="Summer workshop programme",
        author_slug="maya-fischer",
        content_type_key="article",
        category_slugs=["news"],
        tag_slugs=["workshops"],
    )

    gazette = sites["gazette"] = create_site(conn, "gazette", "The Gazette")
    apply_blueprint(conn, gazette, 1, categories=5, authors=3, pages=4, content_types=3)
    add_post(
        conn,
        gazette,
        status="published",
        title="Council approves new bike lanes",
        author_slug="lea-martin",
        content_type_key="article",
        category_slugs=["news"],
        tag_slugs=["city", "transport"],
    )
    add_post(
        conn,
        gazette,
        status="published",
        title="Review: the new riverside bakery",
        author_slug="jonas-weber",
        content_type_key="review",
        category_slugs=["reviews"],
        tag_slugs=["food"],
    )
    add_post(
        conn,
        gazette,
        title="Interview with the harbour master (draft)",
        author_slug="lea-martin",
        category_slugs=["interviews"],
        tag_slugs=["city"],
    )

    sites["empty-site"] = create_site(conn, "empty-site", "Empty Site")
    apply_blueprint(conn, sites["empty-site"], 1)
    return sites
