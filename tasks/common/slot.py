"""One live run per target database (or per CMS site) at a time, in a slot that dies
with its holder.

The slot is a session-level PostgreSQL advisory lock taken on a dedicated connection
to the target database and held for the whole live run, approval pause included:

- **Per database by construction.** Advisory locks belong to the database they are
  taken in, so two target names pointing at one database share a slot and two
  databases never block each other, whatever the names. A CMS reset scopes it further
  to its site (a second key).
- **It cannot leak.** The lock lives exactly as long as the connection. A holder that
  dies at any moment (SIGKILL, a closed terminal, a crashed worker) closes its socket;
  the backend sees that at once when idle (the usual case: holding the slot while the
  run pauses for approval), within a second while a statement runs
  (``client_connection_check_interval``), and within 30 s if the host vanished (TCP
  keepalives): see :func:`safeops.core.db.guard_against_dead_client`. Apply connections get
  the same guard, so a killed run's apply does not keep its table locks either.
- **A waiter can name the holder.** The slot connection's ``application_name`` is
  ``safeops slot run <flow run id>`` (PostgreSQL keeps 63 bytes, too few for the flow
  name as well), and the statement that took the lock, still shown as its last query
  in ``pg_stat_activity``, carries the flow, run, host and pid in a comment; its
  ``query_start`` says since when. A waiting run prints one line saying so.

Why not Prefect's global concurrency limit (what this module used before issue 15): a
killed holder's slot stayed taken (``active_slots 1`` for good when its holder record
was never written, e.g. killed while waiting), the wait printed dozens of Prefect's
internal ``ConcurrencySlotAcquisitionWithLeaseService ... TimeoutError`` errors and no
word of what it waited for, the limit was named after the target *name*, and keeping
it alive took Prefect's private ``_leases``/``_sync`` modules. The database lock
inside each apply stays the real guard; this slot makes a second live run wait its
turn instead of failing on it. Queueing *deployment* runs is Prefect's job (a
deployment's ``concurrency_limit``), not this module's.

Key space: the two-int4 form ``pg_advisory_lock(SLOT_CLASS, key)`` (``objsubid = 2`` in
``pg_locks``) cannot collide with the single-bigint locks elsewhere in safeops
(``tasks/common/audit.py``'s ``pg_advisory_xact_lock(hashtext(...))``, ``objsubid = 1``).
Two scopes whose keys collide (1 in 2**31) would merely take turns.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from safeops.core import events
from safeops.core.db import connect, engine_for, guard_against_dead_client
from safeops.core.settings import validate_target

SLOT_CLASS = 0x5AFE5107  # first advisory key of every safeops slot (a positive int4)
POLL_S = 1.0  # a waiting run tries again every second; its connection idles in between
APP_PREFIX = "safeops slot run "

_log = logging.getLogger("safeops.slot")


@dataclass(frozen=True)
class Slot:
    """Which slot: the target database (host:port/name, no credentials) and scope."""

    database: str
    scope: tuple[str, ...]

    @property
    def key(self) -> int:
        """Second advisory key: a stable 31-bit digest of the scope (0 = whole database)."""
        if not self.scope:
            return 0
        digest = hashlib.blake2b("\x1f".join(self.scope).encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & 0x7FFFFFFF

    @property
    def name(self) -> str:
        return f"safeops-slot {self.database}" + "".join(f" {s}" for s in self.scope)


@dataclass(frozen=True)
class Holder:
    """Who holds a slot, as PostgreSQL sees it (fields are None when hidden from us)."""

    backend_pid: int
    flow_run: str | None
    flow: str | None
    host: str | None
    pid: str | None
    since: datetime | None

    def describe(self) -> str:
        who = (
            f"flow run {self.flow_run}" + (f" {self.flow}" if self.flow else "")
            if self.flow_run
            else f"pid {self.pid or '?'} on {self.host or '?'}"
        )
        since = f" since {self.since.astimezone(UTC):%H:%M:%S}Z" if self.since else ""
        return f"held by {who}{since}, backend pid {self.backend_pid}"


@contextmanager
def one_at_a_time(target: str, *scope: str, enabled: bool = True) -> Iterator[Slot | None]:
    """Hold the target database's slot (narrowed by ``scope``, e.g. a site id) for the
    whole block; wait for it, saying once who holds it. ``enabled=False`` (dry runs)
    takes nothing: reading needs no turn."""
    if not enabled:
        yield None
        return
    validate_target(target)
    engine = engine_for(target)
    conn = connect(engine).execution_options(isolation_level="AUTOCOMMIT")
    held = False
    try:
        url = engine.url
        slot = Slot(f"{url.database}@{url.host or 'localhost'}:{url.port or 5432}", tuple(scope))
        _acquire(conn, slot)
        held = True
        yield slot
    finally:
        _release(conn, held)
        engine.dispose()


def _acquire(conn: Connection, slot: Slot) -> None:
    run_id, flow = _whoami()
    guard_against_dead_client(conn, local=False)
    conn.execute(
        text("SELECT set_config('application_name', :name, false)"),
        {"name": (APP_PREFIX + (run_id or "-"))[:63]},
    )
    if conn.connection.driver_connection.info.server_version >= 140000:  # type: ignore[union-attr]
        # A server-wide idle_session_timeout would end the slot during a long approval pause.
        conn.execute(text("SELECT set_config('idle_session_timeout', '0', false)"))
    # The comment stays visible as this session's last query while it holds the slot.
    tag = _safe(
        f"safeops slot flow={flow or '-'} run={run_id or '-'} "
        f"host={socket.gethostname()} pid={os.getpid()}"
    )
    take = text(f"SELECT pg_try_advisory_lock(:cls, :key) /* {tag} */")
    announced = False
    while not conn.execute(take, {"cls": SLOT_CLASS, "key": slot.key}).scalar_one():
        if not announced:
            holder = holder_of(conn, slot)
            if holder is None:
                continue  # released between the two statements: try again at once
            _announce(slot, holder)
            announced = True
        time.sleep(POLL_S)


def _release(conn: Connection, held: bool) -> None:
    """Unlock and close (closing alone would release it; unlocking first tells us whether
    the connection, and so the slot, survived the run)."""
    try:
        try:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except Exception as exc:  # the connection died under us: the lock died with it
            if held:  # else whatever stopped the wait is the error to see
                _log.warning(
                    "the slot's connection was lost while held (%s); the database "
                    "locks of the apply remained the guard",
                    type(exc).__name__,
                )
    finally:
        conn.close()


HOLDER_SQL = text("""
    SELECT a.pid, a.application_name, a.query, a.query_start
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = CAST(:cls AS bigint)::oid AND l.objid = CAST(:key AS bigint)::oid""")


def holder_of(conn: Connection, slot: Slot) -> Holder | None:
    """The session holding ``slot`` in the database ``conn`` is connected to, if any."""
    row = conn.execute(HOLDER_SQL, {"cls": SLOT_CLASS, "key": slot.key}).first()
    if row is None:
        return None
    pid, app, query, query_start = row
    tags = dict(re.findall(r"(\w+)=(\S+)", query or "")) if "safeops slot" in (query or "") else {}
    run = tags.get("run") or (
        app[len(APP_PREFIX) :] if (app or "").startswith(APP_PREFIX) else None
    )
    return Holder(
        backend_pid=int(pid),
        flow_run=None if run in (None, "-") else run,
        flow=None if tags.get("flow") in (None, "-") else tags["flow"],
        host=tags.get("host"),
        pid=tags.get("pid"),
        since=query_start if tags else None,
    )


def _announce(slot: Slot, holder: Holder) -> None:
    """One line, to the run's log (the UI) and to whoever started the run (the CLI)."""
    line = f"waiting for slot {slot.name} ({holder.describe()})"
    _run_logger().info(line)
    events.emit("slot-wait", line=line, slot=slot.name, holder=holder)


def _run_logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return _log


def _whoami() -> tuple[str | None, str | None]:
    """(flow run id, flow name) of the calling run; (None, None) outside a flow run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None, None
    return str(ctx.flow_run.id), (ctx.flow.name if ctx.flow else None)


def _safe(comment: str) -> str:
    """Only characters that cannot end a SQL comment or start a new statement."""
    return re.sub(r"[^A-Za-z0-9 ._:=@-]+", "_", comment)
