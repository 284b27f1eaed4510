"""The human approval step, shared by every destructive flow.

Called from a flow (``pause_flow_run`` cannot run inside a task). The approver
types a confirmation that repeats what will happen, so a click-through
approval is impossible; a saved plan hash stands in for the pause when it
matches the plan exactly (Terraform's saved-plan habit).

Signed approvals (``SAFEOPS_ALLOWED_SIGNERS`` set, see safeops.core.signing):
every answer carries an SSH signature over a canonical statement naming this
run, the flow, the target database's fingerprint, the plan hash, the decision,
the reason and the time of signing. The approver's name is the allowed_signers
principal of the key that signed, never what was typed. Any answer that does
not verify ends the run rejected (exit 4) with nothing changed; so does a
well-signed ``reject``. Unset, approvals work as before and are recorded as
``identity: unverified``.

Time binding: the first pause records its request time (to the second) in the
approval request; a statement signed before it is refused, so an answer signed
for an earlier pause of this run (or replayed) cannot count. A CLI signer signs
with its current time; the UI form prefills ``signed_at`` with the pause's
request time, so the statement shown in the form is exact and the approver
only fills in the reason. Later pauses of the same run (a quorum) keep the
first pause's time: all approvers answer the same request.

Quorum (``SAFEOPS_REQUIRED_APPROVALS``, default 1; ``2`` or per flow,
``purge-product-media=2,reset-site-structure=2,1``): the run pauses once per
answer (one Prefect pause each, keys ``approval``, ``approval-2``, …, all under
the first pause's deadline) until that many distinct signers (distinct
principals and distinct keys; by typed name when unsigned) approved this plan.
With ``SAFEOPS_FORBID_SELF_APPROVAL=true`` the run's starter never counts: the
key the CLI signed with when it started the run in this process, the Prefect
user who created the run (when the server records one), and ``approved_by`` of
a run started without a saved plan. A starter's or a repeated signer's approval
is recorded in the log and the run pauses again; one rejection ends the run.

Saved plans have no pause time: their statement (``flow_run_id: saved-plan``)
must be signed at most ``SAFEOPS_SAVED_PLAN_MAX_AGE_S`` (default 7 days) ago.

A target whose system identifier cannot be read (``pg_control_system()``
denied: fingerprint ``unknown/<db>``) binds a signature to a database *name*
only, which another cluster can share; signed approvals refuse it unless
``SAFEOPS_ALLOW_UNIDENTIFIED_TARGET=true`` accepts that weaker binding.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.input.actions import create_flow_run_input, delete_flow_run_input
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from safeops.core import events, signing
from safeops.core.errors import (
    ApprovalDenied,
    ApprovalTimedOut,
    BadInput,
    PlanMismatch,
    StatementInvalid,
    StatementMalformed,
    StatementMismatch,
    TargetUnidentified,
)
from safeops.core.hash_text import printable
from safeops.core.models import Approval, Plan, SignedVote
from safeops.core.settings import get_settings
from tasks.common.notify import approve_command, notify_approvers

REASON_PLACEHOLDER = "REPLACE-WITH-YOUR-REASON"


class ApprovalPolicy(BaseSettings):
    """How many people, and who may not count (``SAFEOPS_*``). Kept apart from
    safeops.core.settings so approval policy reads in one place."""

    model_config = SettingsConfigDict(env_prefix="SAFEOPS_", extra="ignore")

    required_approvals: str = Field("1", description="N, or flow=N,... with a bare N as the "
                                                     "default for other flows.")
    forbid_self_approval: bool = Field(False, description="The run's starter never counts.")
    saved_plan_max_age_s: int = Field(7 * 86400, ge=1, description="Oldest signed saved plan.")
    allow_unidentified_target: bool = Field(False, description="Accept unknown/<db> "
                                            "fingerprints in signed statements.")

    @field_validator("required_approvals")
    @classmethod
    def _well_formed(cls, value: str) -> str:
        parse_required(value, "any")
        return value

    def required_for(self, flow: str) -> int:
        return parse_required(self.required_approvals, flow)


def parse_required(value: str, flow: str) -> int:
    """``2`` → 2 for every flow; ``purge-product-media=2,1`` → 2 for the purge, 1 else."""
    default, per_flow = 1, {}
    for part in filter(None, (p.strip() for p in str(value).split(","))):
        name, _, number = part.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            n = 0
        if n < 1:
            raise BadInput(f"SAFEOPS_REQUIRED_APPROVALS: {part!r} is not a count of at least 1.")
        if name:
            per_flow[name.strip()] = n
        else:
            default = n
    return per_flow.get(flow, default)


class ApprovalForm(RunInput):
    """What the approver fills in (rendered as a form in the Prefect UI), unsigned runs."""

    approver: str = Field(min_length=1, max_length=200,
                          description="Your name, as recorded in the audit row.")
    reason: str = Field(min_length=1, max_length=2000,
                        description="Why this change is being made (ticket, context).")
    confirmation: str = Field(description="Type the confirmation text shown above, exactly.")
    decision: Literal["approve", "reject"] = Field(
        "approve", description="Choose 'reject' to stop the run with nothing changed.")


class SignedApprovalForm(RunInput):
    """The form when allowed signers are configured: no name (the signature says who).

    ``signature`` may be left empty at the server so that an unsigned answer reaches
    the flow and ends the run rejected, rather than leaving it paused."""

    reason: str = Field(min_length=1, max_length=2000,
                        description="Why (one line): exactly the reason you signed.")
    confirmation: str = Field(description="Type the confirmation text shown above, exactly.")
    decision: Literal["approve", "reject"] = Field(
        "approve", description="Choose 'reject' to stop the run with nothing changed.")
    signed_at: str = Field(description="The statement's signed_at, as signed (prefilled "
                                       "with the time the approval was requested).")
    signature: str = Field("", description="Paste the whole block that ssh-keygen printed, "
                                           "from -----BEGIN SSH SIGNATURE----- to -----END.")
    statement: str = Field("", description="Optional: the exact statement you signed (the CLI "
                                           "sends it); empty means the one shown above.")


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


# --- who started the run --------------------------------------------------------

_local_starters: dict[str, set[str]] = {}
_starters_lock = threading.Lock()


def register_starter(flow_run_id: Any, key_fingerprint: str) -> None:
    """The CLI that started ``flow_run_id`` in this process signed with this key: with
    SAFEOPS_FORBID_SELF_APPROVAL its signatures never count toward the run's quorum."""
    with _starters_lock:
        _local_starters.setdefault(str(flow_run_id), set()).add(key_fingerprint)


def forget_starter(flow_run_id: Any) -> None:
    with _starters_lock:
        _local_starters.pop(str(flow_run_id), None)


def _starter_keys(flow_run_id: str) -> set[str]:
    with _starters_lock:
        return set(_local_starters.get(flow_run_id, set()))


def _starter_names(approved_by: str | None, saved_plan: bool) -> set[str]:
    names: set[str] = set()
    if approved_by and approved_by.strip() and not saved_plan:
        names.add(approved_by.strip())
    run = FlowRunContext.get()
    creator = getattr(run.flow_run, "created_by", None) if run and run.flow_run else None
    if creator is not None and str(getattr(creator, "type", "")).upper().endswith("USER"):
        value = getattr(creator, "display_value", None)
        if value:
            names.add(str(value))
    return names


# --- the request --------------------------------------------------------------------


@dataclass
class Vote:
    name: str  # principal when signed, typed name when not
    reason: str
    signed: SignedVote | None = None


@dataclass
class ApprovalRequest:
    """One run's approval: what is asked, of how many, and the votes so far."""

    plan: Plan
    flow: str
    flow_run_id: str | None
    expected_confirmation: str
    what: list[str]
    snapshot_uri: str | None
    timeout_s: int
    target_fingerprint: str | None
    target_description: str
    signers: signing.AllowedSigners | None
    required: int
    forbid_self: bool
    starter_names: set[str]
    votes: list[Vote] = field(default_factory=list)
    requested_at: datetime = field(
        default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    deadline: datetime | None = None

    # -- what the approver sees

    def statement_template(self) -> str | None:
        """The statement with the reason left to the approver (signed runs only)."""
        if self.signers is None or self.flow_run_id is None or not self.target_fingerprint:
            return None
        return signing.Statement(
            flow_run_id=self.flow_run_id, flow=self.flow,
            target_fingerprint=self.target_fingerprint, plan_hash=self.plan.plan_hash,
            decision="approve", reason=REASON_PLACEHOLDER, signed_at=self.requested_at).text()

    def record(self) -> dict[str, Any]:
        """What `safeops approvals`, the CLI's signer and notifications read."""
        template = self.statement_template()
        return {
            "flowRunId": self.flow_run_id, "flow": self.flow, "target": self.plan.target,
            "targetDescription": self.target_description,
            "targetFingerprint": self.target_fingerprint,
            "counts": self.plan.counts, "planHash": self.plan.plan_hash,
            "expectedConfirmation": self.expected_confirmation, "what": self.what,
            "snapshotUri": self.snapshot_uri, "requestedAt": self.requested_at.isoformat(),
            "signedAt": signing.format_time(self.requested_at),
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "signed": self.signers is not None, "statementTemplate": template,
            "signingCommand": signing.signing_command(template) if template else None,
            "requiredApprovals": self.required, "approvedCount": len(self.votes),
            "approvedBy": [v.name for v in self.votes],
            "forbidSelfApproval": self.forbid_self,
        }

    def description(self) -> str:
        lines = [
            f"## Approve {self.plan.kind} on `{self.plan.target}`", "",
            "This will:", *[f"- {line}" for line in self.what], "",
            f"Snapshot (undo point): `{self.snapshot_uri}`", "",
            f"Plan hash: `{self.plan.plan_hash}`", "",
        ]
        if self.required > 1:
            names = ", ".join(v.name for v in self.votes) or "nobody yet"
            lines += [f"Approvals: {len(self.votes)} of {self.required} ({names}); "
                      f"{self.required - len(self.votes)} more needed.", ""]
        template = self.statement_template()
        if template:
            lines += [
                "**Signed approval.** Sign exactly this statement (write your reason in place "
                f"of `{REASON_PLACEHOLDER}`, one line, and type the same reason below):", "",
                "```", template.rstrip("\n"), "```", "",
                "Sign it with (your key instead of ~/.ssh/id_ed25519):", "",
                "```", signing.signing_command(template), "```", "",
                "or from a terminal: `" + approve_command(self.record()) + "` "
                "(signs with SAFEOPS_SIGNING_KEY or the ssh-agent). Paste the whole "
                "signature block into *signature*; keep *signed_at* as prefilled.", "",
            ]
        assert self.deadline is not None
        lines.append(f"Type **{self.expected_confirmation}** in *confirmation* to approve. "
                     f"Deadline: {self.deadline.isoformat(timespec='seconds')}.")
        return "\n".join(lines)

    def form(self) -> type[RunInput]:
        if self.signers is None:
            return ApprovalForm.with_initial_data(description=self.description(),
                                                  confirmation="", decision="approve")
        return SignedApprovalForm.with_initial_data(
            description=self.description(), confirmation="", decision="approve",
            signed_at=signing.format_time(self.requested_at), signature="", statement="")

    # -- judging one answer

    def judge(self, answer: Any) -> Vote:
        """The vote an answer casts, or the refusal that ends the run."""
        if self.signers is None:
            return self._judge_unsigned(answer)
        return self._judge_signed(answer)

    def _judge_unsigned(self, answer: Any) -> Vote:
        approver = str(getattr(answer, "approver", "") or "").strip()
        if answer.decision == "reject":
            raise ApprovalDenied(f"Rejected by {approver or 'unknown'}: "
                                 f"{answer.reason.strip()} — nothing changed.")
        if not approver:
            raise ApprovalDenied("Approval refused: the approver's name is empty; "
                                 "nothing changed.")
        _check_allowlist(approver)
        self._check_confirmation(answer)
        if not answer.reason.strip():
            raise ApprovalDenied("Approval refused: a reason is required; nothing changed.")
        return Vote(name=approver, reason=answer.reason.strip())

    def _judge_signed(self, answer: Any) -> Vote:
        assert self.signers is not None and self.flow_run_id and self.target_fingerprint
        reason = answer.reason.strip()
        signature = str(getattr(answer, "signature", "") or "")
        if answer.decision == "reject" and not signature.strip():
            raise ApprovalDenied(f"Rejected (unsigned answer): {reason} — nothing changed.")
        text = self._statement_text(answer)
        verified = signing.verify_approval(
            text, signature, self.signers, flow_run_id=self.flow_run_id, flow=self.flow,
            target_fingerprint=self.target_fingerprint, plan_hash=self.plan.plan_hash,
            not_before=self.requested_at)
        statement, signer = verified.statement, verified.signer
        if statement.decision != answer.decision:
            raise StatementMismatch(
                f"Refused: the signed statement says {statement.decision!r} but the answer "
                f"says {answer.decision!r}; nothing changed.", field="decision")
        if statement.decision == "reject":
            raise ApprovalDenied(f"Rejected by {signer.principal} ({signer.fingerprint}): "
                                 f"{statement.reason} — nothing changed.")
        _check_allowlist(signer.principal)
        self._check_confirmation(answer)
        return Vote(name=signer.principal, reason=statement.reason, signed=SignedVote(
            principal=signer.principal, fingerprint=signer.fingerprint, statement=text,
            signature=signature.strip() + "\n"))

    def _statement_text(self, answer: Any) -> str:
        """The statement as sent (CLI), else rebuilt from the form's fields (UI)."""
        sent = str(getattr(answer, "statement", "") or "")
        if sent.strip():
            text = sent.replace("\r\n", "\n").strip("\n") + "\n"
            return text
        assert self.flow_run_id and self.target_fingerprint
        try:
            return signing.Statement(
                flow_run_id=self.flow_run_id, flow=self.flow,
                target_fingerprint=self.target_fingerprint, plan_hash=self.plan.plan_hash,
                decision=answer.decision, reason=answer.reason.strip(),
                signed_at=signing.parse_time(str(answer.signed_at))).text()
        except StatementInvalid as exc:
            raise StatementMalformed(f"Refused: the answer's {exc}") from None

    def _check_confirmation(self, answer: Any) -> None:
        if answer.confirmation.strip() != self.expected_confirmation:
            raise ApprovalDenied(
                f"Approval refused: confirmation {answer.confirmation.strip()!r} does not "
                f"match {self.expected_confirmation!r}; nothing changed.")

    def counts_toward_quorum(self, vote: Vote) -> str | None:
        """Why this approval does not count (a starter, a repeat), or None."""
        for earlier in self.votes:
            if earlier.name == vote.name or (
                    earlier.signed and vote.signed
                    and earlier.signed.fingerprint == vote.signed.fingerprint):
                return f"{vote.name} already approved this run"
        if self.forbid_self:
            starter_keys = _starter_keys(self.flow_run_id or "")
            if vote.name in self.starter_names or (
                    vote.signed and vote.signed.fingerprint in starter_keys):
                return (f"{vote.name} started this run and SAFEOPS_FORBID_SELF_APPROVAL "
                        "is set")
        return None

    def approval(self, via: str) -> Approval:
        signed = [v.signed for v in self.votes if v.signed is not None]
        verified = self.signers is not None and len(signed) == len(self.votes)
        return Approval(approver=" + ".join(v.name for v in self.votes),
                        reason=" | ".join(v.reason for v in self.votes), via=via,
                        identity="verified" if verified else "unverified", signatures=signed)


# --- the step -------------------------------------------------------------------------


def request_approval(plan: Plan, *, expected_confirmation: str, what: list[str],
                     snapshot_uri: str | None, timeout_s: int,
                     approved_plan_hash: str | None, approved_by: str | None,
                     approved_plan_signature: str | None = None, flow: str | None = None,
                     target_fingerprint: str | None = None,
                     target_description: str | None = None) -> Approval:
    """Pause until enough people approve; raise ApprovalDenied otherwise."""
    run = FlowRunContext.get()
    run_id = str(run.flow_run.id) if run and run.flow_run else None
    flow_name = flow or (run.flow.name if run and run.flow else plan.kind)
    policy = ApprovalPolicy()
    signers = signing.load_allowed_signers()
    if signers is not None:
        _check_target_identified(target_fingerprint, policy)
    request = ApprovalRequest(
        plan=plan, flow=flow_name, flow_run_id=run_id,
        expected_confirmation=expected_confirmation, what=what, snapshot_uri=snapshot_uri,
        timeout_s=timeout_s, target_fingerprint=target_fingerprint,
        target_description=target_description or plan.target, signers=signers,
        required=policy.required_for(flow_name), forbid_self=policy.forbid_self_approval,
        starter_names=_starter_names(approved_by, approved_plan_hash is not None))

    via = "pause"
    if approved_plan_hash is not None:
        check_saved_plan(plan, approved_plan_hash)
        request.votes.append(_saved_plan_vote(request, policy, approved_by,
                                              approved_plan_signature))
        via = "saved-plan"
        if len(request.votes) >= request.required:
            return request.approval(via)
        via = "saved-plan+pause"
    return _pause_until_quorum(request, via)


def _check_target_identified(target_fingerprint: str | None,
                             policy: ApprovalPolicy) -> None:
    if not target_fingerprint:
        raise TargetUnidentified("Refused: the target database's fingerprint is unknown, so "
                                 "no signature can be bound to it; nothing changed.")
    if target_fingerprint.startswith("unknown/") and not policy.allow_unidentified_target:
        raise TargetUnidentified(
            f"Refused: the target's system identifier cannot be read ({target_fingerprint}: "
            "pg_control_system() is denied to this role), so a signature would bind only a "
            "database name; grant EXECUTE ON FUNCTION pg_control_system() to the role or set "
            "SAFEOPS_ALLOW_UNIDENTIFIED_TARGET=true; nothing changed.")


def _saved_plan_vote(request: ApprovalRequest, policy: ApprovalPolicy,
                     approved_by: str | None, signed_plan: str | None) -> Vote:
    reason = f"saved plan {request.plan.plan_hash}"
    if request.signers is None:
        approver = approved_by or "unknown"
        _check_allowlist(approver)
        return Vote(name=approver, reason=reason)
    assert request.target_fingerprint
    text, signature = split_signed_plan(signed_plan)
    now = datetime.now(UTC)
    verified = signing.verify_approval(
        text, signature, request.signers, flow_run_id=signing.SAVED_PLAN_RUN_ID,
        flow=request.flow, target_fingerprint=request.target_fingerprint,
        plan_hash=request.plan.plan_hash,
        not_before=now - timedelta(seconds=policy.saved_plan_max_age_s), now=now)
    statement, signer = verified.statement, verified.signer
    if statement.decision != "approve":
        raise ApprovalDenied(f"Rejected by {signer.principal} ({signer.fingerprint}): the "
                             f"saved plan's signed decision is 'reject': {statement.reason} — "
                             "nothing changed.")
    _check_allowlist(signer.principal)
    return Vote(name=signer.principal, reason=statement.reason, signed=SignedVote(
        principal=signer.principal, fingerprint=signer.fingerprint, statement=text,
        signature=signature.strip() + "\n"))


SIGNATURE_BEGIN = "-----BEGIN SSH SIGNATURE-----"


def split_signed_plan(signed: str | None) -> tuple[str, str]:
    """A signed plan (``safeops sign-plan``): the statement text, then the armored signature."""
    if not signed or not signed.strip():
        return "", ""
    text = signed.replace("\r\n", "\n")
    at = text.find(SIGNATURE_BEGIN)
    if at < 0:
        return text, ""
    return text[:at].strip("\n") + "\n", text[at:]


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
        events.emit("approval", flow_run_id=_uuid(request.flow_run_id), plan=plan,
                    expected_confirmation=request.expected_confirmation, what=request.what,
                    snapshot_uri=request.snapshot_uri, deadline=request.deadline,
                    request=info, round=round_no,
                    needed=request.required - len(request.votes))
        notify_approvers("paused", info)
        try:
            if remaining <= 0:
                raise FlowPauseTimeout("no time left")
            timeout = request.timeout_s if round_no == 1 else math.ceil(remaining)
            answer = pause_flow_run(wait_for_input=request.form(), timeout=timeout,
                                    poll_interval=get_settings().approval_poll_s,
                                    key="approval" if round_no == 1 else f"approval-{round_no}")
        except FlowPauseTimeout:
            message = (f"Approval timed out after {request.timeout_s} s: nothing changed "
                       f"({_counts_text(plan)}"
                       + (f"; {len(request.votes)} of {request.required} approvals)"
                          if request.required > 1 else ")") + ".")
            notify_approvers("timed-out", request.record(), message)
            raise ApprovalTimedOut(message) from None
        try:
            vote = request.judge(answer)
        except ApprovalDenied as exc:
            notify_approvers("rejected", request.record(), str(exc))
            raise
        why_not = request.counts_toward_quorum(vote)
        if why_not:
            _log_warning(f"Approval by {vote.name} does not count: {why_not}; "
                         f"{request.required - len(request.votes)} more needed.")
            continue
        request.votes.append(vote)
    approval = request.approval(via)
    final = request.record()
    record_votes(request.flow_run_id, final)
    notify_approvers("approved", final, f"approved by {approval.approver} "
                                        f"(identity: {approval.identity})")
    return approval


def _uuid(value: str | None) -> UUID | None:
    return UUID(value) if value else None


def _log_warning(text: str) -> None:
    with contextlib.suppress(Exception):
        from prefect import get_run_logger

        get_run_logger().warning(text)


APPROVAL_INPUT_KEY = "safeops-approval"
VOTES_INPUT_KEY = "safeops-approval-votes"


def record_request(flow_run_id: UUID | str | None, request: dict[str, Any]) -> None:
    """Store what is being approved on the run, so `safeops approvals` can list it."""
    if flow_run_id is None:
        return
    with contextlib.suppress(Exception):  # a re-run of the same run keeps the first record
        create_flow_run_input(key=APPROVAL_INPUT_KEY, value=request,
                              flow_run_id=UUID(str(flow_run_id)))


def record_votes(flow_run_id: UUID | str | None, request: dict[str, Any]) -> None:
    """Who approved so far and how many are needed (replaced on every vote)."""
    if flow_run_id is None:
        return
    value = {k: request.get(k) for k in ("approvedBy", "approvedCount", "requiredApprovals")}
    run = UUID(str(flow_run_id))
    with contextlib.suppress(Exception):
        delete_flow_run_input(key=VOTES_INPUT_KEY, flow_run_id=run)
    with contextlib.suppress(Exception):
        create_flow_run_input(key=VOTES_INPUT_KEY, value=value, flow_run_id=run)


def signed_answer(request: dict[str, Any], *, decision: str, reason: str, confirmation: str,
                  key: str | None, now: datetime | None = None) -> dict[str, Any]:
    """An answer to a signed run's pause: this run's statement, signed at ``now`` (the
    signer's current time) with ``key`` (else SAFEOPS_SIGNING_KEY, else the ssh-agent).

    The answer carries the exact statement and the signature, never a name: the worker
    takes the principal from its allowed signers. Shared by ``safeops approve`` and the
    CLI's own prompt (``--live [--yes]``)."""
    statement = signing.Statement(
        flow_run_id=str(request["flowRunId"]), flow=str(request["flow"]),
        target_fingerprint=str(request["targetFingerprint"]), plan_hash=str(request["planHash"]),
        decision=decision,  # type: ignore[arg-type]
        reason=reason.strip(), signed_at=now or datetime.now(UTC))
    text = statement.text()
    return {"reason": reason.strip(), "confirmation": confirmation, "decision": decision,
            "signed_at": signing.format_time(statement.signed_at), "statement": text,
            "signature": signing.sign(text, key)}


def _check_allowlist(approver: str) -> None:
    allowed = get_settings().approvers
    if allowed is not None and approver not in allowed:
        raise ApprovalDenied(
            f"Approval refused: {approver!r} is not in SAFEOPS_APPROVERS "
            f"({len(allowed)} allowed); nothing changed.")
