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
A deployment run whose creator is not a Prefect user (an open-source server
records none) has an unknown starter, who may be one of the signers: it needs one
approval more, so that the required number of people other than the starter
approve, whoever that was (votes.starter_unknown).

Saved plans have no pause time: their statement (``flow_run_id: saved-plan``)
must be signed at most ``SAFEOPS_SAVED_PLAN_MAX_AGE_S`` (default 7 days) ago.

A target whose system identifier cannot be read (``pg_control_system()``
denied: fingerprint ``unknown/<db>``) binds a signature to a database *name*
only, which another cluster can share; signed approvals refuse it unless
``SAFEOPS_ALLOW_UNIDENTIFIED_TARGET=true`` accepts that weaker binding.

Split by job: policy.py (ApprovalPolicy, how many approvals, allowlist, target
identity), request.py (what the approver is asked, the forms, the record on the
run and the CLI's signed answer), votes.py (an answer verified into a vote,
quorum, self-approval), saved_plan.py (saved and signed saved plans) and
pause.py (the step itself). This package re-exports what other modules use.
"""

from tasks.common.approval.pause import request_approval
from tasks.common.approval.request import (
    APPROVAL_INPUT_KEY,
    VOTES_INPUT_KEY,
    signed_answer,
)
from tasks.common.approval.saved_plan import check_saved_plan
from tasks.common.approval.votes import register_starter, starting_with_key

__all__ = [
    "APPROVAL_INPUT_KEY",
    "VOTES_INPUT_KEY",
    "check_saved_plan",
    "register_starter",
    "request_approval",
    "signed_answer",
    "starting_with_key",
]
