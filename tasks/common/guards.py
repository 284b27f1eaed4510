"""The checks every apply makes inside its transaction, worded once."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from safeops.core.errors import DriftDetected, SafeopsError, SnapshotInvalid
from safeops.core.hash_text import tell_apart
from safeops.core.models import Plan
from safeops.core.snapshot_store import file_sha256


def refuse_if_plan_moved(plan: Plan, approved_plan_hash: str, since: str) -> None:
    """The plan re-derived under lock must be the one that was approved."""
    if plan.plan_hash != approved_plan_hash:
        now = ", ".join(f"{k}={v}" for k, v in plan.counts.items() if v)
        approved, current = tell_apart(approved_plan_hash, plan.plan_hash)
        raise DriftDetected(
            f"Refused: {since} ({approved} → {current}; now {now or 'nothing'}); nothing changed."
        )


def require_as_planned(changed: dict[str, int], plan: Plan, verb: str) -> None:
    """Row counts of the statements must equal the plan, or the transaction rolls back."""
    expected = {k: plan.counts[k] for k in changed}
    if changed != expected:
        raise SafeopsError(
            f"{verb} {changed} but the plan said {expected}; rolled back, nothing changed."
        )


class FileCheck:
    """Hashes a stored snapshot in a thread while the apply's SQL runs.

    An apply that trusts a verify's findings instead of re-reading the body into
    the database must be handed the very bytes that verify accepted: the whole
    file's sha256 (summary included: the body checksum cannot see an edited
    summary). hashlib and file/HTTP reads release the GIL, so the hash costs the
    apply no wall time on a multi-core host."""

    def __init__(self, uri: str, verified_sha256: str) -> None:
        self.uri = uri
        self.verified_sha256 = verified_sha256
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safeops-file-sha")
        self._future: Future[str] = self._pool.submit(file_sha256, uri)

    def require_unchanged(self) -> None:
        """Raise SnapshotInvalid unless the file still hashes to what was verified."""
        try:
            actual = self._future.result()
        finally:
            self._pool.shutdown(wait=False)
        if actual != self.verified_sha256:
            now, verified = tell_apart(actual, self.verified_sha256)
            raise SnapshotInvalid(
                f"Snapshot {self.uri} failed the checksum check: the file hashes to "
                f"{now}, the verified file to {verified} (changed since it was verified); "
                "nothing changed."
            )

    def cancel(self) -> None:
        self._future.cancel()
        self._pool.shutdown(wait=False)
