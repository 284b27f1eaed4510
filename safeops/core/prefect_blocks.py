"""Prefect blocks (a Secret, a notification block) loaded by name, synchronously.

``Block.load`` is an ``async_dispatch`` function: called while an event loop runs in
the calling thread (the Prefect test harness, some worker set-ups) it returns a
coroutine, not the block. ``_sync=True`` is that dispatcher's switch for the
synchronous path (Prefect 3.8 has no public ``load_sync``), so it is written once here
rather than at every call site.
"""

from __future__ import annotations

from typing import Any


def load_block(name: str, block_class: Any = None) -> Any:
    """The block document ``name`` (``<type-slug>/<name>`` when ``block_class`` is None)."""
    if block_class is None:
        from prefect.blocks.core import Block

        block_class = Block
    return block_class.load(name, _sync=True)


def secret_value(name: str) -> Any:
    """The value of the Prefect Secret block ``name``; raises when it cannot be loaded."""
    from prefect.blocks.system import Secret

    return load_block(name, Secret).get()
