"""The ``safeops`` command: the same flows the UI and schedules run, from a terminal.

Exit codes (DESIGN.md): 0 done; 2 bad input; 3 refused by a guard; 4 approval
rejected or timed out; 1 anything else. Every refusal prints one line saying
why, with the numbers. ``snapshot: <uri>``, ``after: <uri>`` and
``plan: <hash>`` are printed on lines of their own for scripts; a command that
writes an undo snapshot prints exactly one ``snapshot:`` line, the one to
restore from.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from safeops.cli import media, refs, site
from safeops.cli.options import handle_errors
from safeops.core.prefect_env import apply_offline_defaults

apply_offline_defaults()
# The CLI prints one line per refusal; Prefect's own tracebacks still reach the API (UI).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Destructive database maintenance, made safe (Prefect flows).")
app.add_typer(media.group, name="media")
app.add_typer(site.group, name="site")
assert refs.group is media.group  # migrate-refs and upload live in the media group

RunId = Annotated[str, typer.Argument(help="The paused flow run's id (safeops approvals).")]


@app.command("approvals")
@handle_errors
def approvals() -> None:
    """List runs waiting for approval on the configured Prefect API."""
    from rich.table import Table

    from safeops.cli.approvals import waiting_approvals
    from safeops.console.runner import console

    rows = waiting_approvals()
    if not rows:
        console.print("No run is waiting for approval.")
        return
    table = Table("run id", "flow", "target", "counts", "plan hash", "type to confirm",
                  "waiting since", "deadline")
    for r in rows:
        counts = ", ".join(f"{k}={v}" for k, v in r.get("counts", {}).items() if v)
        table.add_row(r["run_id"], r.get("flow", ""), r.get("target", ""), counts,
                      str(r.get("planHash", ""))[:16], r.get("expectedConfirmation", ""),
                      str(r.get("waitingSince", "")), str(r.get("deadline", "")))
    console.print(table)
    for r in rows:
        print(f"waiting: {r['run_id']} {r.get('flow', '')} plan={r.get('planHash', '')}",
              flush=True)


@app.command("approve")
@handle_errors
def approve(run_id: RunId,
            approver: Annotated[str, typer.Option("--approver", help="Your name (audit row).")],
            confirm: Annotated[str, typer.Option(
                "--confirm", help="The confirmation text the run asks for, e.g. "
                "'PURGE 200 IMAGES' or the site slug.")],
            reason: Annotated[str, typer.Option("--reason")] = "approved from the CLI") -> None:
    """Approve a paused run; a wrong confirmation ends it with nothing changed."""
    from safeops.cli.approvals import answer

    answer(run_id, {"approver": approver, "reason": reason, "confirmation": confirm,
                    "decision": "approve"})
    print(f"approved: {run_id}", flush=True)


@app.command("reject")
@handle_errors
def reject(run_id: RunId,
           approver: Annotated[str, typer.Option("--approver", help="Your name (audit trail).")],
           reason: Annotated[str, typer.Option("--reason", help="Why the change is rejected.")],
           ) -> None:
    """Reject a paused run: it ends with nothing changed."""
    from safeops.cli.approvals import answer

    answer(run_id, {"approver": approver, "reason": reason, "confirmation": "",
                    "decision": "reject"})
    print(f"rejected: {run_id}", flush=True)


@app.command("demo")
@handle_errors
def demo() -> None:
    """Run the whole media purge and site reset story on an embedded PostgreSQL."""
    from safeops.demo.story import run_demo

    run_demo()


if __name__ == "__main__":
    app()
