"""The human approval step, shared by every destructive flow.

Called from a flow (``pause_flow_run`` cannot run inside a task). The approver
types a confirmation that repeats what will happen, so a click-through
approval is impossible; a saved plan hash stands in for the pause when it
matches the plan exactly (Terraform's saved-plan habit).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.input.actions import create_flow_run_input
from pydantic import Field

from safeops.core import events
from safeops.core.errors import ApprovalDenied, ApprovalTimedOut, PlanMismatch
from safeops.core.hash_text import printable
from safeops.core.models import Approval, Plan
from safeops.core.settings import get_settings


class ApprovalForm(RunInput):
    """What the approver fills in (rendered as a form in the Prefect UI)."""

    approver: str = Field(min_length=1, max_length=200,
                          description="Your name, as recorded in the audit row.")
    reason: str = Field(min_length=1, max_length=2000,
                        description="Why this change is being made (ticket, context).")
    confirmation: str = Field(description="Type the confirmation text shown above, exactly.")
    decision: Literal["approve", "reject"] = Field(
        "approve", description="Choose 'reject' to stop the run with nothing changed.")


def check_saved_plan(plan: Plan, approved_plan_hash: str | None) -> None:
    """A saved plan must be the whole current hash; the refusal shows the typed value
    (up to 64 characters) and the whole current hash, so a prefix or a typo is visible."""
    if approved_plan_hash is not None and approved_plan_hash.strip() != plan.plan_hash:
        given = approved_plan_hash.strip()
        advice = (f"it is only its first {len(given)} characters: pass the whole hash"
                  if given and plan.plan_hash.startswith(given) else "run a dry run again")
        raise PlanMismatch(
            f"Refused: the approved plan {printable(given) or '(empty)'} does not match the "
            f"current plan {plan.plan_hash} ({_counts_text(plan)}); {advice}.")


def _counts_text(plan: Plan) -> str:
    return ", ".join(f"{k}={v}" for k, v in plan.counts.items())


def request_approval(plan: Plan, *, expected_confirmation: str, what: list[str],
                     snapshot_uri: str | None, timeout_s: int,
                     approved_plan_hash: str | None, approved_by: str | None) -> Approval:
    """Pause until someone approves; raise ApprovalDenied otherwise."""
    if approved_plan_hash is not None:
        check_saved_plan(plan, approved_plan_hash)
        approval = Approval(approver=approved_by or "unknown",
                            reason=f"saved plan {plan.plan_hash}", via="saved-plan")
        _check_allowlist(approval.approver)
        return approval

    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    description = "\n".join([
        f"## Approve {plan.kind} on `{plan.target}`", "",
        "This will:", *[f"- {line}" for line in what], "",
        f"Snapshot (undo point): `{snapshot_uri}`", "",
        f"Plan hash: `{plan.plan_hash}`", "",
        f"Type **{expected_confirmation}** in *confirmation* to approve. "
        f"Deadline: {deadline.isoformat(timespec='seconds')}.",
    ])
    form = ApprovalForm.with_initial_data(description=description, confirmation="",
                                          decision="approve")
    run = FlowRunContext.get()
    run_id = run.flow_run.id if run and run.flow_run else None
    record_request(run_id, {
        "flow": run.flow.name if run and run.flow else plan.kind, "target": plan.target,
        "counts": plan.counts, "planHash": plan.plan_hash,
        "expectedConfirmation": expected_confirmation, "what": what,
        "snapshotUri": snapshot_uri, "requestedAt": datetime.now(UTC).isoformat(),
        "deadline": deadline.isoformat()})
    events.emit("approval", flow_run_id=run_id, plan=plan,
                expected_confirmation=expected_confirmation, what=what,
                snapshot_uri=snapshot_uri, deadline=deadline)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s,
                                poll_interval=get_settings().approval_poll_s, key="approval")
    except FlowPauseTimeout:
        raise ApprovalTimedOut(
            f"Approval timed out after {timeout_s} s: nothing changed "
            f"({_counts_text(plan)}).") from None
    approver = answer.approver.strip()
    if answer.decision == "reject":
        raise ApprovalDenied(f"Rejected by {approver or 'unknown'}: {answer.reason.strip()} "
                             "— nothing changed.")
    if not approver:
        raise ApprovalDenied("Approval refused: the approver's name is empty; nothing changed.")
    _check_allowlist(approver)
    if answer.confirmation.strip() != expected_confirmation:
        raise ApprovalDenied(
            f"Approval refused: confirmation {answer.confirmation.strip()!r} does not match "
            f"{expected_confirmation!r}; nothing changed.")
    if not answer.reason.strip():
        raise ApprovalDenied("Approval refused: a reason is required; nothing changed.")
    return Approval(approver=approver, reason=answer.reason.strip(), via="pause")


APPROVAL_INPUT_KEY = "safeops-approval"


def record_request(flow_run_id: UUID | None, request: dict[str, Any]) -> None:
    """Store what is being approved on the run, so `safeops approvals` can list it."""
    if flow_run_id is None:
        return
    with contextlib.suppress(Exception):  # a re-run of the same run keeps the first record
        create_flow_run_input(key=APPROVAL_INPUT_KEY, value=request, flow_run_id=flow_run_id)


def _check_allowlist(approver: str) -> None:
    allowed = get_settings().approvers
    if allowed is not None and approver not in allowed:
        raise ApprovalDenied(
            f"Approval refused: {approver!r} is not in SAFEOPS_APPROVERS "
            f"({len(allowed)} allowed); nothing changed.")
