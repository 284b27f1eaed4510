"""Saved plans: an approval given ahead of the run, in place of (part of) the pause.

A saved plan hash must be the whole current plan hash (Terraform's saved-plan
habit). With allowed signers configured it comes signed (``safeops sign-plan``):
a statement for ``flow_run_id: saved-plan``, signed at most
``SAFEOPS_SAVED_PLAN_MAX_AGE_S`` ago, followed by its armored SSH signature.
Kept apart because it has its own time rule and its own file format.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from safeops.core import signing
from safeops.core.errors import ApprovalDenied, PlanMismatch, SignatureMissing
from safeops.core.hash_text import printable
from safeops.core.models import Plan
from tasks.common.approval.policy import ApprovalPolicy, check_allowlist
from tasks.common.approval.request import ApprovalRequest, Vote, counts_text
from tasks.common.approval.votes import signed_vote, verify_signed

SIGNATURE_BEGIN = "-----BEGIN SSH SIGNATURE-----"


def check_saved_plan(plan: Plan, approved_plan_hash: str | None) -> None:
    """A saved plan must be the whole current hash; the refusal shows the typed value
    (up to 64 characters) and the whole current hash, so a prefix or a typo is visible."""
    if approved_plan_hash is not None and approved_plan_hash.strip() != plan.plan_hash:
        given = approved_plan_hash.strip()
        advice = (
            f"it is only its first {len(given)} characters: pass the whole hash"
            if given and plan.plan_hash.startswith(given)
            else "run a dry run again"
        )
        raise PlanMismatch(
            f"Refused: the approved plan {printable(given) or '(empty)'} does not match the "
            f"current plan {plan.plan_hash} ({counts_text(plan)}); {advice}."
        )


def saved_plan_vote(
    request: ApprovalRequest,
    policy: ApprovalPolicy,
    approved_by: str | None,
    signed_plan: str | None,
) -> Vote:
    """The vote a saved plan casts: ``approved_by`` when unsigned, else the principal
    whose signature over the saved-plan statement verifies."""
    reason = f"saved plan {request.plan.plan_hash}"
    if request.signers is None:
        approver = approved_by or "unknown"
        check_allowlist(approver)
        return Vote(name=approver, reason=reason)
    assert request.target_fingerprint
    text, signature = split_signed_plan(signed_plan)
    if not signature.strip():  # say how to sign a saved plan, not how to answer a pause
        raise SignatureMissing(
            f"Refused: saved plan {request.plan.plan_hash} carries no signature and "
            "SAFEOPS_ALLOWED_SIGNERS is set; sign it with `safeops sign-plan HASH --flow "
            f"{request.flow} --target {request.plan.target} --reason ... --out FILE` and pass "
            "--plan-signature FILE (parameter approved_plan_signature); nothing changed."
        )
    now = datetime.now(UTC)
    verified = verify_signed(
        request,
        text,
        signature,
        flow_run_id=signing.SAVED_PLAN_RUN_ID,
        not_before=now - timedelta(seconds=policy.saved_plan_max_age_s),
        now=now,
    )
    statement, signer = verified.statement, verified.signer
    if statement.decision != "approve":
        raise ApprovalDenied(
            f"Rejected by {signer.principal} ({signer.fingerprint}): the "
            f"saved plan's signed decision is 'reject': {statement.reason} — "
            "nothing changed."
        )
    check_allowlist(signer.principal)
    return signed_vote(verified, text, signature)


def split_signed_plan(signed: str | None) -> tuple[str, str]:
    """A signed plan (``safeops sign-plan``): the statement text, then the armored signature."""
    if not signed or not signed.strip():
        return "", ""
    text = signed.replace("\r\n", "\n")
    at = text.find(SIGNATURE_BEGIN)
    if at < 0:
        return text, ""
    return text[:at].strip("\n") + "\n", text[at:]
