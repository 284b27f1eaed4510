"""The counts table a migration publishes: planned and done, per outcome and reason.

Its own module because the flow builds it twice (after the plan, after the
apply) from the plan's counts and the copy and write tasks' results.
"""

from __future__ import annotations

from typing import Any

from safeops.core.models import Plan
from tasks.media.refs.plan import SKIP_REASONS


def outcome_rows(plan: Plan, applied: dict[str, int] | None) -> list[dict[str, Any]]:
    """The counts table: copied, reused, already done, skipped and failed by reason."""
    done = applied or {}
    live = applied is not None
    rows: list[dict[str, Any]] = [
        {
            "what": "copy (server-side copy_object)",
            "planned": plan.counts.get("to_copy", 0),
            "done": done.get("copied", 0) if live else "",
        },
        {
            "what": "reuse (copy left by an interrupted run)",
            "planned": plan.counts.get("to_reuse", 0),
            "done": done.get("reused", 0) if live else "",
        },
        {
            "what": "already done (ref with same sourceImageId and etag)",
            "planned": plan.counts.get("already_done", 0),
            "done": "",
        },
    ]
    rows += [
        {
            "what": f"skipped: {r.replace('_', ' ')}",
            "planned": plan.counts[f"skipped_{r}"],
            "done": "",
        }
        for r in SKIP_REASONS
        if plan.counts.get(f"skipped_{r}")
    ]
    rows += [
        {"what": f"failed: {k.removeprefix('failed_').replace('_', ' ')}", "planned": "", "done": v}
        for k, v in done.items()
        if k.startswith("failed_")
    ]
    rows += [
        {
            "what": "refs written",
            "planned": plan.counts.get("to_copy", 0) + plan.counts.get("to_reuse", 0),
            "done": done.get("refs_written", 0) if live else "",
        },
        {
            "what": "products updated",
            "planned": plan.counts.get("products", 0),
            "done": done.get("products_updated", 0) if live else "",
        },
    ]
    return rows
