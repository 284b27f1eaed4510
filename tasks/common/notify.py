"""Telling approvers: a message through a Prefect notification block.

``SAFEOPS_NOTIFY_BLOCK`` names any Prefect notification block (Slack webhook,
custom webhook, Apprise URLs, ...), either as ``<block-type-slug>/<name>``
(``custom-webhook/approvers``) or by its bare name when that name is unique.
A message goes out when a run pauses for approval (each pause, with the count
so far), and when it is approved, rejected or times out.

A notification is a courtesy, never a control: a block that cannot be loaded
or a receiver that is down is logged as one warning and the run carries on
exactly as it would have (the approval itself only ever goes through Prefect's
pause/resume). The warning names the block and the error type, never the
block's URL (a Slack webhook URL is a credential).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from typing import Any

from safeops.core.prefect_blocks import load_block

NOTIFY_BLOCK_ENV = "SAFEOPS_NOTIFY_BLOCK"
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)

EVENTS = {
    "paused": "waiting for approval",
    "approved": "approved",
    "rejected": "rejected",
    "timed-out": "approval timed out",
}


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run
        return logging.getLogger("safeops.notify")


def ui_link(flow_run_id: str | None) -> str | None:
    """The run's page in the Prefect UI, from PREFECT_UI_URL when set."""
    base = os.environ.get("PREFECT_UI_URL", "").strip().rstrip("/")
    if not base or not flow_run_id:
        return None
    return f"{base}/runs/flow-run/{flow_run_id}"


def approve_command(request: dict[str, Any]) -> str:
    """The exact command an approver runs (signed runs add their key by SAFEOPS_SIGNING_KEY
    or the agent, so the command is the same for everyone)."""
    return (
        f"safeops approve {request.get('flowRunId', 'RUN_ID')} --confirm "
        f"{shlex.quote(str(request.get('expectedConfirmation', '')))} "
        f"--reason 'TICKET: why'"
    )


def message(event: str, request: dict[str, Any], detail: str = "") -> tuple[str, str]:
    """(subject, body): flow, target (masked), counts, plan hash, snapshot, deadline, link,
    and the approve command while an answer is still wanted."""
    subject = (
        f"safeops: {request.get('flow', '?')} on {request.get('target', '?')} "
        f"{EVENTS.get(event, event)}"
    )
    counts = ", ".join(f"{k}={v}" for k, v in (request.get("counts") or {}).items())
    lines = [
        subject,
        f"flow: {request.get('flow', '')}",
        f"target: {request.get('targetDescription') or request.get('target', '')}",
        f"counts: {counts}",
        f"plan hash: {request.get('planHash', '')}",
        f"snapshot: {request.get('snapshotUri', '')}",
        f"deadline: {request.get('deadline', '')}",
        f"identity: {'signed (allowed signers)' if request.get('signed') else 'unverified'}",
        f"approvals: {request.get('approvedCount', 0)} of {request.get('requiredApprovals', 1)}",
    ]
    link = ui_link(request.get("flowRunId"))
    if link:
        lines.append(f"run: {link}")
    if event == "paused":
        lines.append(f"approve: {approve_command(request)}")
        lines.append(
            f"reject:  safeops reject {request.get('flowRunId', 'RUN_ID')} --reason 'why not'"
        )
    if detail:
        lines.append(detail)
    return subject, "\n".join(lines)


def notify_approvers(event: str, request: dict[str, Any], detail: str = "") -> bool:
    """Send one message; True when sent. Never raises: a failure is a logged warning."""
    name = os.environ.get(NOTIFY_BLOCK_ENV, "").strip()
    if not name:
        return False
    try:
        subject, body = message(event, request, detail)
        block = _load_block(name)
        block.notify(body=body, subject=subject)
        return True
    except Exception as exc:  # a courtesy: never fails, delays or approves a run
        text = _URL.sub("<url>", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        _logger().warning(
            "Approval notification (%s) through block %r failed: %s%s; the run goes on unchanged.",
            event,
            name,
            type(exc).__name__,
            f": {text[:200]}" if text else "",
        )
        return False


def _load_block(name: str) -> Any:
    if "/" in name:
        return load_block(name)
    from prefect import get_client

    with get_client(sync_client=True) as client:
        docs = client.read_block_documents(include_secrets=False)
    slugs = sorted({d.block_type.slug for d in docs if d.name == name and d.block_type is not None})
    if len(slugs) != 1:
        raise LookupError(
            f"{len(slugs)} block types hold a block named {name!r}; write <block-type-slug>/<name>"
        )
    return load_block(f"{slugs[0]}/{name}")
