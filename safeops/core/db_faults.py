"""Driver errors that describe the caller's situation, not a crash, as named refusals.

Two faults reached users as raw driver text and exit 1: a lock timeout (which
never said that nothing changed, nor who held the lock) and a target database
without the job's tables (``relation "product" does not exist``: the wrong
``--target``). Both are recognised by the driver's exception types and mapped
once here, for every transaction (see safeops.core.db).

The mapping runs after the failed transaction has rolled back and its connection
has closed, so what it looks up (who holds the lock, which tables are missing)
runs on a fresh, short connection of its own and never waits behind anything of
ours. A lookup that fails only leaves its detail out: the error path itself must
never fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from safeops.core.dsn import parsed_for
from safeops.core.errors import LockTimeout, TargetSchemaMissing

# The tables each pipeline reads and changes: a database missing any of them is not
# that pipeline's target. Plain data, so this core module imports nothing above it.
PIPELINE_TABLES: dict[str, tuple[str, ...]] = {
    "Medusa": ("product", "product_variant", "image", "product_variant_product_image"),
    "CMS": ("sites", "content", "terms", "authors", "content_type", "content_terms", "seo_meta"),
}

# Bounds of the side lookups: they explain a failure, they must not prolong it.
LOOKUP_TIMEOUT_MS = 2000
MAX_HOLDERS_SHOWN = 3

_MISSING_RELATION = re.compile(r'relation "(?:[^"]*\.)?([^".]+)" does not exist')
_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def driver_error(exc: BaseException) -> BaseException | None:
    """The psycopg exception behind ``exc``: SQLAlchemy wraps it, raw COPYs raise it."""
    if isinstance(exc, DBAPIError):
        return exc.orig
    if isinstance(exc, psycopg.Error):
        return exc
    return None


@contextmanager
def refusing_db_faults(engine: Engine, lock_timeout_s: float | None) -> Iterator[None]:
    """Re-raise a lock timeout as LockTimeout and a missing pipeline table as
    TargetSchemaMissing; anything else passes through untouched. Wrap it around the
    whole connection, so the lookups start after the rollback."""
    try:
        yield
    except Exception as exc:
        mapped = map_db_fault(engine, exc, lock_timeout_s)
        if mapped is None:
            raise
        raise mapped from exc


def map_db_fault(
    engine: Engine, exc: BaseException, lock_timeout_s: float | None
) -> LockTimeout | TargetSchemaMissing | None:
    orig = driver_error(exc)
    if isinstance(orig, psycopg.errors.LockNotAvailable):
        return _lock_timeout(engine, exc, lock_timeout_s)
    if isinstance(orig, psycopg.errors.UndefinedTable):
        return _schema_missing(engine, exc, orig)
    return None


def _statement(exc: BaseException) -> str:
    return str(getattr(exc, "statement", "") or "")


def _named_tables(statement: str) -> list[str]:
    """The pipeline tables a failed statement names, in its order (the statement is
    our own SQL; only names we know are kept)."""
    known = {t for tables in PIPELINE_TABLES.values() for t in tables}
    seen: list[str] = []
    for word in _WORD.findall(statement.lower()):
        if word in known and word not in seen:
            seen.append(word)
    return seen


@contextmanager
def _short_connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        conn.execute(text(f"SET statement_timeout = {LOOKUP_TIMEOUT_MS}"))
        conn.execute(text(f"SET lock_timeout = {LOOKUP_TIMEOUT_MS}"))
        yield conn


# Who holds a lock on the tables now. pg_locks needs no privilege; pg_stat_activity
# hides other roles' details from unprivileged users (NULLs, shown as unknown). No
# query text: it may quote customer data, and the pid is enough to find the session.
HOLDERS_SQL = text("""
SELECT a.pid, a.application_name, a.state, a.xact_start,
       string_agg(DISTINCT c.relname, ', ' ORDER BY c.relname)
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.mode <> 'AccessShareLock'
  AND c.relname = ANY(:tables) AND pg_table_is_visible(c.oid)
GROUP BY a.pid, a.application_name, a.state, a.xact_start
ORDER BY a.xact_start NULLS LAST, a.pid
""")


def lock_holders(engine: Engine, tables: list[str]) -> list[str] | None:
    """Each session holding a lock that can block ours, as ``pid 123 'app' (state
    since …, on tables)``; empty when none does any more, None when the lookup failed."""
    try:
        with _short_connection(engine) as conn:
            rows = conn.execute(HOLDERS_SQL, {"tables": tables}).all()
    except Exception:  # the explanation is optional, the refusal is not
        return None
    return [_holder_text(*row) for row in rows]


def _printable(value: object, limit: int = 64) -> str:
    """Another program's application_name, safe for one line."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return shown[:limit]


def _holder_text(pid: object, app: object, state: object, since: object, relations: object) -> str:
    """``pid 123 'app', idle in transaction since …Z, on image``."""
    name = f"'{_printable(app)}'" if app else "(no application_name)"
    when = (
        since.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if isinstance(since, datetime)
        else ""
    )
    activity = " ".join(
        p for p in (_printable(state) if state else "", f"since {when}" if when else "") if p
    )
    return ", ".join(p for p in (f"pid {pid} {name}", activity, f"on {relations}") if p)


def _lock_timeout(engine: Engine, exc: BaseException, lock_timeout_s: float | None) -> LockTimeout:
    tables = _named_tables(_statement(exc)) or [
        t for tables in PIPELINE_TABLES.values() for t in tables
    ]
    holders = lock_holders(engine, tables)
    shown = "; ".join((holders or [])[:MAX_HOLDERS_SHOWN])
    if holders and len(holders) > MAX_HOLDERS_SHOWN:
        shown += f"; and {len(holders) - MAX_HOLDERS_SHOWN} more"
    within = f" within {lock_timeout_s:g} s" if lock_timeout_s is not None else ""
    what = ", ".join(_named_tables(_statement(exc))) or "its tables"
    held = (
        f"held by {shown}"
        if shown
        else "holder unknown"
        if holders is None
        else "the holder has let go since"
    )
    return LockTimeout(f"Refused: could not lock {what}{within} ({held}); nothing changed.")


def _schema_missing(
    engine: Engine, exc: BaseException, orig: BaseException
) -> TargetSchemaMissing | None:
    """Only for our pipelines' own tables: a missing temp table is a bug, not input."""
    named = _MISSING_RELATION.search(
        str(getattr(getattr(orig, "diag", None), "message_primary", "") or orig)
    )
    relation = named.group(1) if named else ""
    for pipeline, tables in PIPELINE_TABLES.items():
        if relation in tables or (
            not relation and set(_named_tables(_statement(exc))) & set(tables)
        ):
            missing = missing_tables(engine, tables) or ([relation] if relation else [])
            if not missing:
                return None
            return TargetSchemaMissing(
                f"Database {_where(engine)} has no {pipeline} tables ({len(missing)} of "
                f"{len(tables)} missing: {', '.join(missing)}): point the target at a "
                f"{pipeline} database; nothing changed."
            )
    return None


def missing_tables(engine: Engine, tables: tuple[str, ...]) -> list[str]:
    """Which of ``tables`` the database lacks; empty when the lookup failed."""
    try:
        with _short_connection(engine) as conn:
            rows = conn.execute(
                text(
                    "SELECT t FROM unnest(CAST(:tables AS text[])) WITH ORDINALITY u(t, n) "
                    "WHERE to_regclass(quote_ident(t)) IS NULL ORDER BY n"
                ),
                {"tables": list(tables)},
            ).all()
    except Exception:
        return []
    return [str(row[0]) for row in rows]


def _where(engine: Engine) -> str:
    """Host and database only: the URL's user and password have no place in a refusal."""
    dsn = parsed_for(engine)
    return dsn.target.location() if dsn is not None else "the target database"
