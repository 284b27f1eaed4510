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
import sys
from typing import Annotated, Any, NoReturn

import typer

from safeops.cli import media, refs, site
from safeops.cli.options import Approver, RunId, SigningKey, Target, Why, handle_errors
from safeops.core.prefect_env import apply_offline_defaults

apply_offline_defaults()
# The CLI prints one line per refusal; Prefect's own tracebacks still reach the API (UI).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


class SafeopsTyper(typer.Typer):
    """The console script's entry point: Typer, plus a quick exit once Prefect was used.

    Tearing down the interpreter after Prefect, SQLAlchemy and pydantic were imported
    takes ~0.4 s of freeing objects nobody will read again. When the command is done
    this exits the way the interpreter would (non-daemon threads joined, every atexit
    handler run: Prefect's log and event flushes, logging.shutdown) and then skips only
    that teardown. Typer's test runner does not come through here."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as done:
            if "prefect" not in sys.modules:
                raise
            code = done.code
            _exit_now(code if isinstance(code, int) else (0 if code is None else 1), done)


def _exit_now(code: int, done: SystemExit) -> NoReturn:
    import atexit
    import threading

    if isinstance(done.code, str):
        print(done.code, file=sys.stderr)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


app = SafeopsTyper(
    no_args_is_help=True,
    add_completion=False,
    help="Destructive database maintenance, made safe (Prefect flows).",
)
app.add_typer(media.group, name="media")
app.add_typer(site.group, name="site")
assert refs.group is media.group  # migrate-refs and upload live in the media group


@app.command("approvals")
@handle_errors
def approvals() -> None:
    """List runs waiting for approval on the configured Prefect API."""
    from safeops.cli.local_server import use_for_this_command

    use_for_this_command()
    from rich.table import Table

    from safeops.cli.approvals import waiting_approvals
    from safeops.console.runner import console

    rows = waiting_approvals()
    if not rows:
        console.print("No run is waiting for approval.")
        return
    table = Table(
        "run id",
        "flow",
        "target",
        "counts",
        "plan hash",
        "type to confirm",
        "approved",
        "waiting since",
        "deadline",
    )
    for r in rows:
        counts = ", ".join(f"{k}={v}" for k, v in r.get("counts", {}).items() if v)
        table.add_row(
            r["run_id"],
            r.get("flow", ""),
            r.get("target", ""),
            counts,
            str(r.get("planHash", ""))[:16],
            r.get("expectedConfirmation", ""),
            _votes(r),
            str(r.get("waitingSince", "")),
            str(r.get("deadline", "")),
        )
    console.print(table)
    for r in rows:
        print(
            f"waiting: {r['run_id']} {r.get('flow', '')} plan={r.get('planHash', '')} "
            f"{_votes(r)} identity={'signed' if r.get('signed') else 'unverified'}",
            flush=True,
        )


def _votes(r: dict[str, object]) -> str:
    """``approved=1/2 (alice@example.com) needs=1``"""
    names = r.get("approvedBy") or []
    done = len(names) if isinstance(names, list) else 0
    required = int(str(r.get("requiredApprovals") or 1))
    who = f" ({', '.join(map(str, names))})" if done and isinstance(names, list) else ""
    return f"approved={done}/{required}{who} needs={max(required - done, 0)}"


@app.command("approve")
@handle_errors
def approve(
    run_id: RunId,
    confirm: Annotated[
        str,
        typer.Option(
            "--confirm",
            help="The confirmation text the run asks for, e.g. "
            "'PURGE 200 IMAGES' or the site slug.",
        ),
    ],
    reason: Why = "approved from the CLI",
    approver: Approver = None,
    key: SigningKey = None,
) -> None:
    """Approve a paused run (signed when the run asks for signatures); a wrong
    confirmation or a refused signature ends it with nothing changed."""
    from safeops.cli.local_server import use_for_this_command

    use_for_this_command()
    from safeops.cli.approvals import answer, answer_for

    answer(
        run_id,
        answer_for(
            run_id,
            decision="approve",
            reason=reason,
            confirmation=confirm,
            approver=approver,
            key=key,
        ),
    )
    print(f"approved: {run_id}", flush=True)


@app.command("reject")
@handle_errors
def reject(
    run_id: RunId,
    reason: Why,
    approver: Approver = None,
    key: SigningKey = None,
) -> None:
    """Reject a paused run: it ends with nothing changed."""
    from safeops.cli.local_server import use_for_this_command

    use_for_this_command()
    from safeops.cli.approvals import answer, answer_for

    answer(
        run_id,
        answer_for(
            run_id, decision="reject", reason=reason, confirmation="", approver=approver, key=key
        ),
    )
    print(f"rejected: {run_id}", flush=True)


@app.command("sign-plan")
@handle_errors
def sign_plan_command(
    plan_hash: Annotated[str, typer.Argument(help="The plan hash a dry run printed.")],
    flow: Annotated[
        str,
        typer.Option(
            "--flow",
            help="The flow that will apply it: purge-product-media, restore-product-media, "
            "migrate-product-media-refs, reset-site-structure or restore-site-structure.",
        ),
    ],
    target: Target,
    reason: Why,
    key: SigningKey = None,
    out: Annotated[
        str | None, typer.Option("--out", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Sign a saved plan: hand the file to --plan-signature (valid for
    SAFEOPS_SAVED_PLAN_MAX_AGE_S, default 7 days)."""
    from pathlib import Path

    from safeops.cli.approvals import sign_plan

    signed = sign_plan(plan_hash, flow=flow, target=target, reason=reason, key=key)
    if out is None:
        print(signed, end="", flush=True)
    else:
        Path(out).write_text(signed, encoding="utf-8")
        print(f"signed plan: {out}", flush=True)


audit = typer.Typer(no_args_is_help=True, help="The audit rows applies wrote.")
app.add_typer(audit, name="audit")


@audit.command("verify")
@handle_errors
def audit_verify(target: Target) -> None:
    """Re-check every signed audit row of a target against SAFEOPS_ALLOWED_SIGNERS, one
    line per row; exit 3 when any signed row no longer verifies."""
    from safeops.cli.approvals import verify_audit

    lines, ok = verify_audit(target)
    for line in lines:
        print(line, flush=True)
    if not lines:
        print(f"no audit row in {target}", flush=True)
    if not ok:
        raise typer.Exit(3)


server = typer.Typer(
    no_args_is_help=True,
    help="The local Prefect server the commands share when PREFECT_API_URL is not set.",
)
app.add_typer(server, name="server")


@server.command("status")
@handle_errors
def server_status() -> None:
    """Say which Prefect API the commands use: the configured one, or the local server."""
    from safeops.cli import local_server

    configured = local_server.configured_api_url()
    running = local_server.running()
    if configured:
        print(f"api: {configured} (configured: the local server is not used)", flush=True)
    booting = local_server.starting() if running is None else None
    if running is not None:
        print(f"running: {running.describe()}", flush=True)
    elif booting is not None:
        print(f"starting: {booting.describe()}", flush=True)
    else:
        print(
            f"stopped: no local Prefect server runs (files in {local_server.server_dir()})",
            flush=True,
        )


@server.command("start")
@handle_errors
def server_start() -> None:
    """Start the local server now (commands start it on first use anyway)."""
    from safeops.cli import local_server

    print(f"running: {local_server.ensure().describe()}", flush=True)


@server.command("stop")
@handle_errors
def server_stop() -> None:
    """Stop the local server; the next command starts it again (its runs are kept)."""
    from safeops.cli import local_server

    stopped = local_server.stop()
    if stopped is None:
        print("stopped: no local Prefect server was running", flush=True)
    else:
        print(f"stopped: {stopped.describe()}", flush=True)


@app.command("demo")
@handle_errors
def demo() -> None:
    """Run the whole media purge and site reset story on an embedded PostgreSQL."""
    from safeops.demo.story import run_demo

    run_demo()


if __name__ == "__main__":
    app()
