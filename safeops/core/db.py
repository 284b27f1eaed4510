"""Engines and the few session settings every safeops transaction relies on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from safeops.core.db_faults import refusing_db_faults
from safeops.core.dsn import LOGIN_REFUSALS, parse_dsn, parsed_for, remember
from safeops.core.errors import DatabaseUnreachable, LoginRefused
from safeops.core.settings import database_url


def engine_for(target: str) -> Engine:
    """NullPool: every task opens a fresh connection, so a retry after a killed
    backend never picks up a dead pooled socket."""
    return engine_for_url(database_url(target))


def engine_for_url(raw_url: str) -> Engine:
    """An engine for any connection string libpq accepts (URL, key=value, several hosts).

    libpq's keywords go to psycopg as they are, so multi-host and every option work the
    way libpq documents them; the password stays out of ``engine.url`` and its repr."""
    dsn = parse_dsn(raw_url)
    engine = create_engine(
        URL.create("postgresql+psycopg"),
        poolclass=NullPool,
        connect_args=dsn.connect_kwargs(connect_timeout=10, application_name="safeops"),
    )

    @event.listens_for(engine, "do_connect")
    def scrubbed_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        # The driver's message is not ours: take any secret out before anything sees it.
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.Error as exc:
            raise type(exc)(dsn.scrub(str(exc))) from None

    remember(engine, dsn)
    return engine


# A client that dies (SIGKILL, a closed laptop) must not keep its backend, and so its
# locks, alive: the server polls the socket every second while a statement runs (a lock
# wait or pg_sleep included; PostgreSQL >= 14), and TCP keepalives notice a vanished host
# within 10 + 4 * 5 = 30 s even when the backend sits idle waiting for the next command.
CLIENT_CHECK_MS = 1000
KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 4}


def guard_against_dead_client(conn: Connection, *, local: bool) -> None:
    """Make the server drop this session soon after its client is gone.

    ``local``: for this transaction only (SET LOCAL); else for the whole session."""
    settings: dict[str, int] = dict(KEEPALIVES)
    if conn.connection.driver_connection.info.server_version >= 140000:  # type: ignore[union-attr]
        settings["client_connection_check_interval"] = CLIENT_CHECK_MS
    # One round trip; names and values are our constants.
    conn.execute(
        text(
            "SELECT "
            + ", ".join(
                f"set_config('{name}', '{value}', {str(local).lower()})"
                for name, value in settings.items()
            )
        )
    )


def _prepare(conn: Connection, lock_timeout_s: float | None) -> None:
    # UTC keeps timestamps in snapshots byte-identical whatever the server's zone.
    conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    # A killed run's apply, blocked on a table lock or mid-statement, must not keep its
    # locks (and its place in the lock queue) until the statement ends.
    guard_against_dead_client(conn, local=True)
    if lock_timeout_s is not None:
        conn.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'"))


def connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except OperationalError as exc:
        dsn = parsed_for(engine)
        driver_error = exc.orig or exc
        if dsn is None:
            kind = (
                LoginRefused
                if any(marker in str(driver_error) for marker in LOGIN_REFUSALS)
                else DatabaseUnreachable
            )
            raise kind(f"Cannot connect to the database: {_first_line(driver_error)}") from None
        raise dsn.connect_failure(driver_error) from None


@contextmanager
def transaction(
    engine: Engine,
    *,
    isolation: str = "READ COMMITTED",
    read_only: bool = False,
    lock_timeout_s: float | None = None,
) -> Iterator[Connection]:
    """One explicit transaction: commit on success, rollback on any exception.

    A lock timeout or a missing pipeline table leaves as a named refusal, looked
    into once the rollback is done (safeops.db_faults)."""
    with refusing_db_faults(engine, lock_timeout_s), connect(engine) as conn:
        conn.execution_options(isolation_level=isolation)
        with conn.begin():
            if read_only:
                conn.execute(text("SET TRANSACTION READ ONLY"))
            _prepare(conn, lock_timeout_s)
            yield conn


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A consistent REPEATABLE READ view that is always rolled back.

    Not READ ONLY: verification loads the snapshot into temporary tables."""
    with refusing_db_faults(engine, None), connect(engine) as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        trans = conn.begin()
        try:
            _prepare(conn, None)
            yield conn
        finally:
            trans.rollback()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class Fingerprint:
    system_identifier: str
    database: str

    def __str__(self) -> str:
        return f"{self.system_identifier}/{self.database}"


def fingerprint(conn: Connection) -> Fingerprint:
    """Identifies the cluster and database a snapshot came from, without credentials."""
    try:
        with conn.begin_nested():
            sysid = conn.execute(
                text("SELECT system_identifier::text FROM pg_control_system()")
            ).scalar_one()
    except Exception:  # pg_control_system() may be denied to unprivileged roles
        sysid = "unknown"
    name = conn.execute(text("SELECT current_database()")).scalar_one()
    return Fingerprint(str(sysid), str(name))
