"""Answer approval pauses from outside the UI (Prefect 3.8 has no CLI for it).

Talks to whatever Prefect API is configured (PREFECT_API_URL), exactly as the
UI's form does: the answer goes through ``resume_flow_run`` and the server
validates it against the run's form schema.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.input.actions import read_flow_run_input

from safeops.core.errors import BadInput
from tasks.common.approval import APPROVAL_INPUT_KEY


def waiting_approvals() -> list[dict[str, Any]]:
    """Every paused flow run that carries a safeops approval request."""
    out: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        for run in runs:
            request: Any = read_flow_run_input(APPROVAL_INPUT_KEY, flow_run_id=run.id)
            if not request:
                continue
            details = run.state.state_details if run.state else None
            out.append({
                "run_id": str(run.id), "run_name": run.name, **request,
                "waitingSince": (run.state.timestamp.isoformat() if run.state else None),
                "deadline": (details.pause_timeout.isoformat()
                             if details and details.pause_timeout else request.get("deadline")),
            })
    return sorted(out, key=lambda r: str(r.get("waitingSince")))


def _run_id(raw: str) -> UUID:
    try:
        return UUID(raw.strip())
    except ValueError:
        raise BadInput(f"Invalid run id {raw[:64]!r}: expected a flow run UUID.") from None


def answer(run_id: str, answer: dict[str, Any]) -> None:
    """Resume the run with the answer; the server's refusal becomes BadInput (exit 2)."""
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound

    rid = _run_id(run_id)
    try:
        resume_flow_run(rid, run_input=answer)
    except ObjectNotFound:
        raise BadInput(f"No flow run {rid} on this Prefect API.") from None
    except RuntimeError as exc:
        raise BadInput(f"The server refused the answer, the run stays paused: {exc}") from None
    except NotPausedError:
        raise BadInput(f"Flow run {rid} is not waiting for approval.") from None
    except FlowPauseTimeout:
        raise BadInput(f"Flow run {rid} can no longer be resumed (timed out).") from None
