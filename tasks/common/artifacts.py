"""Prefect artifacts: the numbers an operator reads in the UI after a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from safeops.core import events
from safeops.core.models import Plan, RunResult, VerifyReport


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def counts_table(plan: Plan, applied: dict[str, int] | None, key: str) -> None:
    """Planned vs applied per table; applied is blank on a dry run."""
    if not _in_run():
        return
    rows: list[dict[str, Any]] = [
        {"what": name, "planned": n, "applied": (applied or {}).get(name, "")}
        for name, n in plan.counts.items()
    ]
    create_table_artifact(rows, key=key, description=f"{plan.kind} on {plan.target}: counts")


def summary_markdown(result: RunResult, key: str) -> None:
    if not _in_run():
        return
    lines = [
        f"# {result.flow} on `{result.target}`",
        "",
        f"- mode: **{'dry run (nothing changed)' if result.dry_run else 'live'}**",
        f"- plan hash: `{result.plan.plan_hash}`",
        f"- snapshot: `{result.snapshot_uri}`",
    ]
    if result.approval:
        lines.append(
            f"- approved by **{result.approval.approver}** via {result.approval.via}: "
            f"{result.approval.reason}"
        )
        lines.append(f"- identity: {result.approval.identity}")
        for vote in result.approval.signatures:
            lines.append(f"  - signed by {vote.principal} with {vote.fingerprint}")
    if result.after_snapshot_uri:
        lines.append(f"- snapshot after: `{result.after_snapshot_uri}`")
    if result.after_totals:
        lines.append("- after: " + ", ".join(f"{k}={v}" for k, v in result.after_totals.items()))
    if result.plan.notes:
        lines.append("- notes: " + "; ".join(result.plan.notes))
    lines += [f"- {detail}" for detail in result.plan.details]
    if result.message:
        lines += ["", result.message]
    lines += ["", "| what | planned | applied |", "|---|---:|---:|"]
    for name, n in result.plan.counts.items():
        lines.append(f"| {name} | {n} | {result.applied.get(name, '')} |")
    create_markdown_artifact("\n".join(lines), key=key, description=result.flow)


def snapshot_link(uri: str, key: str, announce: str | None = None) -> None:
    """Link a snapshot from the run's artifacts; ``announce`` tells the CLI which line
    to print for it: ``snapshot`` for the undo point a run wrote (the one line a script
    takes to restore from), ``after`` for the check written after an apply, nothing for
    a snapshot the caller handed in."""
    if announce is not None:
        events.emit(announce, uri=uri)
    if not _in_run():
        return
    link = uri if uri.startswith("s3://") else Path(uri).resolve().as_uri()
    create_link_artifact(link, link_text=uri, key=key, description="snapshot written by this run")


class Progress:
    """A progress artifact updated at most once a second, so big catalogs do
    not flood the API; the same ticks drive the CLI's progress bar."""

    def __init__(self, key: str, total: int, description: str) -> None:
        self.key = key
        self.description = description
        self.total = max(total, 1)
        self._id: UUID | None = None
        self._last = 0.0
        if _in_run():
            self._id = cast(UUID, create_progress_artifact(0.0, key=key, description=description))

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not (force or now - self._last >= 1.0):
            return
        self._last = now
        events.emit(
            "progress", key=self.key, description=self.description, done=done, total=self.total
        )
        if self._id is not None:
            update_progress_artifact(self._id, min(100.0, 100.0 * done / self.total))

    def finish(self, done: int) -> None:
        """The last tick: ``done`` becomes the total, for totals that were an upper bound."""
        self.total = max(done, 1)
        self.update(done, force=True)


def verify_table(report: VerifyReport, key: str) -> None:
    if not _in_run():
        return
    rows = [
        {"check": c.name, "ok": "yes" if c.ok else "NO", "detail": c.detail} for c in report.checks
    ]
    create_table_artifact(rows, key=key, description=f"verification of {report.uri}")


def rows_table(rows: list[dict[str, Any]], key: str, description: str) -> None:
    """Any table of rows (same columns in each), when the counts are not per table."""
    if not _in_run():
        return
    create_table_artifact(rows, key=key, description=description)
