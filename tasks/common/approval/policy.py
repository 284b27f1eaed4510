"""Approval policy: how many people must approve, who may not count, which targets
a signature may bind, and who is allowed to approve at all.

Kept apart from the pause and from judging answers so the settings that decide
an approval (``SAFEOPS_REQUIRED_APPROVALS``, ``SAFEOPS_FORBID_SELF_APPROVAL``,
``SAFEOPS_SAVED_PLAN_MAX_AGE_S``, ``SAFEOPS_ALLOW_UNIDENTIFIED_TARGET``,
``SAFEOPS_APPROVERS``) read in one place.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from safeops.core.errors import ApprovalDenied, BadInput, TargetUnidentified
from safeops.core.settings import get_settings


class ApprovalPolicy(BaseSettings):
    """How many people, and who may not count (``SAFEOPS_*``). Kept apart from
    safeops.core.settings so approval policy reads in one place."""

    model_config = SettingsConfigDict(env_prefix="SAFEOPS_", extra="ignore")

    required_approvals: str = Field(
        "1", description="N, or flow=N,... with a bare N as the default for other flows."
    )
    forbid_self_approval: bool = Field(False, description="The run's starter never counts.")
    saved_plan_max_age_s: int = Field(7 * 86400, ge=1, description="Oldest signed saved plan.")
    allow_unidentified_target: bool = Field(
        False, description="Accept unknown/<db> fingerprints in signed statements."
    )

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


def check_target_identified(target_fingerprint: str | None, policy: ApprovalPolicy) -> None:
    """Signed approvals need a target fingerprint that names one cluster (see the package
    docstring: ``unknown/<db>`` only with SAFEOPS_ALLOW_UNIDENTIFIED_TARGET)."""
    if not target_fingerprint:
        raise TargetUnidentified(
            "Refused: the target database's fingerprint is unknown, so "
            "no signature can be bound to it; nothing changed."
        )
    if target_fingerprint.startswith("unknown/") and not policy.allow_unidentified_target:
        raise TargetUnidentified(
            f"Refused: the target's system identifier cannot be read ({target_fingerprint}: "
            "pg_control_system() is denied to this role), so a signature would bind only a "
            "database name; grant EXECUTE ON FUNCTION pg_control_system() to the role or set "
            "SAFEOPS_ALLOW_UNIDENTIFIED_TARGET=true; nothing changed."
        )


def check_allowlist(approver: str) -> None:
    """With SAFEOPS_APPROVERS set, only those names (or signing principals) may approve."""
    allowed = get_settings().approvers
    if allowed is not None and approver not in allowed:
        raise ApprovalDenied(
            f"Approval refused: {approver!r} is not in SAFEOPS_APPROVERS "
            f"({len(allowed)} allowed); nothing changed."
        )
