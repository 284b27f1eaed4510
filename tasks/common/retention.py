"""Snapshot retention for scheduled snapshots: keep the newest N, never an audited one."""

from __future__ import annotations

from prefect import task
from sqlalchemy import text

from safeops.core.db import engine_for, transaction
from safeops.core.errors import BadInput
from safeops.core.snapshot_store import (
    list_snapshots,
    parse_location,
    remove,
    remove_leftover_parts,
)
from tasks.common.retry import TRANSIENT_RETRIES

AUDIT_PROTECTION_DAYS = 30


def audited_snapshots(target: str, days: int = AUDIT_PROTECTION_DAYS) -> set[str]:
    """Snapshot URIs an apply referenced recently: undo points someone may still need."""
    with transaction(engine_for(target), read_only=True) as conn:
        if not conn.execute(
            text("SELECT to_regclass('safeops.safeops_audit') IS NOT NULL")
        ).scalar_one():
            return set()
        rows = conn.execute(
            text(
                "SELECT DISTINCT snapshot_uri FROM safeops.safeops_audit "
                "WHERE snapshot_uri IS NOT NULL AND applied_at > now() - make_interval(days => :d)"
            ),
            {"d": days},
        ).scalars()
        return {str(r) for r in rows}


@task(name="prune-snapshots", **TRANSIENT_RETRIES)
def prune_snapshots(
    target: str, location: str | None, name_prefix: str, keep: int
) -> dict[str, list[str]]:
    if keep < 1:
        raise BadInput(f"keep must be at least 1, got {keep}.")
    where = parse_location(location)
    uris = list_snapshots(where, name_prefix + "-")
    protected = audited_snapshots(target)
    candidates = uris[:-keep] if len(uris) > keep else []
    pruned, kept_for_audit = [], []
    for uri in candidates:
        if uri in protected:
            kept_for_audit.append(uri)
            continue
        remove(uri)
        pruned.append(uri)
    return {
        "pruned": pruned,
        "kept_for_audit": kept_for_audit,
        "kept": uris[-keep:],
        "leftover_parts_removed": remove_leftover_parts(where),
    }
