"""The approval step itself: build the request, then pause the flow run until enough
people approve.

Called from a flow (``pause_flow_run`` cannot run inside a task). A saved plan
may stand in for some or all of the pause; otherwise the run pauses once per
answer (keys ``approval``, ``approval-2``, …, all under the first pause's
deadline) until the quorum is met, a rejection ends the run, or time runs out.
Kept apart from what the approver sees (request.py) and from the rules that
judge an answer (votes.py), so the control flow reads on its own.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run

from safeops.core import events, signing
from safeops.core.errors import ApprovalDenied, ApprovalTimedOut
from safeops.core.models import Approval, Plan
from safeops.core.settings import get_settings
from tasks.common.approval.policy import ApprovalPolicy, check_target_identified
from tasks.common.approval.request import (
    ApprovalRequest,
    counts_text,
    record_request,
    record_votes,
)
from tasks.common.approval.saved_plan import check_saved_plan, saved_plan_vote
from tasks.common.approval.votes import (
    approval_of,
    counts_toward_quorum,
    judge,
    register_starters,
    starter_names,
    starter_unknown,
)
from tasks.common.notify import notify_approvers


def request_approval(
    plan: Plan,
    *,
    expected_confirmation: str,
    what: list[str],
    snapshot_uri: str | None,
    timeout_s: int,
    approved_plan_hash: str | None,
    approved_by: str | None,
    approved_plan_signature: str | None = None,
    flow: str | None = None,
    target_fingerprint: str | None = None,
    target_description: str | None = None,
) -> Approval:
    """Pause until enough people approve; raise ApprovalDenied otherwise."""
    run = FlowRunContext.get()
    run_id = str(run.flow_run.id) if run and run.flow_run else None
    flow_name = flow or (run.flow.name if run and run.flow else plan.kind)
    policy = ApprovalPolicy()
    signers = signing.load_allowed_signers()
    if signers is not None:
        check_target_identified(target_fingerprint, policy)
    unknown_starter = starter_unknown(policy.forbid_self_approval)
    register_starters(run_id)  # the CLI's key, before a saved-plan vote is judged
    request = ApprovalRequest(
        plan=plan,
        flow=flow_name,
        flow_run_id=run_id,
        expected_confirmation=expected_confirmation,
        what=what,
        snapshot_uri=snapshot_uri,
        timeout_s=timeout_s,
        target_fingerprint=target_fingerprint,
        target_description=target_description or plan.target,
        signers=signers,
        # An unknown starter may be one of the signers: one approval more (see votes.py).
        required=policy.required_for(flow_name) + (1 if unknown_starter else 0),
        forbid_self=policy.forbid_self_approval,
        starter_unknown=unknown_starter,
        starter_names=starter_names(approved_by, approved_plan_hash is not None),
    )

    via = "pause"
    if approved_plan_hash is not None:
        check_saved_plan(plan, approved_plan_hash)
        vote = saved_plan_vote(request, policy, approved_by, approved_plan_signature)
        why_not = counts_toward_quorum(request, vote)
        if why_not:  # the starter's own saved plan: the pause asks the others
            _log_warning(f"The saved plan signed by {vote.name} does not count: {why_not}.")
        else:
            request.votes.append(vote)
            via = "saved-plan"
            if len(request.votes) >= request.required:
                return approval_of(request, via)
            via = "saved-plan+pause"
    return _pause_until_quorum(request, via)


def _pause_until_quorum(request: ApprovalRequest, via: str) -> Approval:
    plan = request.plan
    request.deadline = datetime.now(UTC) + timedelta(seconds=request.timeout_s)
    record_request(request.flow_run_id, request.record())
    round_no = 0
    while len(request.votes) < request.required:
        round_no += 1
        remaining = (request.deadline - datetime.now(UTC)).total_seconds()
        info = request.record()
        record_votes(request.flow_run_id, info)
        events.emit(
            "approval",
            flow_run_id=_uuid(request.flow_run_id),
            plan=plan,
            expected_confirmation=request.expected_confirmation,
            what=request.what,
            snapshot_uri=request.snapshot_uri,
            deadline=request.deadline,
            request=info,
            round=round_no,
            needed=request.required - len(request.votes),
        )
        notify_approvers("paused", info)
        try:
            if remaining <= 0:
                raise FlowPauseTimeout("no time left")
            timeout = request.timeout_s if round_no == 1 else math.ceil(remaining)
            answer = pause_flow_run(
                wait_for_input=request.form(),
                timeout=timeout,
                poll_interval=get_settings().approval_poll_s,
                key="approval" if round_no == 1 else f"approval-{round_no}",
            )
        except FlowPauseTimeout:
            message = (
                f"Approval timed out after {request.timeout_s} s: nothing changed "
                f"({counts_text(plan)}"
                + (
                    f"; {len(request.votes)} of {request.required} approvals)"
                    if request.required > 1
                    else ")"
                )
                + "."
            )
            notify_approvers("timed-out", request.record(), message)
            raise ApprovalTimedOut(message) from None
        try:
            vote = judge(request, answer)
        except ApprovalDenied as exc:
            notify_approvers("rejected", request.record(), str(exc))
            raise
        why_not = counts_toward_quorum(request, vote)
        if why_not:
            _log_warning(
                f"Approval by {vote.name} does not count: {why_not}; "
                f"{request.required - len(request.votes)} more needed."
            )
            continue
        request.votes.append(vote)
    approval = approval_of(request, via)
    final = request.record()
    record_votes(request.flow_run_id, final)
    notify_approvers(
        "approved", final, f"approved by {approval.approver} (identity: {approval.identity})"
    )
    return approval


def _uuid(value: str | None) -> UUID | None:
    return UUID(value) if value else None


def _log_warning(text: str) -> None:
    with contextlib.suppress(Exception):
        from prefect import get_run_logger

        get_run_logger().warning(text)
