"""The ``safeops`` command: the same flows the UI and schedules run, from a terminal.

Exit codes (DESIGN.md): 0 done; 2 bad input; 3 refused by a guard; 4 approval
rejected or timed out; 1 anything else. Every refusal prints one line saying
why, with the numbers. ``snapshot: <uri>`` and ``plan: <hash>`` are printed on
lines of their own for scripts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from safeops.core.prefect_env import apply_offline_defaults

apply_offline_defaults()
# The CLI prints one line per refusal; Prefect's own tracebacks still reach the API (UI).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Destructive database maintenance, made safe (Prefect flows).")
media = typer.Typer(no_args_is_help=True, help="Medusa product media: snapshot, verify, purge, "
                                                "restore.")
site = typer.Typer(no_args_is_help=True, help="CMS site structure: check, reset, restore.")
app.add_typer(media, name="media")
app.add_typer(site, name="site")

TARGET = typer.Option("medusa", "--target", help="Database name to resolve "
                      "(<TARGET>_DATABASE_URL or Secret block <target>-database-url).")
CMS_TARGET = typer.Option("cms", "--target", help="Database name to resolve "
                          "(<TARGET>_DATABASE_URL or Secret block <target>-database-url).")
LIVE = typer.Option(False, "--live", help="Really change the database (default: dry run).")
YES = typer.Option(False, "--yes", help="Approve as the current user without a prompt.")
PLAN = typer.Option(None, "--plan", help="Plan hash of a reviewed dry run; refused if the "
                    "plan has changed since.")
REASON = typer.Option(None, "--reason", help="Reason recorded with the approval.")
TIMEOUT = typer.Option(3600, "--timeout", help="Seconds the approval may wait.")


def fail(exc: BaseException) -> NoReturn:
    """One line on stderr, the documented exit code."""
    from safeops.core.errors import SafeopsError

    code = getattr(exc, "exit_code", None)
    if not isinstance(exc, SafeopsError):
        name = type(exc).__name__
        if name in ("ParameterTypeError", "SignatureMismatchError", "ValidationError"):
            code = 2
        elif name == "FlowPauseTimeout":
            code = 4
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code if isinstance(code, int) else 1)


def guarded(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted; nothing was approved", file=sys.stderr)
        raise typer.Exit(4) from None
    except BaseException as exc:
        fail(exc)


def _run(flow_fn: Callable[..., Any], params: dict[str, Any], *, live: bool = False,
         yes: bool = False, plan: str | None = None, reason: str | None = None) -> Any:
    from safeops.cli.runner import Decider, current_user, refuse_unattended, run_flow

    refuse_unattended(live, yes, plan is not None)
    if plan is not None:
        params = {**params, "approved_plan_hash": plan, "approved_by": current_user()}
    return run_flow(flow_fn, params, Decider(yes, reason) if live else None)


def _report_run(result: Any) -> None:
    from safeops.cli.runner import console

    if result.message:
        console.print(result.message)
    if result.dry_run:
        console.print("Dry run: nothing changed. Apply this exact plan with "
                      f"--live --plan {result.plan.plan_hash}")
        return
    if result.approval:
        console.print(f"Approved by {result.approval.approver} ({result.approval.via}).")
    if result.applied:
        console.print("Applied: " + ", ".join(f"{k}={v}" for k, v in result.applied.items()))
    if result.after_totals:
        console.print("After: " + ", ".join(f"{k}={v}" for k, v in result.after_totals.items()))


# ---------------------------------------------------------------- media


@media.command("snapshot")
def media_snapshot(target: str = TARGET,
                   to: str = typer.Option(None, "--to", help="Folder or s3://bucket/prefix "
                                          "(default SAFEOPS_SNAPSHOT_URI).")) -> None:
    """Write every image reference to a new JSON snapshot (read-only)."""
    def action() -> None:
        from flows.media_snapshot import snapshot_product_media
        from safeops.cli.runner import console

        ref = _run(snapshot_product_media, {"target": target, "snapshot_location": to})
        console.print(", ".join(f"{k}={v}" for k, v in ref.totals.items()))
    guarded(action)


@media.command("verify")
def media_verify(uri: str, target: str = TARGET,
                 check_objects: bool = typer.Option(False, "--check-objects",
                                                    help="HEAD every image's object.")) -> None:
    """Check a snapshot's format, checksum, totals, source and live id sets (exit 3 if not)."""
    def action() -> None:
        from flows.media_snapshot import verify_product_media_snapshot
        from safeops.cli.runner import console

        report = _run(verify_product_media_snapshot, {"snapshot_uri": uri, "target": target,
                                                      "check_objects": check_objects})
        for check in report.checks:
            console.print(f"ok  {check.name}: {check.detail}")
    guarded(action)


@media.command("purge")
def media_purge(live: bool = LIVE, yes: bool = YES, plan: str = PLAN, target: str = TARGET,
                reason: str = REASON, timeout: int = TIMEOUT) -> None:
    """Remove every image reference; MinIO files stay. Dry run unless --live."""
    def action() -> None:
        from flows.media_purge import purge_product_media

        result = _run(purge_product_media, {"target": target, "dry_run": not live,
                                            "approval_timeout_s": timeout},
                      live=live, yes=yes, plan=plan, reason=reason)
        _report_run(result)
    guarded(action)


@media.command("restore")
def media_restore(uri: str, live: bool = LIVE, yes: bool = YES, plan: str = PLAN,
                  target: str = TARGET, reason: str = REASON, timeout: int = TIMEOUT,
                  force: bool = typer.Option(False, "--force", help="Restore a snapshot taken "
                                             "from another database.")) -> None:
    """Put back what a snapshot holds (ids, urls, ranks, timestamps). Dry run unless --live."""
    def action() -> None:
        from flows.media_restore import restore_product_media

        print(f"snapshot: {uri}", flush=True)
        result = _run(restore_product_media, {"snapshot_uri": uri, "target": target,
                                              "dry_run": not live, "force": force,
                                              "approval_timeout_s": timeout},
                      live=live, yes=yes, plan=plan, reason=reason)
        _report_run(result)
    guarded(action)


# ---------------------------------------------------------------- site


@site.command("check")
def site_check(site_id: str, target: str = CMS_TARGET) -> None:
    """Exit 0 when the site may be reset, 3 (with the reason) when it may not."""
    def action() -> None:
        from flows.site_reset import check_site_reset
        from safeops.core.errors import ResetNotAllowed

        verdict = _run(check_site_reset, {"site_id": site_id, "target": target})
        if not verdict["canReset"]:
            raise ResetNotAllowed(verdict["reason"])
        print(verdict["reason"], flush=True)
    guarded(action)


@site.command("reset")
def site_reset(site_id: str, live: bool = LIVE, yes: bool = YES, plan: str = PLAN,
               target: str = CMS_TARGET, reason: str = REASON, timeout: int = TIMEOUT) -> None:
    """Delete the site's categories, authors, pages, content types and their SEO meta."""
    def action() -> None:
        from flows.site_reset import reset_site_structure

        result = _run(reset_site_structure, {"site_id": site_id, "target": target,
                                             "dry_run": not live,
                                             "approval_timeout_s": timeout},
                      live=live, yes=yes, plan=plan, reason=reason)
        _report_run(result)
    guarded(action)


@site.command("restore")
def site_restore(uri: str, live: bool = LIVE, yes: bool = YES, plan: str = PLAN,
                 target: str = CMS_TARGET, reason: str = REASON, timeout: int = TIMEOUT,
                 skip_conflicts: bool = typer.Option(False, "--skip-conflicts",
                                                     help="Restore around rows created since "
                                                          "the reset instead of refusing.")
                 ) -> None:
    """Undo a reset from its snapshot: rows, post links and blueprint state."""
    def action() -> None:
        from flows.site_restore import restore_site_structure

        print(f"snapshot: {uri}", flush=True)
        result = _run(restore_site_structure, {"snapshot_uri": uri, "target": target,
                                               "dry_run": not live,
                                               "skip_conflicts": skip_conflicts,
                                               "approval_timeout_s": timeout},
                      live=live, yes=yes, plan=plan, reason=reason)
        _report_run(result)
    guarded(action)


from safeops.cli import refs as cli_refs  # noqa: E402

cli_refs.register(media)


# ---------------------------------------------------------------- approvals


@app.command("approvals")
def approvals() -> None:
    """List runs waiting for approval on the configured Prefect API."""
    def action() -> None:
        from rich.table import Table

        from safeops.cli.approvals import waiting_approvals
        from safeops.cli.runner import console

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
    guarded(action)


@app.command("approve")
def approve(run_id: str,
            approver: str = typer.Option(..., "--approver", help="Your name (audit row)."),
            confirm: str = typer.Option(..., "--confirm", help="The confirmation text the run "
                                        "asks for, e.g. 'PURGE 200 IMAGES' or the site slug."),
            reason: str = typer.Option("approved from the CLI", "--reason")) -> None:
    """Approve a paused run; a wrong confirmation ends it with nothing changed."""
    def action() -> None:
        from safeops.cli.approvals import answer

        answer(run_id, {"approver": approver, "reason": reason, "confirmation": confirm,
                        "decision": "approve"})
        print(f"approved: {run_id}", flush=True)
    guarded(action)


@app.command("reject")
def reject(run_id: str,
           approver: str = typer.Option(..., "--approver", help="Your name (audit trail)."),
           reason: str = typer.Option(..., "--reason", help="Why the change is rejected.")
           ) -> None:
    """Reject a paused run: it ends with nothing changed."""
    def action() -> None:
        from safeops.cli.approvals import answer

        answer(run_id, {"approver": approver, "reason": reason, "confirmation": "",
                        "decision": "reject"})
        print(f"rejected: {run_id}", flush=True)
    guarded(action)


@app.command("demo")
def demo() -> None:
    """Run the whole media purge and site reset story on an embedded PostgreSQL."""
    def action() -> None:
        from safeops.demo.story import run_demo

        run_demo()
    guarded(action)


if __name__ == "__main__":
    app()
