"""Typed results that flows return and the CLI, artifacts and tests read."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field


def plan_hash_of(parts: dict[str, Any], *, database: str) -> str:
    """Stable over equal states of one database: only digests and counts go in, plus the
    database's identity (its fingerprint), so a plan reviewed on staging never approves
    the same-looking change on production. ``database=""`` only for site snapshots
    written before plans were bound (digest versions 1 and 2), whose recorded hashes
    must keep verifying."""
    bound = {**parts, "database": database} if database else parts
    return hashlib.sha256(
        json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class TableDiff(BaseModel):
    """How one table differs between a snapshot and the live database."""

    table: str
    missing: int = 0  # in the snapshot, not live
    extra: int = 0  # live, not in the snapshot
    changed: int = 0  # in both, with different content
    first_missing: list[str] = Field(default_factory=list)
    first_extra: list[str] = Field(default_factory=list)
    first_changed: list[str] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.missing == self.extra == self.changed == 0

    def describe(self) -> str:
        parts = []
        for label, n, ids in (
            ("missing from the database", self.missing, self.first_missing),
            ("added since the snapshot", self.extra, self.first_extra),
            ("changed since the snapshot", self.changed, self.first_changed),
        ):
            if n:
                parts.append(f"{n} {label} ({', '.join(ids)}{', …' if n > len(ids) else ''})")
        return f"{self.table}: " + "; ".join(parts)


def describe_diffs(diffs: list[TableDiff]) -> str:
    return "; ".join(d.describe() for d in diffs if not d.clean)


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class SnapshotRef(BaseModel):
    """A written snapshot: where it is and what it holds."""

    uri: str
    totals: dict[str, int]
    body_sha256: str
    source: str
    # sha256 of the summary lines as written (what the snapshot register records):
    # with the body's, it names the whole file (read_back proves the stored file by both).
    summary_sha256: str
    # The plan derived in the view the file was rendered from, from the same renderings
    # (a purge's or a site reset's snapshot; None otherwise).
    plan: Plan | None = None


class VerifyReport(BaseModel):
    uri: str
    checks: list[Check]
    # sha256 of the whole file as verified; an apply refuses any other bytes.
    file_sha256: str = ""
    # Plan hash of the live rows the file was proven equal to ("" when it was not).
    plan_hash: str = ""
    totals: dict[str, int] = Field(default_factory=dict)
    diffs: list[TableDiff] = Field(default_factory=list)
    missing_objects: int = 0
    first_missing_objects: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


class Plan(BaseModel):
    """What an apply will do: counts per kind and the hash an approval binds to."""

    kind: str
    target: str
    counts: dict[str, int]
    plan_hash: str
    notes: list[str] = Field(default_factory=list)
    # What the approver should see besides the counts (e.g. where restored images will
    # point), shown in the approval request as it is.
    details: list[str] = Field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not any(self.counts.values())


class SignedVote(BaseModel):
    """One verified signature: who (from allowed_signers), which key, what, the proof.

    Everything here is public (a signature proves, it grants nothing), so it may be
    stored in audit rows and artifacts and re-verified later by anyone."""

    principal: str
    fingerprint: str  # SHA256:… of the signing key
    statement: str  # the exact canonical text that was signed
    signature: str  # armored SSHSIG


class Approval(BaseModel):
    approver: str  # the principal(s) when verified, else the typed name
    reason: str
    via: str  # "pause" or "saved-plan"
    identity: str = "unverified"  # "verified": every vote below checked against allowed signers
    signatures: list[SignedVote] = Field(default_factory=list)


class RunResult(BaseModel):
    """What a destructive flow reports back, dry run or live."""

    flow: str
    target: str
    dry_run: bool
    snapshot_uri: str | None
    plan: Plan
    applied: dict[str, int] = Field(default_factory=dict)
    approval: Approval | None = None
    after_snapshot_uri: str | None = None
    after_totals: dict[str, int] = Field(default_factory=dict)
    message: str = ""
