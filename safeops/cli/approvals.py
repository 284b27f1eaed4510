"""Answer approval pauses from outside the UI (Prefect 3.8 has no CLI for it).

Talks to whatever Prefect API is configured (PREFECT_API_URL), exactly as the
UI's form does: the answer goes through ``resume_flow_run`` and the server
validates it against the run's form schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
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

from safeops.core import signing
from safeops.core.errors import BadInput
from tasks.common.approval import APPROVAL_INPUT_KEY, VOTES_INPUT_KEY, signed_answer

if TYPE_CHECKING:
    from tasks.common.audit import AuditRow


def waiting_approvals() -> list[dict[str, Any]]:
    """Every paused flow run that carries a safeops approval request."""
    out: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            )
        )
        for run in runs:
            request: Any = read_flow_run_input(APPROVAL_INPUT_KEY, flow_run_id=run.id)
            if not request:
                continue
            votes: Any = read_flow_run_input(VOTES_INPUT_KEY, flow_run_id=run.id) or {}
            request = {**request, **votes}
            details = run.state.state_details if run.state else None
            out.append(
                {
                    "run_id": str(run.id),
                    "run_name": run.name,
                    **request,
                    "waitingSince": (run.state.timestamp.isoformat() if run.state else None),
                    "deadline": (
                        details.pause_timeout.isoformat()
                        if details and details.pause_timeout
                        else request.get("deadline")
                    ),
                }
            )
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


def read_request(run_id: str) -> dict[str, Any] | None:
    """The approval request a paused run recorded (None for a run without one)."""
    rid = _run_id(run_id)
    try:
        request: Any = read_flow_run_input(APPROVAL_INPUT_KEY, flow_run_id=rid)
    except Exception:
        return None
    return dict(request) if request else None


def answer_for(
    run_id: str,
    *,
    decision: str,
    reason: str,
    confirmation: str,
    approver: str | None,
    key: str | None,
) -> dict[str, Any]:
    """The answer a run expects: signed when its worker has allowed signers."""
    request = read_request(run_id)
    if request and request.get("signed"):
        return signed_answer(
            request, decision=decision, reason=reason, confirmation=confirmation, key=key
        )
    from safeops.console.runner import current_user

    return {
        "approver": current_user() if approver is None else approver,
        "reason": reason,
        "confirmation": confirmation,
        "decision": decision,
    }


def sign_plan(plan_hash: str, *, flow: str, target: str, reason: str, key: str | None) -> str:
    """A signed saved plan: the statement (``flow_run_id: saved-plan``, now) then its
    signature, bound to the target database's fingerprint, read here."""
    from safeops.core.db import engine_for, fingerprint, transaction

    engine = engine_for(target)
    try:
        with transaction(engine, read_only=True) as conn:
            target_fingerprint = str(fingerprint(conn))
    finally:
        engine.dispose()
    statement = signing.Statement(
        flow_run_id=signing.SAVED_PLAN_RUN_ID,
        flow=flow,
        target_fingerprint=target_fingerprint,
        plan_hash=plan_hash.strip(),
        decision="approve",
        reason=reason.strip(),
        signed_at=datetime.now(UTC),
    )
    text = statement.text()
    return text + signing.sign(text, key)


def verify_audit(target: str) -> tuple[list[str], bool]:
    """Re-check every signed audit row of ``target`` against SAFEOPS_ALLOWED_SIGNERS: one
    line per row, and whether every signed row still verifies."""
    from safeops.core.db import engine_for, read_snapshot
    from safeops.core.errors import ApprovalDenied
    from tasks.common.audit import audit_rows

    signers = signing.load_allowed_signers()
    if signers is None:
        raise BadInput("SAFEOPS_ALLOWED_SIGNERS is not set: nothing to verify signatures against.")
    engine = engine_for(target)
    try:
        with read_snapshot(engine) as conn:
            rows = audit_rows(conn)
    finally:
        engine.dispose()
    lines: list[str] = []
    ok = True
    for row in rows:
        head = (
            f"audit {row.id} {row.applied_at:%Y-%m-%dT%H:%M:%SZ} {row.flow_name} "
            f"run={row.flow_run_id or '-'} plan={row.plan_hash[:16]}"
        )
        if not row.signatures:
            if row.identity != "unverified":  # signatures removed from a signed row
                ok = False
                lines.append(
                    f"{head}: MISMATCH identity {row.identity!r} but the row holds no signature"
                )
            else:
                lines.append(
                    f"{head}: unverified (no signature; approver {row.approver!r} as typed)"
                )
            continue
        row_problems = _row_problems(row)
        if row_problems:
            ok = False
        verdicts = []
        for vote in row.signatures:
            try:
                signer = signing.verify(
                    str(vote.get("statement", "")), str(vote.get("signature", "")), signers
                )
                statement = signing.Statement.parse(str(vote.get("statement", "")))
                problems = [
                    name
                    for name, got, want in (
                        ("plan_hash", statement.plan_hash, row.plan_hash),
                        ("flow", statement.flow, row.flow_name),
                        ("decision", statement.decision, "approve"),
                    )
                    if got != want
                ]
                if statement.flow_run_id != signing.SAVED_PLAN_RUN_ID and statement.flow_run_id != (
                    row.flow_run_id or ""
                ):
                    problems.append("flow_run_id")
                if signer.principal != vote.get("principal"):
                    problems.append(f"principal is now {signer.principal}")
                if problems:
                    ok = False
                    verdicts.append(f"MISMATCH {vote.get('principal')} ({', '.join(problems)})")
                else:
                    verdicts.append(f"ok {signer.principal} {signer.fingerprint}")
            except (ApprovalDenied, BadInput) as exc:
                ok = False
                verdicts.append(f"FAILED {vote.get('principal')}: {exc}")
        if row_problems:
            verdicts.insert(0, f"MISMATCH row ({'; '.join(row_problems)})")
        lines.append(f"{head}: " + "; ".join(verdicts))
    return lines, ok


def _row_problems(row: AuditRow) -> list[str]:
    """What a signed row says about its signatures that they do not: the approver is
    written as the signers' principals joined by `` + `` (``approval_of``), and a row
    with signatures is ``verified``."""
    problems = []
    signers = " + ".join(str(vote.get("principal", "")) for vote in row.signatures)
    if row.approver != signers:
        problems.append(f"approver {row.approver!r} is not the signers {signers!r}")
    if row.identity != "verified":
        problems.append(f"identity {row.identity!r} but signed")
    return problems
