"""Named failures, each carrying the CLI exit code of DESIGN.md.

Messages are complete sentences with the numbers a user needs, because the CLI
prints exactly one line per refusal and the Prefect UI shows the same text.
Only a message is stored in ``args`` so the exceptions survive pickling in
Prefect states.
"""

from __future__ import annotations


class SafeopsError(Exception):
    """Anything else: exit 1."""

    exit_code = 1


class BadInput(SafeopsError):
    """The caller asked for something malformed or unknown; nothing was touched."""

    exit_code = 2


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


class LockTimeout(Refused):
    """An apply could not take its locks within lock_timeout; it rolled back, nothing changed.

    Exit 3, not 1: the outcome is certain (the transaction rolled back) and a guard
    decided it, the lock_timeout that keeps the live application from queueing
    behind our locks. Unlike the other refusals time alone may lift it, so tasks
    retry it as transient (see is_refusal); it reaches the CLI only once the
    retries are spent, naming who held the lock."""


class TargetSchemaMissing(BadInput):
    """The target database lacks the tables the job works on: the wrong --target or URL."""


class ApprovalDenied(SafeopsError):
    """The approval was rejected, mistyped, unauthorised or timed out."""

    exit_code = 4


class ApprovalTimedOut(ApprovalDenied):
    """Nobody answered the approval before its deadline."""


TRANSIENT_MARKERS = ("OperationalError", "InterfaceError", "EndpointConnectionError",
                     "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                     "LockNotAvailable")


def is_refusal(exc: BaseException) -> bool:
    """Refusals are decisions, never retried; a lock timeout is the one refusal that
    waiting can lift, so it is retried like the transient faults."""
    if isinstance(exc, LockTimeout):
        return False
    return isinstance(exc, (Refused, BadInput, ApprovalDenied))
