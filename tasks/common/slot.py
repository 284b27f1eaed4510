"""One destructive run per target at a time, queued by Prefect.

A global concurrency limit of 1 per database (media) or per site (CMS),
created on first use and taken with ``strict=True`` so a missing limit can
never silently mean "no limit". The database lock inside the apply stays the
real guard; this makes a second run wait its turn instead of failing on it.

A holder that dies without releasing its slot (SIGKILL, a closed terminal, a
crashed worker) must not block its target for ever. The slot is taken with a
lease that a background thread renews while the run lives (a server's
repossessor frees expired leases; an ephemeral API has none), and the holder
is recorded in a Prefect Variable ``<limit>-holder`` (host, pid, flow run,
lease). A waiting run that finds the recorded holder dead (same host and its
process gone, or its flow run finished) releases the dead lease, as the holder
would have, and takes its turn.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEASE_S = 300.0  # Prefect's default; renewed every ~225 s while the run lives
POLL_S = 2.0  # how often a waiting run looks for a dead holder


def limit_name(*parts: str) -> str:
    return "safeops-" + "-".join(re.sub(r"[^a-z0-9-]+", "-", p.lower()) for p in parts)


def ensure_limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))


@contextmanager
def one_at_a_time(target: str, *scope: str, enabled: bool = True) -> Iterator[None]:
    """Hold the target's single slot for the whole live run (approval included)."""
    name = limit_name(target, *scope)
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import release_concurrency_slots_with_lease

    if not enabled:
        yield
        return
    ensure_limit(name)
    lease_id = _acquire(name)
    try:
        with contextlib.suppress(Exception):  # best effort: without it, no stale detection
            _record_holder(name, lease_id)
        with maintain_concurrency_lease(lease_id, LEASE_S, raise_on_lease_renewal_failure=True):
            yield
    finally:
        _forget_holder(name, str(lease_id))
        release_concurrency_slots_with_lease(lease_id)


def _acquire(name: str) -> UUID:
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    dead_seen: dict[str, int] = {}
    while True:
        try:
            return acquire_concurrency_slots_with_lease(
                [name], 1, timeout_seconds=POLL_S, lease_duration=LEASE_S, strict=True).lease_id
        except TimeoutError:
            _reclaim_if_dead(name, dead_seen)


# ---------------------------------------------------------------- the recorded holder


def _holder_variable(name: str) -> str:
    return f"{name}-holder"


def _record_holder(name: str, lease_id: UUID) -> None:
    from prefect.context import FlowRunContext
    from prefect.variables import Variable

    ctx = FlowRunContext.get()
    Variable.set(_holder_variable(name), {
        "lease": str(lease_id), "host": socket.gethostname(), "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "flowRun": str(ctx.flow_run.id) if ctx and ctx.flow_run else None,
    }, overwrite=True)


def _read_holder(name: str) -> dict[str, Any] | None:
    from prefect.variables import Variable

    value = Variable.get(_holder_variable(name), default=None)
    return value if isinstance(value, dict) else None


def _forget_holder(name: str, lease: str) -> None:
    """Remove the record if it is still this lease's (best effort)."""
    from prefect.variables import Variable

    with contextlib.suppress(Exception):
        holder = _read_holder(name)
        if holder is not None and holder.get("lease") == lease:
            Variable.unset(_holder_variable(name))


def _reclaim_if_dead(name: str, dead_seen: dict[str, int]) -> None:
    """Release the slot of a recorded holder that is provably dead."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.concurrency._sync import release_concurrency_slots_with_lease
    from prefect.logging.loggers import get_logger

    holder = _read_holder(name)
    if holder is None or not _is_dead(holder):
        return
    lease = str(holder.get("lease"))
    dead_seen[lease] = dead_seen.get(lease, 0) + 1
    get_logger("safeops").warning(
        "%s: the run holding it (flow run %s, pid %s on %s) is gone; releasing its slot",
        name, holder.get("flowRun"), holder.get("pid"), holder.get("host"))
    # Exactly what the holder would have done; a no-op if the server never knew the lease.
    release_concurrency_slots_with_lease(UUID(lease))
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots >= limit.limit and dead_seen[lease] >= 2 \
                and _read_holder(name) == holder:
            # The lease lived in an API process that is gone (an ephemeral server): its slot
            # is still counted and nobody else can free it.
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(active_slots=limit.active_slots - 1))
    _forget_holder(name, lease)


def _is_dead(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _alive(holder["pid"], holder.get("start")):
        return True
    run_id = holder.get("flowRun")
    if run_id:
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
            return bool(state is not None and state.is_final())
    return False


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return not (start is not None and now != start)


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux), so a reused pid is not mistaken for the holder;
    None for a zombie (it is dead) or where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]
