"""In-process notifications from a running flow to whoever started it.

The CLI runs a flow in a worker thread and needs to print ``snapshot: <uri>``
as soon as it exists and to answer an approval pause at the terminal. Flows
and tasks call :func:`emit`; with nobody listening (a worker, the UI) it does
nothing. It is a side channel for the CLI's output, never a source of truth:
approvals still go through Prefect's pause/resume.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def emit(kind: str, **data: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(kind, data)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
