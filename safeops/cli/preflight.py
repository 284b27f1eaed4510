"""What a command can check before Prefect is imported or started.

A mistyped site id, an unset or malformed database URL, a snapshot that is not there or
a database that cannot be reached used to cost ~15 s of Prefect start-up before the
flow said so. The same checks run here first, with the same functions and so the same
one-line message and exit code (``handle_errors``); the flow still makes every one of
them again, for runs started from the UI, a schedule or a deployment.

Nothing here may claim more than it knows: a target whose URL is not in the
environment may still have a Prefect Secret block, so it is declared missing only
when no Prefect API could hold that block (see :func:`secret_block_state`); anything
uncertain is left to the flow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safeops.core.errors import SnapshotNotFound
from safeops.core.site_id import parse_site_id
from safeops.core.targets import env_var_for, missing_database, secret_block_name, validate_target

if TYPE_CHECKING:
    from safeops.core.dsn import ParsedDsn

# Heavier modules (psycopg, pydantic-settings) are imported only by the checks that need
# them: an unset variable or a mistyped id is answered in the time of `safeops --help`.

# Short: a reachable server answers in milliseconds; a slow link still gets the retries.
CONNECT_TIMEOUT_S = 5

BlockState = Literal["present", "absent", "unknown"]


def check(
    target: str,
    *,
    site_id: str | None = None,
    snapshot_uri: str | None = None,
    location: str | None = None,
) -> None:
    """Everything a command's input can be checked for without Prefect; raises the flow's
    own SafeopsError (BadInput exit 2, DatabaseUnreachable exit 1)."""
    if site_id is not None:
        parse_site_id(site_id)
    validate_target(target)
    if snapshot_uri is not None:
        _snapshot_exists(snapshot_uri)
    if location is not None:
        from safeops.core.snapshot_store import parse_location

        parse_location(location)
    raw = os.environ.get(env_var_for(target))
    if raw:
        from safeops.core.dsn import parse_dsn

        reachable(parse_dsn(raw))
    elif secret_block_state(target) == "absent":
        raise missing_database(target)


def _snapshot_exists(uri: str) -> None:
    """A local snapshot must be a file (the flow's own message); s3:// is left to the flow,
    which knows the endpoint and credentials."""
    from safeops.core.snapshot_store import split_uri

    location, name = split_uri(uri)
    if location.scheme == "file":
        path = Path(location.root) / name
        if not path.is_file():
            raise SnapshotNotFound(f"No snapshot file at {path}.")


# What a server says while it cannot take a connection *yet*: worth the tasks' retries.
# Anything else (refused port, unknown host, timeout, unknown database) is answered at
# once: a person is waiting at the terminal, and the flow's tasks retry mid-run faults.
_SERVER_BUSY = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "too many clients already",
)


def reachable(dsn: ParsedDsn) -> None:
    """Connect once, as the flow's first task would. Only a server that says it is
    starting up, in recovery or full gets the tasks' retries (1, 3, 9 s by default); a
    closed port or an unknown host fails at once (measured by the attack review: 13.8 s
    of silence before an unreachable host was reported, with those retries)."""
    import psycopg

    from safeops.core.settings import get_settings

    delay = get_settings().retry_delay_s
    delays = [delay, 3 * delay, 9 * delay]
    while True:
        try:
            conn = psycopg.connect(
                **dsn.connect_kwargs(
                    connect_timeout=CONNECT_TIMEOUT_S, application_name="safeops-preflight"
                )
            )
        except psycopg.Error as exc:
            failure = dsn.connect_failure(exc)
            busy = isinstance(exc, psycopg.OperationalError) and any(
                phrase in str(exc) for phrase in _SERVER_BUSY
            )
            if not busy or not delays:
                raise failure from None
            time.sleep(delays.pop(0))
            continue
        conn.close()
        return


def secret_block_state(target: str) -> BlockState:
    """Whether the Secret block ``<target>-database-url`` exists where the flow would look.

    With a configured Prefect API: ask its REST API (404 is "absent"; any other answer,
    an unreachable API or a refused key is "unknown"). Without one, the block can only
    live in the local server's database: absent when that database was never created,
    else read from it (SQLite, read-only)."""
    from safeops.cli.local_server import configured_api_url, database_path

    api = configured_api_url()
    if api:
        return _block_via_api(api, secret_block_name(target))
    return _block_in_database(database_path(), secret_block_name(target))


def _block_via_api(api: str, name: str) -> BlockState:
    import httpx

    headers = {}
    if os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
    elif os.environ.get("PREFECT_API_AUTH_STRING"):
        import base64

        token = base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        response = httpx.get(
            f"{api.rstrip('/')}/block_types/slug/secret/block_documents/name/{name}",
            headers=headers,
            timeout=5.0,
        )
    except httpx.HTTPError:
        return "unknown"
    if response.status_code == 200:
        return "present"
    if response.status_code == 404 and _detail(response) in NOT_FOUND_DETAILS:
        return "absent"
    return "unknown"  # a bare 404 is a wrong URL, not a missing block


# Prefect's own answers for a block that is not there (any other 404 is a wrong URL).
NOT_FOUND_DETAILS = ("Block document not found", "Block type not found")


def _detail(response: object) -> str | None:
    try:
        body = response.json()  # type: ignore[attr-defined]
    except ValueError:
        return None
    return body.get("detail") if isinstance(body, dict) else None


def _block_in_database(path: Path, name: str) -> BlockState:
    if not path.exists():
        return "absent"
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0) as db:
            row = db.execute(
                "SELECT 1 FROM block_document d JOIN block_type t ON t.id = d.block_type_id "
                "WHERE t.slug = 'secret' AND d.name = ?",
                (name,),
            ).fetchone()
    except sqlite3.Error:
        return "unknown"
    return "present" if row else "absent"


def before_prefect(
    target: str,
    *,
    site_id: str | None = None,
    snapshot_uri: str | None = None,
    location: str | None = None,
) -> None:
    """What every flow-running command does first: refuse bad input at once, then point
    the process at a Prefect API (the operator's, else the machine's local server).

    A local server that has to be started boots while this process imports what every
    flow command needs (Prefect, the runner, SQLAlchemy): on two cores that hides most
    of the import behind the server's start-up."""
    from safeops.cli import local_server

    check(target, site_id=site_id, snapshot_uri=snapshot_uri, location=location)
    local_server.use_for_this_command(wait=False)
    try:
        import safeops.console.runner
        import safeops.core.db  # noqa: F401
    finally:
        local_server.ready()
