"""The two checks every apply makes inside its transaction, worded once."""

from __future__ import annotations

from safeops.errors import DriftDetected, SafeopsError
from safeops.models import Plan


def refuse_if_plan_moved(plan: Plan, approved_plan_hash: str, since: str) -> None:
    """The plan re-derived under lock must be the one that was approved."""
    if plan.plan_hash != approved_plan_hash:
        now = ", ".join(f"{k}={v}" for k, v in plan.counts.items() if v)
        raise DriftDetected(f"Refused: {since} ({approved_plan_hash[:16]}… → "
                            f"{plan.plan_hash[:16]}…; now {now or 'nothing'}); nothing changed.")


def require_as_planned(changed: dict[str, int], plan: Plan, verb: str) -> None:
    """Row counts of the statements must equal the plan, or the transaction rolls back."""
    expected = {k: plan.counts[k] for k in changed}
    if changed != expected:
        raise SafeopsError(f"{verb} {changed} but the plan said {expected}; rolled back, "
                           "nothing changed.")
