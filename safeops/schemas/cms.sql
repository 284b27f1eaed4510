-- Multi-site CMS shape (the parts safeops' "reset site" touches), for tests and the demo.
-- Load into an empty PostgreSQL 13+ database with psql -v ON_ERROR_STOP=1 -f, or as one
-- multi-statement string through psycopg; every statement is re-runnable.
-- Blueprint structure (a reset deletes and re-applies it): authors, terms, content_type,
-- content, content_terms, seo_meta. Kept (a reset never touches them): sites, site_blueprint,
-- ai_jobs, media, users, domains, site_settings.
-- gen_random_uuid() is built in since PostgreSQL 13, so no pgcrypto extension is needed.

CREATE TABLE IF NOT EXISTS sites (
    id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                     text NOT NULL,
    slug                     text NOT NULL UNIQUE,
    site_type                text NOT NULL DEFAULT 'blog',
    active_blueprint_version int  NULL,            -- site_blueprint.version, no FK (composite key)
    setup_status             text NOT NULL DEFAULT 'draft',
    created_at               timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sites IS
    'One tenant of the CMS; parent of every per-site table (ON DELETE CASCADE).';

CREATE TABLE IF NOT EXISTS authors (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name       text NOT NULL,
    slug       text NOT NULL,
    bio        text NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, slug)
);
COMMENT ON TABLE authors IS 'Bylines of a site; blueprint structure.';

CREATE TABLE IF NOT EXISTS terms (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id   uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    type      text NOT NULL CHECK (type IN ('category', 'tag')),
    name      text NOT NULL,
    slug      text NOT NULL,
    parent_id uuid NULL REFERENCES terms (id) ON DELETE CASCADE,
    UNIQUE (site_id, type, slug)
);
CREATE INDEX IF NOT EXISTS terms_parent_id_idx ON terms (parent_id);
COMMENT ON TABLE terms IS
    'Categories (blueprint structure, may nest via parent_id) and tags (created with posts).';

CREATE TABLE IF NOT EXISTS content_type (
    id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    key     text NOT NULL,
    name    text NOT NULL,
    fields  jsonb NOT NULL DEFAULT '[]',
    UNIQUE (site_id, key)
);
COMMENT ON TABLE content_type IS
    'Custom content types with their field definitions; blueprint structure.';

CREATE TABLE IF NOT EXISTS content (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id         uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    type            text NOT NULL CHECK (type IN ('post', 'page')),
    status          text NOT NULL CHECK (status IN ('draft', 'scheduled', 'published')),
    title           text NOT NULL,
    slug            text NOT NULL,
    body            text NULL,
    author_id       uuid NULL REFERENCES authors (id) ON DELETE SET NULL,
    content_type_id uuid NULL REFERENCES content_type (id) ON DELETE SET NULL,
    published_at    timestamptz NULL,
    scheduled_for   timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, type, slug)
);
CREATE INDEX IF NOT EXISTS content_site_type_status_idx ON content (site_id, type, status);
CREATE INDEX IF NOT EXISTS content_author_id_idx ON content (author_id);
CREATE INDEX IF NOT EXISTS content_content_type_id_idx ON content (content_type_id);
COMMENT ON TABLE content IS
    'Posts and pages; published posts make a site non-resettable, pages never do.';

CREATE TABLE IF NOT EXISTS content_terms (
    content_id uuid NOT NULL REFERENCES content (id) ON DELETE CASCADE,
    term_id    uuid NOT NULL REFERENCES terms (id) ON DELETE CASCADE,
    PRIMARY KEY (content_id, term_id)
);
CREATE INDEX IF NOT EXISTS content_terms_term_id_idx ON content_terms (term_id);
COMMENT ON TABLE content_terms IS 'Content <-> term links (categories and tags).';

CREATE TABLE IF NOT EXISTS seo_meta (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id       uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    entity_type   text NOT NULL CHECK (entity_type IN ('site', 'term', 'author', 'content')),
    entity_id     uuid NOT NULL,                   -- polymorphic: no FK, orphans are possible
    title         text NULL,
    description   text NULL,
    canonical_url text NULL,
    UNIQUE (entity_type, entity_id)
);
CREATE INDEX IF NOT EXISTS seo_meta_site_entity_type_idx ON seo_meta (site_id, entity_type);
COMMENT ON TABLE seo_meta IS
    'SEO overrides for a site, term, author or content row (polymorphic, no FK to the entity).';

-- Kept tables: a reset never touches these.

CREATE TABLE IF NOT EXISTS site_blueprint (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    version    int NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, version)
);
COMMENT ON TABLE site_blueprint IS
    'Versioned setup-wizard output a reset re-applies; kept.';

CREATE TABLE IF NOT EXISTS ai_jobs (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    status     text NOT NULL DEFAULT 'queued',
    payload    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ai_jobs_site_id_idx ON ai_jobs (site_id);
COMMENT ON TABLE ai_jobs IS 'Background AI generation jobs of a site; kept.';

CREATE TABLE IF NOT EXISTS media (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    url        text NOT NULL,
    alt        text NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS media_site_id_idx ON media (site_id);
COMMENT ON TABLE media IS 'Uploaded files of a site (URL only); kept.';

CREATE TABLE IF NOT EXISTS users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email      text NOT NULL UNIQUE,
    name       text NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE users IS 'Global CMS accounts (no site_id); kept.';

CREATE TABLE IF NOT EXISTS domains (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id    uuid NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    hostname   text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS domains_site_id_idx ON domains (site_id);
COMMENT ON TABLE domains IS 'Hostnames routed to a site; kept.';

CREATE TABLE IF NOT EXISTS site_settings (
    site_id  uuid PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    settings jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE site_settings IS 'One settings document per site; kept.';
