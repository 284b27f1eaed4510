"""Retry policy shared by every task: transient faults yes, refusals never."""

from __future__ import annotations

from typing import Any

from safeops.core.errors import (
    DatabaseUnreachable,
    LockTimeout,
    LoginRefused,
    StoreUnavailable,
    is_refusal,
    is_transient,
)
from safeops.core.settings import get_settings


def worth_retrying(exc: BaseException) -> bool:
    """A transient fault (lost connection, lock timeout, store hiccup), never a refusal or a
    refused login: retrying those would only repeat the same answer."""
    if is_refusal(exc) or isinstance(exc, LoginRefused):
        return False
    # LockTimeout by type: a state's exception comes back unpickled, without its chain.
    return isinstance(exc, (DatabaseUnreachable, StoreUnavailable, LockTimeout)) or is_transient(
        exc
    )


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect calls this after a failed attempt (must be a plain function)."""
    try:
        state.result()
    except Exception as exc:
        return worth_retrying(exc)
    return False


def _delays() -> list[float]:
    """1, 3, 9 s by default; SAFEOPS_RETRY_DELAY_S scales them (read when tasks are defined)."""
    first = get_settings().retry_delay_s
    return [first, 3 * first, 9 * first]


TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": _delays(),
    "retry_condition_fn": retry_transient,
}
