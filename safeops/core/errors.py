"""Named failures, each carrying the CLI exit code of DESIGN.md.

Messages are complete sentences with the numbers a user needs, because the CLI
prints exactly one line per refusal and the Prefect UI shows the same text.
Only a message is stored in ``args`` so the exceptions survive pickling in
Prefect states.
"""

from __future__ import annotations

import sys


class SafeopsError(Exception):
    """Anything else: exit 1."""

    exit_code = 1


class BadInput(SafeopsError):
    """The caller asked for something malformed or unknown; nothing was touched."""

    exit_code = 2


class InvalidDsn(BadInput):
    """The connection string cannot be used; the message never quotes it."""


class Refused(SafeopsError):
    """A guard said no (published posts, drift, invalid snapshot); nothing changed."""

    exit_code = 3


class SnapshotInvalid(Refused):
    """The snapshot failed an integrity check and must not be trusted."""


class ForeignSnapshot(Refused):
    """The snapshot was taken from another database than the target."""


class DriftDetected(Refused):
    """The database changed between the snapshot/plan and the apply."""


class PlanMismatch(Refused):
    """The plan differs from the one that was approved."""


class ResetNotAllowed(Refused):
    """The site has published posts, so its structure may not be reset."""


class RestoreConflict(Refused):
    """Restoring would collide with rows created since the snapshot."""


class SnapshotUntraced(Refused):
    """The snapshot is intact but not in the target's snapshot register: not one of ours."""


class LockTimeout(Refused):
    """An apply could not take its locks within lock_timeout; it rolled back, nothing changed.

    Exit 3, not 1: the outcome is certain (the transaction rolled back) and a guard
    decided it, the lock_timeout that keeps the live application from queueing
    behind our locks. Unlike the other refusals time alone may lift it, so tasks
    retry it as transient (see is_refusal); it reaches the CLI only once the
    retries are spent, naming who held the lock."""


class TargetSchemaMissing(BadInput):
    """The target database lacks the tables the job works on: the wrong --target or URL."""


class UnwritableLocation(BadInput):
    """The snapshot location cannot be written (a missing or read-only folder, /proc)."""


class ApprovalDenied(SafeopsError):
    """The approval was rejected, mistyped, unauthorised or timed out."""

    exit_code = 4


class ApprovalTimedOut(ApprovalDenied):
    """Nobody answered the approval before its deadline."""


# --- signed approvals (safeops.core.signing) ---------------------------------


class SigningUnavailable(BadInput):
    """No usable signing key: nothing was signed (no key, no agent, locked key)."""


class StatementInvalid(BadInput):
    """A statement cannot be built from these values (e.g. a reason with a newline)."""


class AllowedSignersInvalid(BadInput):
    """SAFEOPS_ALLOWED_SIGNERS is set but unusable; approvals must not fall back to unverified."""


class SignatureRefused(ApprovalDenied):
    """A signed approval was refused; every subclass names one reason."""


class SignatureMissing(SignatureRefused):
    """Allowed signers are configured but the answer carries no signature."""


class SignatureMalformed(SignatureRefused):
    """The text pasted as a signature is not an armored SSH signature."""


class StatementMalformed(SignatureRefused):
    """The signed text is not a canonical safeops statement."""


class WrongNamespace(SignatureRefused):
    """The signature was made for another purpose (e.g. ``git``), not ``safeops``."""


class SignerNotAllowed(SignatureRefused):
    """The signing key is not listed (or not allowed for safeops) in allowed_signers."""


class BadSignature(SignatureRefused):
    """The signature does not match the statement: the statement was altered."""


class StatementMismatch(SignatureRefused):
    """A valid signature over a statement for another run, flow, target, plan or time."""

    def __init__(self, message: str, field: str = "") -> None:
        # Only the message goes into args (pickling); ``field`` travels in __dict__.
        super().__init__(message)
        self.field = field


class TargetUnidentified(SignatureRefused):
    """The target database's identity cannot be read, so no signature can be bound to it."""


class NotASnapshot(BadInput):
    """The file is not a safeops snapshot at all (exit 2), as opposed to a damaged one."""


class SnapshotNotFound(BadInput):
    """The URI points at nothing."""


class StoreUnavailable(SafeopsError):
    """The object store could not be reached; the message names the endpoint."""


class DatabaseUnreachable(SafeopsError):
    """Connection failed; the message shows the host, never the password."""


class LoginRefused(DatabaseUnreachable):
    """The server answered and refused us (no such database or role, bad password,
    pg_hba): configuration, which no retry fixes, so tasks fail at once."""


class KeyTaken(SafeopsError):
    """The new key already exists; we never overwrite an object."""


class ObjectMismatch(SafeopsError):
    """A written object does not have the size/etag it should have."""


def is_refusal(exc: BaseException) -> bool:
    """Refusals are decisions, never retried; a lock timeout is the one refusal that
    waiting can lift, so it is retried like the transient faults."""
    if isinstance(exc, LockTimeout):
        return False
    return isinstance(exc, (Refused, BadInput, ApprovalDenied))


def _loaded_types(*names: str) -> tuple[type[BaseException], ...]:
    """Exception types of the drivers and Prefect, looked up only in modules already
    imported: an exception of a library that was never imported cannot be raised, and a
    command that fails before Prefect loads must not pay ~2 s to import it."""
    found: list[type[BaseException]] = []
    for dotted in names:
        module, _, name = dotted.rpartition(".")
        loaded = sys.modules.get(module)
        kind = getattr(loaded, name, None) if loaded is not None else None
        if isinstance(kind, type) and issubclass(kind, BaseException):
            found.append(kind)
    return tuple(found)


# What a retry can fix: the connection or the endpoint went away, or a lock was busy.
TRANSIENT_TYPES = (
    "psycopg.OperationalError",
    "psycopg.InterfaceError",
    "psycopg.errors.LockNotAvailable",
    "botocore.exceptions.EndpointConnectionError",
    "botocore.exceptions.ConnectionClosedError",
    "botocore.exceptions.ReadTimeoutError",
    "botocore.exceptions.ConnectTimeoutError",
)
# Prefect's own refusals of what a caller passed: bad input, exit 2.
BAD_INPUT_TYPES = (
    "prefect.exceptions.ParameterTypeError",
    "prefect.exceptions.SignatureMismatchError",
    "pydantic_core._pydantic_core.ValidationError",
)
TIMEOUT_TYPES = ("prefect.exceptions.FlowPauseTimeout",)


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from or during, outermost first."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def is_transient(exc: BaseException) -> bool:
    """A dropped connection or a busy lock anywhere in the chain (SQLAlchemy wraps the
    driver's error), and never a refusal."""
    if is_refusal(exc):
        return False
    kinds = _loaded_types(*TRANSIENT_TYPES)
    return any(isinstance(e, (*kinds, ConnectionError, TimeoutError)) for e in chain(exc))


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code of any failure: ours carry it; Prefect's and pydantic's input
    and timeout errors are mapped here, in one place; anything else is 1."""
    if isinstance(exc, SafeopsError):
        return exc.exit_code
    if isinstance(exc, _loaded_types(*BAD_INPUT_TYPES)):
        return 2
    if isinstance(exc, _loaded_types(*TIMEOUT_TYPES)):
        return 4
    return 1


class LineTooLong(ValueError):
    """A line ran past the reader's bound; ``line_number`` counts from 1."""

    def __init__(self, line_number: int, limit: int) -> None:
        super().__init__(f"line {line_number} is longer than {limit} bytes")
        self.line_number = line_number
        self.limit = limit
