"""Turning an approver's answer into a vote, and votes into an approval.

Everything that decides whether an answer counts lives here: the checks on an
unsigned answer (name, allowlist, confirmation, reason), the verification of a
signed one (the statement must name this run, flow, target, plan and decision,
signed no earlier than the request), the quorum rules (distinct signers, no
self-approval with SAFEOPS_FORBID_SELF_APPROVAL) and the record of who started
the run. Kept apart from the pause so the rules can be read without Prefect's
control flow around them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from prefect.context import FlowRunContext

from safeops.core import signing
from safeops.core.errors import (
    ApprovalDenied,
    StatementInvalid,
    StatementMalformed,
    StatementMismatch,
)
from safeops.core.models import Approval, SignedVote
from tasks.common.approval.policy import check_allowlist
from tasks.common.approval.request import ApprovalRequest, Vote

# --- who started the run --------------------------------------------------------

_local_starters: dict[str, set[str]] = {}
_starters_lock = threading.Lock()


def register_starter(flow_run_id: Any, key_fingerprint: str) -> None:
    """The CLI that started ``flow_run_id`` in this process signed with this key: with
    SAFEOPS_FORBID_SELF_APPROVAL its signatures never count toward the run's quorum."""
    with _starters_lock:
        _local_starters.setdefault(str(flow_run_id), set()).add(key_fingerprint)


_starting_keys: ContextVar[frozenset[str]] = ContextVar(
    "safeops_starting_keys", default=frozenset()
)


@contextmanager
def starting_with_key(key_fingerprint: str | None) -> Iterator[None]:
    """Runs started inside this block are started by the CLI that will sign with this key:
    known before the run (and its saved-plan vote) exists, so a saved plan the starter
    signed herself does not count toward her own run either (``register_starters``)."""
    if not key_fingerprint:
        yield
        return
    token = _starting_keys.set(_starting_keys.get() | {key_fingerprint})
    try:
        yield
    finally:
        _starting_keys.reset(token)


def register_starters(flow_run_id: str | None) -> None:
    """Register the keys of the CLI starting this run (``starting_with_key``)."""
    if flow_run_id:
        for fingerprint in _starting_keys.get():
            register_starter(flow_run_id, fingerprint)


def forget_starter(flow_run_id: Any) -> None:
    with _starters_lock:
        _local_starters.pop(str(flow_run_id), None)


def _starter_keys(flow_run_id: str) -> set[str]:
    with _starters_lock:
        return set(_local_starters.get(flow_run_id, set()))


def starter_names(approved_by: str | None, saved_plan: bool) -> set[str]:
    """Names that started this run: ``approved_by`` of a run without a saved plan, and
    the Prefect user who created the run (when the server records one)."""
    names: set[str] = set()
    if approved_by and approved_by.strip() and not saved_plan:
        names.add(approved_by.strip())
    user = _creating_user()
    if user:
        names.add(user)
    return names


def _creating_user() -> str | None:
    """The Prefect user who created this run: Prefect Cloud records one; an open-source
    server has no login, so it never does (``created_by`` is empty or names a
    deployment, schedule or automation, none of which is a person)."""
    run = FlowRunContext.get()
    creator = getattr(run.flow_run, "created_by", None) if run and run.flow_run else None
    if creator is not None and str(getattr(creator, "type", "")).upper().endswith("USER"):
        value = getattr(creator, "display_value", None)
        return str(value) if value else None
    return None


def starter_unknown(forbid_self: bool) -> bool:
    """True when self-approval is forbidden but nothing trustworthy says who started the run.

    A run the CLI starts in its own process is started by that CLI, whose signing key is
    registered (``register_starter``) when it answers. A deployment run (the UI's *Run*,
    ``prefect deployment run``, the API) is started by whoever could reach the API: the
    open-source server authenticates nobody and records no user, and ``approved_by`` is
    only typed text. Such a starter may well be one of the signers, so the caller asks
    for one approval more: among ``required + 1`` distinct signers at most one started
    the run, so ``required`` others approved it, whoever that was.
    """
    if not forbid_self:
        return False
    run = FlowRunContext.get()
    flow_run = run.flow_run if run else None
    if flow_run is None or getattr(flow_run, "deployment_id", None) is None:
        return False
    return _creating_user() is None


# --- judging one answer -----------------------------------------------------------------


def judge(request: ApprovalRequest, answer: Any) -> Vote:
    """The vote an answer casts, or the refusal that ends the run."""
    if request.signers is None:
        return _judge_unsigned(request, answer)
    return _judge_signed(request, answer)


def _judge_unsigned(request: ApprovalRequest, answer: Any) -> Vote:
    approver = str(getattr(answer, "approver", "") or "").strip()
    if answer.decision == "reject":
        raise ApprovalDenied(
            f"Rejected by {approver or 'unknown'}: {answer.reason.strip()} — nothing changed."
        )
    if not approver:
        raise ApprovalDenied("Approval refused: the approver's name is empty; nothing changed.")
    check_allowlist(approver)
    _check_confirmation(request, answer)
    if not answer.reason.strip():
        raise ApprovalDenied("Approval refused: a reason is required; nothing changed.")
    return Vote(name=approver, reason=answer.reason.strip())


def _judge_signed(request: ApprovalRequest, answer: Any) -> Vote:
    assert request.signers is not None and request.flow_run_id and request.target_fingerprint
    reason = answer.reason.strip()
    signature = str(getattr(answer, "signature", "") or "")
    if answer.decision == "reject" and not signature.strip():
        raise ApprovalDenied(f"Rejected (unsigned answer): {reason} — nothing changed.")
    signing.require_signature(signature)
    text = _statement_text(request, answer)
    verified = verify_signed(
        request, text, signature, flow_run_id=request.flow_run_id, not_before=request.requested_at
    )
    statement, signer = verified.statement, verified.signer
    if statement.decision != answer.decision:
        raise StatementMismatch(
            f"Refused: the signed statement says {statement.decision!r} but the answer "
            f"says {answer.decision!r}; nothing changed.",
            field="decision",
        )
    if statement.decision == "reject":
        raise ApprovalDenied(
            f"Rejected by {signer.principal} ({signer.fingerprint}): "
            f"{statement.reason} — nothing changed."
        )
    check_allowlist(signer.principal)
    _check_confirmation(request, answer)
    return signed_vote(verified, text, signature)


def _statement_text(request: ApprovalRequest, answer: Any) -> str:
    """The statement as sent (CLI), else rebuilt from the form's fields (UI)."""
    sent = str(getattr(answer, "statement", "") or "")
    if sent.strip():
        text = sent.replace("\r\n", "\n").strip("\n") + "\n"
        return text
    assert request.flow_run_id and request.target_fingerprint
    try:
        return signing.Statement(
            flow_run_id=request.flow_run_id,
            flow=request.flow,
            target_fingerprint=request.target_fingerprint,
            plan_hash=request.plan.plan_hash,
            decision=answer.decision,
            reason=answer.reason.strip(),
            signed_at=signing.parse_time(str(answer.signed_at)),
        ).text()
    except StatementInvalid as exc:
        raise StatementMalformed(f"Refused: the answer's {exc}") from None


def _check_confirmation(request: ApprovalRequest, answer: Any) -> None:
    if answer.confirmation.strip() != request.expected_confirmation:
        raise ApprovalDenied(
            f"Approval refused: confirmation {answer.confirmation.strip()!r} does not "
            f"match {request.expected_confirmation!r}; nothing changed."
        )


# --- quorum -----------------------------------------------------------------------------


def counts_toward_quorum(request: ApprovalRequest, vote: Vote) -> str | None:
    """Why this approval does not count (a starter, a repeat), or None."""
    for earlier in request.votes:
        if earlier.name == vote.name or (
            earlier.signed and vote.signed and earlier.signed.fingerprint == vote.signed.fingerprint
        ):
            return f"{vote.name} already approved this run"
    if request.forbid_self:
        starter_keys = _starter_keys(request.flow_run_id or "")
        # A starter is her principal, not one key: another key listed under the same
        # principal (or any principal of a starter key) never counts either.
        starter_principals: set[str] = set()
        voter_principals = {vote.name}
        if request.signers is not None:
            starter_principals = request.signers.principals_of(starter_keys)
            if vote.signed:
                voter_principals |= request.signers.principals_of({vote.signed.fingerprint})
        if (
            vote.name in request.starter_names
            or voter_principals & starter_principals
            or (vote.signed and vote.signed.fingerprint in starter_keys)
        ):
            return f"{vote.name} started this run and SAFEOPS_FORBID_SELF_APPROVAL is set"
    return None


def approval_of(request: ApprovalRequest, via: str) -> Approval:
    """The approval the votes so far amount to (recorded in the audit row)."""
    signed = [v.signed for v in request.votes if v.signed is not None]
    verified = request.signers is not None and len(signed) == len(request.votes)
    return Approval(
        approver=" + ".join(v.name for v in request.votes),
        reason=" | ".join(v.reason for v in request.votes),
        via=via,
        identity="verified" if verified else "unverified",
        signatures=signed,
    )


def signed_vote(verified: signing.VerifiedApproval, text: str, signature: str) -> Vote:
    """The vote a verified statement casts, recorded with what re-verifies it later."""
    return Vote(
        name=verified.signer.principal,
        reason=verified.statement.reason,
        signed=SignedVote(
            principal=verified.signer.principal,
            fingerprint=verified.signer.fingerprint,
            statement=text,
            signature=signature.strip() + "\n",
        ),
    )


def verify_signed(
    request: ApprovalRequest,
    text: str,
    signature: str,
    *,
    flow_run_id: str,
    not_before: datetime,
    now: datetime | None = None,
) -> signing.VerifiedApproval:
    """A signed statement checked against this request's flow, target and plan: the same
    binding for an answer to the pause and for a signed saved plan, which differ only
    in the run they name and how old the statement may be."""
    assert request.signers is not None and request.target_fingerprint
    return signing.verify_approval(
        text,
        signature,
        request.signers,
        flow_run_id=flow_run_id,
        flow=request.flow,
        target_fingerprint=request.target_fingerprint,
        plan_hash=request.plan.plan_hash,
        not_before=not_before,
        now=now,
    )
