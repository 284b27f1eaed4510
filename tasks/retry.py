"""Retry policy shared by every task: transient faults yes, refusals never."""

from __future__ import annotations

from typing import Any

from safeops.errors import TRANSIENT_MARKERS, LockTimeout, is_refusal


def _is_transient(exc: BaseException) -> bool:
    from safeops.db import DatabaseUnreachable, LoginRefused
    from safeops.snapshot_store import StoreUnavailable

    if is_refusal(exc) or isinstance(exc, LoginRefused):
        return False
    # LockTimeout by type: a state's exception comes back unpickled, without its chain.
    if isinstance(exc, (DatabaseUnreachable, StoreUnavailable, LockTimeout, ConnectionError,
                        TimeoutError)):
        return True
    chain: BaseException | None = exc
    while chain is not None:
        if type(chain).__name__ in TRANSIENT_MARKERS:
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect calls this after a failed attempt (must be a plain function)."""
    try:
        state.result()
    except Exception as exc:
        return _is_transient(exc)
    return False


def _delays() -> list[float]:
    """1, 3, 9 s by default; SAFEOPS_RETRY_DELAY_S scales them (read when tasks are defined)."""
    from safeops.settings import get_settings

    first = get_settings().task_retry_delay_s
    return [first, 3 * first, 9 * first]


TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": _delays(),
    "retry_condition_fn": retry_transient,
}
