"""The canonical statement an approver signs, and its binding to one run.

A statement names the flow run (or ``saved-plan``), the flow, the target
database's fingerprint, the plan hash, the decision, the reason and the time
of signing; it renders to exactly one text and parses back from only that
text, so what the approver saw is what was signed and what is verified.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from safeops.core.errors import StatementInvalid, StatementMalformed, StatementMismatch

NAMESPACE = "safeops"
HEADER = "safeops approval v1"
SAVED_PLAN_RUN_ID = "saved-plan"
"""``flow_run_id`` of a saved plan's statement: signed before any run exists, so
it is bound to the flow, the target database and the plan hash only, and any
later run whose plan hashes the same may use it."""

MAX_CLOCK_SKEW = timedelta(minutes=5)
ALLOWED_SIGNERS_ENV = "SAFEOPS_ALLOWED_SIGNERS"
SIGNING_KEY_ENV = "SAFEOPS_SIGNING_KEY"

_FIELDS = (
    "flow_run_id",
    "flow",
    "target_fingerprint",
    "plan_hash",
    "decision",
    "reason",
    "signed_at",
)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_TARGET = re.compile(r"^(?:[0-9]{1,20}|unknown)/\S(?:.{0,198}\S)?$")
_PLAN_HASH = re.compile(r"^[0-9a-f]{64}$")
_MAX_REASON = 2000


def one_line_problem(value: str) -> str | None:
    """Why ``value`` cannot stand on one ``key: value`` line, or None.

    Refusing (rather than escaping) control, format and separator characters
    keeps the rendered text exactly what a reader sees: no hidden line breaks,
    no bidi overrides that reorder what is displayed.
    """
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    for ch in value:
        category = unicodedata.category(ch)
        if category.startswith("C") or category in ("Zl", "Zp"):
            return f"contains the control or invisible character U+{ord(ch):04X}"
    if unicodedata.normalize("NFC", value) != value:
        return "is not in Unicode NFC form"
    return None


def clip(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Statement:
    """What an approver signs: one decision about one plan of one run on one database.

    Every field is checked on construction, so a statement that exists renders
    to exactly one text and that text parses back to an equal statement.
    ``signed_at`` is kept in UTC to the second (sub-seconds are dropped) because
    the text carries seconds only.
    """

    flow_run_id: str
    flow: str
    target_fingerprint: str
    plan_hash: str
    decision: Literal["approve", "reject"]
    reason: str
    signed_at: datetime

    def __post_init__(self) -> None:
        run_id = self.flow_run_id
        if run_id != SAVED_PLAN_RUN_ID:
            try:
                run_id = str(UUID(str(run_id)))
            except ValueError:
                raise StatementInvalid(
                    f"flow_run_id {clip(run_id)!r} is neither a flow run UUID nor "
                    f"{SAVED_PLAN_RUN_ID!r}."
                ) from None
            object.__setattr__(self, "flow_run_id", run_id)
        if not isinstance(self.flow, str) or not _FLOW_NAME.match(self.flow):
            raise StatementInvalid(
                f"flow {clip(self.flow)!r} is not a flow name (lowercase letters, digits, "
                "'.', '_', '-')."
            )
        target = self.target_fingerprint
        if not isinstance(target, str) or not _TARGET.match(target) or one_line_problem(target):
            raise StatementInvalid(
                f"target_fingerprint {clip(target)!r} is not '<system identifier>/<database>'."
            )
        if not isinstance(self.plan_hash, str) or not _PLAN_HASH.match(self.plan_hash):
            raise StatementInvalid(
                f"plan_hash {clip(self.plan_hash)!r} is not 64 lowercase hex digits."
            )
        if self.decision not in ("approve", "reject"):
            raise StatementInvalid(
                f"decision {clip(self.decision)!r} is neither 'approve' nor 'reject'."
            )
        if not isinstance(self.reason, str):
            raise StatementInvalid("reason must be text.")
        problem = one_line_problem(self.reason)
        if problem:
            raise StatementInvalid(f"reason {problem}; write it as one line of plain text.")
        if len(self.reason) > _MAX_REASON:
            raise StatementInvalid(
                f"reason has {len(self.reason)} characters, at most {_MAX_REASON} are allowed."
            )
        object.__setattr__(self, "signed_at", _utc_seconds(self.signed_at, "signed_at"))

    def text(self) -> str:
        """The canonical text: header, then ``key: value`` in fixed order, final newline."""
        values = {
            **{f: str(getattr(self, f)) for f in _FIELDS},
            "signed_at": self.signed_at.strftime(_TIME_FORMAT),
        }
        return "\n".join([HEADER, *(f"{f}: {values[f]}" for f in _FIELDS)]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Statement:
        """Read a statement back; anything but its exact canonical text is refused.

        Strictness is the point: the approver saw and signed these bytes, so the
        meaning must not depend on how leniently they are read.
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise StatementMalformed(
                "Refused: the signed statement is not canonical (it must end with a newline)."
            )
        lines = text[:-1].split("\n")
        if lines[0] != HEADER:
            raise StatementMalformed(
                f"Refused: the signed statement does not start with {HEADER!r}."
            )
        if len(lines) != len(_FIELDS) + 1:
            raise StatementMalformed(
                f"Refused: the signed statement has {len(lines) - 1} field lines, "
                f"expected {len(_FIELDS)} ({', '.join(_FIELDS)})."
            )
        values: dict[str, str] = {}
        for number, (field, line) in enumerate(zip(_FIELDS, lines[1:], strict=True), start=2):
            prefix = f"{field}: "
            if not line.startswith(prefix):
                raise StatementMalformed(
                    f"Refused: line {number} of the signed statement must start with {prefix!r}."
                )
            values[field] = line[len(prefix) :]
        try:
            signed_at = datetime.strptime(values["signed_at"], _TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise StatementMalformed(
                f"Refused: signed_at {clip(values['signed_at'])!r} is not YYYY-MM-DDTHH:MM:SSZ."
            ) from None
        try:
            statement = cls(
                flow_run_id=values["flow_run_id"],
                flow=values["flow"],
                target_fingerprint=values["target_fingerprint"],
                plan_hash=values["plan_hash"],
                decision=values["decision"],  # type: ignore[arg-type]
                reason=values["reason"],
                signed_at=signed_at,
            )
        except StatementInvalid as exc:
            raise StatementMalformed(f"Refused: the signed statement's {exc}") from None
        if statement.text() != text:
            raise StatementMalformed(
                "Refused: the signed statement is not in canonical form (spacing, case or "
                "encoding differs from what safeops renders)."
            )
        return statement


def _utc_seconds(value: Any, name: str) -> datetime:
    """An aware datetime in UTC, truncated to the second; naive times are ambiguous."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise StatementInvalid(f"{name} must be a timezone-aware datetime.")
    return value.astimezone(UTC).replace(microsecond=0)


def check_statement(
    statement: Statement,
    *,
    flow_run_id: str,
    flow: str,
    target_fingerprint: str,
    plan_hash: str,
    not_before: datetime,
    now: datetime | None = None,
) -> None:
    """Refuse a genuine signature over a statement made for something else.

    A valid signature only proves who said it; this proves they said it about
    this run (or ``SAVED_PLAN_RUN_ID``), this flow, this database and this plan,
    after the pause began (no replay of an older answer) and not from a clock
    more than five minutes ahead. ``not_before`` is cut to the second like
    ``signed_at``, so an answer in the pause's own second counts.
    """
    run_id = str(flow_run_id)
    with contextlib.suppress(ValueError):
        run_id = str(UUID(run_id))
    expected = {
        "flow_run_id": run_id,
        "flow": flow,
        "target_fingerprint": target_fingerprint,
        "plan_hash": plan_hash,
    }
    for field, want in expected.items():
        got = getattr(statement, field)
        if got != want:
            raise StatementMismatch(
                f"Refused: the signed statement is for {field} {clip(got, 40)!r}, "
                f"not this run's {clip(want, 40)!r}.",
                field=field,
            )
    earliest = _utc_seconds(not_before, "not_before")
    current = _utc_seconds(now if now is not None else datetime.now(UTC), "now")
    signed = statement.signed_at.strftime(_TIME_FORMAT)
    if statement.signed_at < earliest:
        raise StatementMismatch(
            f"Refused: the statement was signed at {signed}, before this approval was "
            f"requested at {earliest.strftime(_TIME_FORMAT)}; sign a new statement.",
            field="signed_at",
        )
    if statement.signed_at > current + MAX_CLOCK_SKEW:
        raise StatementMismatch(
            f"Refused: the statement claims to be signed at {signed}, more than "
            f"{int(MAX_CLOCK_SKEW.total_seconds() // 60)} min after now "
            f"({current.strftime(_TIME_FORMAT)}); check the signer's clock.",
            field="signed_at",
        )


def format_time(value: datetime) -> str:
    """A time as statements write it: UTC, to the second, ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _utc_seconds(value, "time").strftime(_TIME_FORMAT)


def parse_time(value: str) -> datetime:
    """The inverse of :func:`format_time`; anything else is a malformed statement."""
    try:
        return datetime.strptime(value.strip(), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise StatementMalformed(
            f"Refused: signed_at {clip(value)!r} is not YYYY-MM-DDTHH:MM:SSZ."
        ) from None
