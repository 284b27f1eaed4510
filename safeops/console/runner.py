"""Run a flow from the terminal and answer its approval pause there.

The flow runs in a worker thread exactly as it would under a worker; when it
pauses for approval, the main thread asks the person at the terminal (or
approves as them with ``--yes``) and resumes it through Prefect's API, the
same path the UI's form takes.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from safeops.core import events
from safeops.core.errors import ApprovalDenied, BadInput, SafeopsError
from safeops.core.models import Plan
from safeops.core.settings import get_settings
from safeops.core.signing import ALLOWED_SIGNERS_ENV, key_fingerprint, signing_key_fingerprint
from tasks.common.approval import register_starter, signed_answer, starting_with_key
from tasks.common.notify import approve_command

console = Console(highlight=False)


def start_prefect() -> None:
    """Reach the Prefect API in the main thread before any other thread needs it: the
    CLI has pointed PREFECT_API_URL at the operator's API or the local server
    (safeops/cli/local_server.py); without one (the demo) this starts the ephemeral
    server, and two threads racing to start it create two servers on one SQLite file."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.hello()


def current_user() -> str:
    try:
        return get_settings().approver or getpass.getuser()
    except Exception:
        return "unknown"


def print_plan(plan: Plan) -> None:
    table = Table(title=f"{plan.kind} on {plan.target}", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in plan.counts.items():
        table.add_row(name, str(count))
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    # What the approver must judge besides counts (an untraced snapshot, where restored
    # images point): a dry run reviewed for --plan shows it too.
    for detail in plan.details:
        print(f"note: {detail}", flush=True)


class ProgressBars:
    """Rich progress bars for long steps (snapshot streaming), fed by flow events."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def tick(self, data: dict[str, Any]) -> None:
        if not console.is_terminal:
            return
        if self._progress is None:
            self._progress = Progress(transient=True, console=console)
            self._progress.start()
        key = data["key"]
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(data["description"], total=data["total"])
        self._progress.update(self._tasks[key], completed=data["done"], total=data["total"])

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()


class Decider:
    """How a live run's approval is answered from the CLI.

    Signed runs (the worker has allowed signers): the answer is signed with ``key``
    (else SAFEOPS_SIGNING_KEY, else the ssh-agent) at the current time, and that key is
    registered as the run's starter (with SAFEOPS_FORBID_SELF_APPROVAL it never counts
    toward the quorum; ``starter_key`` names it before the run starts, so a saved plan
    signed with it does not count either). The CLI answers only a run's first pause;
    the pauses of a quorum that still need others print the command they run. A
    signing failure becomes an unsigned rejection: the run ends with nothing changed
    rather than waiting."""

    def __init__(self, yes: bool, reason: str | None, key: str | None = None) -> None:
        self.yes = yes
        self.reason = reason
        self.key = key

    def answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        info = request.get("request") or {}
        if int(request.get("round", 1)) > 1:
            print(
                f"waiting: {request.get('needed', 1)} more approval(s) of "
                f"{info.get('requiredApprovals', '?')} for run {info.get('flowRunId')}: "
                f"{approve_command(info)}",
                flush=True,
            )
            return None
        plain = self._plain(request)
        if not info.get("signed"):
            return plain
        try:
            signed = signed_answer(
                info,
                decision=plain["decision"],
                reason=plain["reason"],
                confirmation=plain["confirmation"],
                key=self.key,
            )
        except SafeopsError as exc:
            # Only the signed form's fields (it refuses any other, e.g. ``approver``): an
            # unsigned rejection, so the run ends rejected instead of staying paused.
            why = " ".join(str(exc).split())[:1900]
            return {
                "reason": f"could not sign the approval: {why}",
                "confirmation": plain["confirmation"],
                "decision": "reject",
                "signed_at": str(info.get("signedAt") or ""),
                "signature": "",
                "statement": "",
            }
        register_starter(info.get("flowRunId"), key_fingerprint(signed["signature"]))
        return signed

    def starter_key(self) -> str | None:
        """The fingerprint of the key this CLI signs with, when signing is configured."""
        if not os.environ.get(ALLOWED_SIGNERS_ENV, "").strip():
            return None
        return signing_key_fingerprint(self.key)

    def _plain(self, request: dict[str, Any]) -> dict[str, Any]:
        expected = request["expected_confirmation"]
        if self.yes:
            user = current_user()
            print(f"Approved as {user} (--yes): {expected}", flush=True)
            return {
                "approver": user,
                "reason": self.reason or f"--yes on {socket.gethostname()}",
                "confirmation": expected,
                "decision": "approve",
            }
        console.print("\n[bold]This will:[/bold]")
        for line in request["what"]:
            console.print(f"  - {line}")
        console.print(f"Undo point: {request['snapshot_uri']}")
        try:
            typed = console.input(f"Type [bold]{expected}[/bold] to approve: ").strip()
            if typed != expected:
                return {
                    "approver": current_user(),
                    "reason": "typed confirmation did not match",
                    "confirmation": typed,
                    "decision": "reject",
                }
            reason = self.reason or console.input("Reason (ticket, context): ").strip()
        except (EOFError, KeyboardInterrupt):
            return {
                "approver": current_user(),
                "reason": "interrupted at the terminal",
                "confirmation": "",
                "decision": "reject",
            }
        return {
            "approver": current_user(),
            "reason": reason or "approved at the terminal",
            "confirmation": expected,
            "decision": "approve",
        }


def run_flow(
    flow_fn: Callable[..., Any],
    params: dict[str, Any],
    decider: Decider | None,
    show_plan: bool = True,
) -> Any:
    """Run the flow; print contract lines as they happen; answer approvals."""
    from prefect.flow_runs import resume_flow_run

    start_prefect()
    inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    outcome: dict[str, Any] = {}

    bars = ProgressBars()

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            bars.tick(data)
            return
        bars.close()
        if kind in ("snapshot", "after"):
            print(f"{kind}: {data['uri']}", flush=True)
        elif kind == "plan":
            if show_plan:
                print_plan(data["plan"])
            print(f"plan: {data['plan'].plan_hash}", flush=True)
        elif kind == "approval":
            inbox.put((kind, data))
        elif kind == "slot-wait":
            print(data["line"], flush=True)
        elif kind == "notice":
            print(f"note: {data['text']}", flush=True)

    # A live run answered here is started by the key the CLI signs with: known before
    # the run exists, so its own saved plan cannot count toward its quorum either.
    starter_key = decider.starter_key() if decider is not None else None

    def body() -> None:
        try:
            with starting_with_key(starter_key):
                outcome["value"] = flow_fn(**params)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            inbox.put(("done", {}))

    with events.listening(listener):
        worker = threading.Thread(target=body, name="safeops-flow", daemon=True)
        worker.start()
        while True:
            kind, data = inbox.get()
            if kind == "done":
                break
            answer: dict[str, Any] | None
            if decider is None:
                answer = {
                    "approver": current_user(),
                    "reason": "no approver at the CLI",
                    "confirmation": "",
                    "decision": "reject",
                }
            else:
                answer = decider.answer(data)
            if answer is not None:  # None: a later pause of a quorum, for others to answer
                _resume_when_paused(data["flow_run_id"], answer, resume_flow_run)
        worker.join()
    bars.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _resume_when_paused(run_id: Any, answer: dict[str, Any], resume: Callable[..., Any]) -> None:
    import time

    from prefect import get_client

    with get_client(sync_client=True) as client:
        for _ in range(300):
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_paused():
                break
            if state is not None and state.is_final():
                return
            time.sleep(0.1)
    from prefect.exceptions import FlowPauseTimeout, NotPausedError

    # The run may have stopped waiting (timed out) meanwhile: its own outcome is reported.
    with contextlib.suppress(NotPausedError, FlowPauseTimeout):
        resume(run_id, run_input=answer)


def refuse_unattended(live: bool, yes: bool, has_plan: bool) -> None:
    if live and not yes and not has_plan and not sys.stdin.isatty():
        raise ApprovalDenied(
            "Refused: --live without a terminal needs --yes (approve as the "
            "current user) or --plan HASH; nothing changed."
        )


def run_command(
    flow_fn: Callable[..., Any],
    params: dict[str, Any],
    *,
    live: bool = False,
    yes: bool = False,
    plan: str | None = None,
    reason: str | None = None,
    plan_signature: str | None = None,
    key: str | None = None,
) -> Any:
    """What every flow-running command does: refuse an unattended live run, turn a saved
    plan (and its signature file, ``safeops sign-plan``) into the flow's parameters,
    answer the approval as the flags say."""
    if plan_signature is not None and plan is None:
        raise BadInput("--plan-signature signs a saved plan: pass it with --plan HASH.")
    refuse_unattended(live, yes, plan is not None)
    if plan is not None:
        params = {**params, "approved_plan_hash": plan, "approved_by": current_user()}
    if plan_signature is not None:
        params = {**params, "approved_plan_signature": read_plan_signature(flow_fn, plan_signature)}
    return run_flow(flow_fn, params, Decider(yes, reason, key) if live else None)


def read_plan_signature(flow_fn: Callable[..., Any], path: str) -> str:
    """The signed plan file's text, for a flow that takes ``approved_plan_signature``."""
    import inspect
    from pathlib import Path

    target = getattr(flow_fn, "fn", flow_fn)
    if "approved_plan_signature" not in inspect.signature(target).parameters:
        raise BadInput("This command does not take --plan-signature.")
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"--plan-signature {path!r} cannot be read ({type(exc).__name__})."
        ) from None


def report_run(result: Any) -> None:
    """The closing lines of a destructive command (``after:`` was printed when written)."""
    if result.message:
        console.print(result.message)
    if result.dry_run:
        console.print(
            "Dry run: nothing changed. Apply this exact plan with "
            f"--live --plan {result.plan.plan_hash}"
        )
        return
    if result.approval:
        console.print(f"Approved by {result.approval.approver} ({result.approval.via}).")
    if result.applied:
        console.print("Applied: " + ", ".join(f"{k}={v}" for k, v in result.applied.items()))
    if result.after_totals:
        console.print("After: " + ", ".join(f"{k}={v}" for k, v in result.after_totals.items()))
