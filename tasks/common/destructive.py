"""The skeleton every destructive flow shares, written once.

slot → (the flow's own plan/snapshot/verify steps) → dry-run return →
approval → (the flow's own apply) → check afterwards → artifacts.

A flow opens ``destructive_run(...)`` and calls its phases in order; what
differs between jobs (which tasks plan, snapshot and apply; what the approver
is asked to confirm; what "nothing left" means) stays in the flow file, so the
flow reads as the job's story and a new destructive job is a phase package
plus a short flow. Modelled on sqlmesh's plan evaluator, which reads as the list
of its phases, and on PrefectHQ/examples, which keep a flow to a few domain
calls.

Every destructive flow takes the same run options, with the same names and
order after its subject (site id or snapshot URI): ``target``, ``dry_run``,
``approved_plan_hash``, ``approved_by``, ``approval_timeout_s`` (and, where a flow
takes it, ``approved_plan_signature``: the signed statement of a saved plan,
required when allowed signers are configured).

The target database's fingerprint (system identifier + database name) is read
once per live run, when the run reaches its approval, and carried in the
approval request: a signed statement binds to it, so a signature for staging
can never approve production.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from safeops.core import events
from safeops.core.db import engine_for, fingerprint, transaction
from safeops.core.errors import SafeopsError
from safeops.core.models import Approval, Plan, RunResult
from safeops.core.settings import describe_target, get_settings, validate_target
from tasks.common.approval import check_saved_plan, request_approval
from tasks.common.approval.policy import ApprovalPolicy
from tasks.common.artifacts import counts_table, summary_markdown
from tasks.common.slot import one_at_a_time
from tasks.common.snapshots import now_utc

Reporter = Callable[[Plan, dict[str, int] | None], None]


@dataclass
class DestructiveRun:
    """One live or dry run of a destructive flow, as its phases see it."""

    flow: str
    target: str
    dry_run: bool
    approved_plan_hash: str | None
    approved_by: str | None
    approval_timeout_s: int
    artifacts: str  # artifact key prefix, e.g. "media-purge" → media-purge-counts
    started: datetime = field(default_factory=now_utc)
    result: RunResult | None = None
    report_counts: Reporter | None = None
    approved_plan_signature: str | None = None
    target_fingerprint: str | None = None

    def planned(
        self,
        plan: Plan,
        snapshot_uri: str | None,
        *,
        nothing_to_do: bool,
        nothing_message: str,
        announced: bool = False,
    ) -> bool:
        """Show the plan, refuse a saved plan that differs; True when the run stops here
        (a dry run, or nothing to do), with its reports published. ``announced``: the
        task that derived the plan showed it already (an apply that plans under its lock)."""
        if not announced:
            events.emit("plan", plan=plan)
        check_saved_plan(plan, self.approved_plan_hash)
        self.result = RunResult(
            flow=self.flow,
            target=plan.target,
            dry_run=self.dry_run,
            snapshot_uri=snapshot_uri,
            plan=plan,
        )
        if nothing_to_do:
            self.result.message = nothing_message
        if self.dry_run or nothing_to_do:
            self.publish(applied=None)
            return True
        return False

    def approve(self, *, confirmation: str, what: list[str]) -> Approval:
        """The human step: the pause (or the saved plan that stands in for it)."""
        result = self.require_result()
        result.approval = self._request_approval(
            result.plan, confirmation, what, result.snapshot_uri
        )
        return result.approval

    def _request_approval(
        self, plan: Plan, confirmation: str, what: list[str], snapshot_uri: str | None
    ) -> Approval:
        """The pause or the saved plan, with this run's options, flow and target."""
        return request_approval(
            plan,
            expected_confirmation=confirmation,
            what=what,
            snapshot_uri=snapshot_uri,
            timeout_s=self.approval_timeout_s,
            approved_plan_hash=self.approved_plan_hash,
            approved_by=self.approved_by,
            approved_plan_signature=self.approved_plan_signature,
            flow=self.flow,
            target_fingerprint=self.fingerprint(),
            target_description=describe_target(self.target),
        )

    def saved_plan_approves(self) -> bool:
        """A live run whose saved plan is its whole approval: no pause, so no person reads
        a plan between the plan step and the apply, and a flow may derive its plan only
        once, inside the apply's transaction (see approve_saved_plan)."""
        return (
            not self.dry_run
            and self.approved_plan_hash is not None
            and ApprovalPolicy().required_for(self.flow) <= 1
        )

    def approve_saved_plan(self, kind: str) -> Approval:
        """The approval a saved plan gives, before its plan is derived.

        A saved plan approves a hash, nothing else (no confirmation is typed, nothing is
        shown): its vote, signature and allowlist checks need only the hash, the flow and
        the target. So they run first, and the apply must then derive, under its lock,
        a plan with exactly this hash (``check_saved_plan``) or change nothing: the same
        guarantee as checking the hash against a plan step before the apply, without the
        plan step. Only when ``saved_plan_approves()``: otherwise the pause needs a plan."""
        if not self.saved_plan_approves() or self.approved_plan_hash is None:
            raise SafeopsError("Internal error: no saved plan to approve with; nothing changed.")
        approved = Plan(
            kind=kind,
            target=describe_target(self.target),
            counts={},
            plan_hash=self.approved_plan_hash.strip(),
        )
        return self._request_approval(approved, "", [], None)

    def fingerprint(self) -> str | None:
        """``<system identifier>/<database>`` of the target, read once per run.

        Signed approvals need it (a failure to read it propagates from there); an
        unsigned run only shows it, so a failure leaves it None."""
        if self.target_fingerprint is None:
            try:
                engine = engine_for(self.target)
                try:
                    with transaction(engine, read_only=True) as conn:
                        self.target_fingerprint = str(fingerprint(conn))
                finally:
                    engine.dispose()
            except SafeopsError:
                if get_settings().allowed_signers is not None:
                    raise
        return self.target_fingerprint

    @property
    def approval(self) -> Approval:
        approval = self.require_result().approval
        if approval is None:
            raise SafeopsError(
                "Internal error: apply reached without an approval; nothing changed."
            )
        return approval

    def applied(self, counts: dict[str, int]) -> None:
        self.require_result().applied = counts

    def publish(self, applied: dict[str, int] | None) -> None:
        """Counts (planned vs applied) and the summary: the same two artifacts every run."""
        result = self.require_result()
        if self.report_counts is not None:
            self.report_counts(result.plan, applied)
        else:
            counts_table(result.plan, applied, key=f"{self.artifacts}-counts")
        summary_markdown(result, key=f"{self.artifacts}-summary")

    def finish(self, problem: str | None = None) -> RunResult:
        """Publish the reports, then fail the run if the check afterwards found a
        ``problem``: the change is committed, so the run must say plainly it is not clean."""
        result = self.require_result()
        self.publish(applied=result.applied)
        if problem:
            raise SafeopsError(problem)
        return result

    def require_result(self) -> RunResult:
        if self.result is None:
            raise SafeopsError("Internal error: the run has no plan yet; nothing changed.")
        return self.result


@contextmanager
def destructive_run(
    flow: str,
    target: str,
    *,
    dry_run: bool,
    approved_plan_hash: str | None,
    approved_by: str | None,
    approval_timeout_s: int,
    artifacts: str,
    scope: tuple[str, ...] = (),
    report_counts: Reporter | None = None,
    approved_plan_signature: str | None = None,
) -> Iterator[DestructiveRun]:
    """Validate the target, hold its slot for a live run (approval included), yield the run."""
    validate_target(target)
    run = DestructiveRun(
        flow=flow,
        target=target,
        dry_run=dry_run,
        approved_plan_hash=approved_plan_hash,
        approved_by=approved_by,
        approval_timeout_s=approval_timeout_s,
        artifacts=artifacts,
        report_counts=report_counts,
        approved_plan_signature=approved_plan_signature,
    )
    with one_at_a_time(target, *scope, enabled=not dry_run):
        yield run


def counts_of(plan: Plan, keys: tuple[str, ...]) -> dict[str, int]:
    return {k: plan.counts[k] for k in keys}
