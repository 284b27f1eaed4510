"""The flow run a task runs in, as the audit table stores it (a UUID, or None).

Its own module because every apply step writes it into its audit row and looks
for it when a retry asks "did this run commit already?".
"""

from __future__ import annotations

from uuid import UUID

from prefect.runtime import flow_run


def current_flow_run_id() -> UUID | None:
    """The id of the flow run in progress; None outside a run (a plain call, a CLI upload)."""
    run_id = flow_run.id
    return UUID(run_id) if run_id else None
