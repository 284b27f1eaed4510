"""What an approver is asked, and what the run records about the request.

The request (``ApprovalRequest``) holds one run's approval: the plan, the
confirmation to type, how many approvals are needed and the votes so far. It
renders the form the Prefect UI shows (``ApprovalForm``, or
``SignedApprovalForm`` when allowed signers are configured) and the record that
``safeops approvals``, the CLI's signer and notifications read (stored on the
run as flow-run inputs). ``signed_answer`` is the other side of that record: the
answer a CLI signs and sends back. Kept apart from the pause loop and from the
rules that judge an answer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from prefect.input import RunInput
from prefect.input.actions import create_flow_run_input, delete_flow_run_input
from pydantic import Field

from safeops.core import signing
from safeops.core.models import Plan, SignedVote
from tasks.common.notify import approve_command

REASON_PLACEHOLDER = "REPLACE-WITH-YOUR-REASON"

APPROVAL_INPUT_KEY = "safeops-approval"
VOTES_INPUT_KEY = "safeops-approval-votes"


class ApprovalForm(RunInput):
    """What the approver fills in (rendered as a form in the Prefect UI), unsigned runs."""

    approver: str = Field(
        min_length=1, max_length=200, description="Your name, as recorded in the audit row."
    )
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="Why this change is being made (ticket, context).",
    )
    confirmation: str = Field(description="Type the confirmation text shown above, exactly.")
    decision: Literal["approve", "reject"] = Field(
        "approve", description="Choose 'reject' to stop the run with nothing changed."
    )


class SignedApprovalForm(RunInput):
    """The form when allowed signers are configured: no name (the signature says who).

    ``signature`` may be left empty at the server so that an unsigned answer reaches
    the flow and ends the run rejected, rather than leaving it paused."""

    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="Why (one line): exactly the reason you signed.",
    )
    confirmation: str = Field(description="Type the confirmation text shown above, exactly.")
    decision: Literal["approve", "reject"] = Field(
        "approve", description="Choose 'reject' to stop the run with nothing changed."
    )
    signed_at: str = Field(
        "",
        description="The statement's signed_at, as signed (prefilled "
        "with the time the approval was requested).",
    )
    signature: str = Field(
        "",
        description="Paste the whole block that ssh-keygen printed, "
        "from -----BEGIN SSH SIGNATURE----- to -----END.",
    )
    statement: str = Field(
        "",
        description="Optional: the exact statement you signed (the CLI "
        "sends it); empty means the one shown above.",
    )


@dataclass
class Vote:
    """One approver's approval that counts (signed or not)."""

    name: str  # principal when signed, typed name when not
    reason: str
    signed: SignedVote | None = None


def counts_text(plan: Plan) -> str:
    """The plan's counts as ``key=value, …``, for refusals and time-outs."""
    return ", ".join(f"{k}={v}" for k, v in plan.counts.items())


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
    starter_unknown: bool = False  # a deployment run: ``required`` already holds the extra one
    votes: list[Vote] = field(default_factory=list)
    requested_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    deadline: datetime | None = None

    def statement_template(self) -> str | None:
        """The statement with the reason left to the approver (signed runs only)."""
        if self.signers is None or self.flow_run_id is None or not self.target_fingerprint:
            return None
        return signing.Statement(
            flow_run_id=self.flow_run_id,
            flow=self.flow,
            target_fingerprint=self.target_fingerprint,
            plan_hash=self.plan.plan_hash,
            decision="approve",
            reason=REASON_PLACEHOLDER,
            signed_at=self.requested_at,
        ).text()

    def record(self) -> dict[str, Any]:
        """What `safeops approvals`, the CLI's signer and notifications read."""
        template = self.statement_template()
        return {
            "flowRunId": self.flow_run_id,
            "flow": self.flow,
            "target": self.plan.target,
            "targetDescription": self.target_description,
            "targetFingerprint": self.target_fingerprint,
            "counts": self.plan.counts,
            "planHash": self.plan.plan_hash,
            "expectedConfirmation": self.expected_confirmation,
            "what": self.what,
            "snapshotUri": self.snapshot_uri,
            "requestedAt": self.requested_at.isoformat(),
            "signedAt": signing.format_time(self.requested_at),
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "signed": self.signers is not None,
            "statementTemplate": template,
            "signingCommand": signing.signing_command(template) if template else None,
            "requiredApprovals": self.required,
            "approvedCount": len(self.votes),
            "approvedBy": [v.name for v in self.votes],
            "forbidSelfApproval": self.forbid_self,
            "starterUnknown": self.starter_unknown,
        }

    def description(self) -> str:
        lines = [
            f"## Approve {self.plan.kind} on `{self.plan.target}`",
            "",
            "This will:",
            *[f"- {line}" for line in self.what],
            "",
            f"Snapshot (undo point): `{self.snapshot_uri}`",
            "",
            f"Plan hash: `{self.plan.plan_hash}`",
            "",
        ]
        if self.required > 1:
            names = ", ".join(v.name for v in self.votes) or "nobody yet"
            lines += [
                f"Approvals: {len(self.votes)} of {self.required} ({names}); "
                f"{self.required - len(self.votes)} more needed.",
                "",
            ]
        if self.starter_unknown:
            lines += [
                "Who started this run is not known to the server (a deployment run; an "
                "open-source Prefect server records no user), and SAFEOPS_FORBID_SELF_APPROVAL "
                "is set: one approval more than SAFEOPS_REQUIRED_APPROVALS is needed, so that "
                "enough people other than the starter approve, whoever that was.",
                "",
            ]
        template = self.statement_template()
        if template:
            lines += [
                "**Signed approval.** Sign exactly this statement (write your reason in place "
                f"of `{REASON_PLACEHOLDER}`, one line, and type the same reason below):",
                "",
                "```",
                template.rstrip("\n"),
                "```",
                "",
                "Sign it with (your key instead of ~/.ssh/id_ed25519):",
                "",
                "```",
                signing.signing_command(template),
                "```",
                "",
                "or from a terminal: `" + approve_command(self.record()) + "` "
                "(signs with SAFEOPS_SIGNING_KEY or the ssh-agent). Paste the whole "
                "signature block into *signature*; keep *signed_at* as prefilled.",
                "",
            ]
        assert self.deadline is not None
        lines.append(
            f"Type **{self.expected_confirmation}** in *confirmation* to approve. "
            f"Deadline: {self.deadline.isoformat(timespec='seconds')}."
        )
        return "\n".join(lines)

    def form(self) -> type[RunInput]:
        if self.signers is None:
            return ApprovalForm.with_initial_data(
                description=self.description(), confirmation="", decision="approve"
            )
        return SignedApprovalForm.with_initial_data(
            description=self.description(),
            confirmation="",
            decision="approve",
            signed_at=signing.format_time(self.requested_at),
            signature="",
            statement="",
        )


# --- the record on the run ------------------------------------------------------------


def record_request(flow_run_id: UUID | str | None, request: dict[str, Any]) -> None:
    """Store what is being approved on the run, so `safeops approvals` can list it."""
    if flow_run_id is None:
        return
    with contextlib.suppress(Exception):  # a re-run of the same run keeps the first record
        create_flow_run_input(
            key=APPROVAL_INPUT_KEY, value=request, flow_run_id=UUID(str(flow_run_id))
        )


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


def signed_answer(
    request: dict[str, Any],
    *,
    decision: str,
    reason: str,
    confirmation: str,
    key: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """An answer to a signed run's pause: this run's statement, signed at ``now`` (the
    signer's current time) with ``key`` (else SAFEOPS_SIGNING_KEY, else the ssh-agent).

    The answer carries the exact statement and the signature, never a name: the worker
    takes the principal from its allowed signers. Shared by ``safeops approve`` and the
    CLI's own prompt (``--live [--yes]``)."""
    statement = signing.Statement(
        flow_run_id=str(request["flowRunId"]),
        flow=str(request["flow"]),
        target_fingerprint=str(request["targetFingerprint"]),
        plan_hash=str(request["planHash"]),
        decision=decision,  # type: ignore[arg-type]
        reason=reason.strip(),
        signed_at=now or datetime.now(UTC),
    )
    text = statement.text()
    return {
        "reason": reason.strip(),
        "confirmation": confirmation,
        "decision": decision,
        "signed_at": signing.format_time(statement.signed_at),
        "statement": text,
        "signature": signing.sign(text, key),
    }
