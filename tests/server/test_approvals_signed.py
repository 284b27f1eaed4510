"""Issue 12 in the Prefect UI: a signed approval, pasted into the form by headless Chromium.

The same PostgreSQL-backed server and two process workers as test_deployments.py. The
signed runs get their allowed signers as a job variable of the run (``env``), which the
process worker adds to its own environment: one stack serves the unsigned tests and
these. The throwaway key is made with ssh-keygen in a temporary folder; the test reads
the statement and the signing command from the form, runs that command with its key,
pastes the signature and submits, as an approver would.

This file sorts before test_deployments.py on purpose: that file's last test stops the
workers.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MEDUSA_TABLES
from tests.pg import scalar, table_checksums
from tests.server.conftest import ARTIFACTS, CHROMIUM, Stack, resume_form

pytestmark = [
    pytest.mark.server,
    pytest.mark.xdist_group("prefect-server"),  # the same stack as test_deployments.py
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} missing: `apt-get install chromium` (.ci/run does)",
    ),
]
TARGET = "medusa-e"
PLACEHOLDER = "REPLACE-WITH-YOUR-REASON"  # what the form asks the approver to replace
FORM_KEY = "~/.ssh/id_ed25519"  # the key path the shown command names


@dataclass(frozen=True)
class Signer:
    key: Path
    private_text: str
    fingerprint: str
    allowed_signers: Path
    principal: str


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> list[Signer]:
    """Two throwaway ed25519 keys and one allowed_signers file naming both."""
    folder = tmp_path_factory.mktemp("ui-signers")
    allowed = folder / "allowed_signers"
    made, lines = [], []
    for name in ("ui-approver", "second-approver"):
        key = folder / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", f"{key}.pub"], check=True, capture_output=True, text=True
        ).stdout.split()[1]
        key_type, key_b64 = Path(f"{key}.pub").read_text().split()[:2]
        principal = f"{name}@example.com"
        lines.append(f"{principal} {key_type} {key_b64}")
        made.append(Signer(key, key.read_text(), fingerprint, allowed, principal))
    allowed.write_text("\n".join(lines) + "\n")
    return made


@pytest.fixture(scope="module")
def signer(signers: list[Signer]) -> Signer:
    return signers[0]


def start_signed_purge(stack: Stack, signer: Signer, **env: str) -> str:
    """A live purge whose worker verifies answers against the throwaway allowed signers
    (and has ``env`` besides, e.g. SAFEOPS_FORBID_SELF_APPROVAL)."""
    deployment = stack.api("GET", "/deployments/name/purge-product-media/manual")
    run = stack.api(
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        json={
            "parameters": {"target": TARGET, "dry_run": False},
            "job_variables": {
                "env": {"SAFEOPS_ALLOWED_SIGNERS": str(signer.allowed_signers), **env}
            },
        },
    )
    return str(run["id"])


def approval_request(stack: Stack, run_id: str) -> dict[str, Any]:
    """What the run asked for (its flow-run input ``safeops-approval``)."""
    value = stack.api("GET", f"/flow_runs/{run_id}/input/safeops-approval")
    return dict(json.loads(value) if isinstance(value, str) else value)


def approve_in_the_ui(
    stack: Stack,
    run_id: str,
    signer: Signer,
    request: dict[str, Any],
    *,
    signed_reason: str,
    typed_reason: str,
    shot: str,
) -> dict[str, Any]:
    """Open the paused run in Chromium, read the statement and command the form shows,
    sign with that command (the throwaway key in place of ~/.ssh/id_ed25519, the reason
    in place of the placeholder), paste, fill in and submit. Returns what the form showed."""
    with resume_form(stack, run_id, height=1400) as (page, form):
        form.get_by_text("Signed approval").first.wait_for()
        blocks = [b.strip() for b in form.locator("pre").all_inner_texts()]
        statement = next(b for b in blocks if b.startswith("safeops approval v1"))
        command = next(b for b in blocks if "ssh-keygen -Y sign" in b)

        signing = command.replace(PLACEHOLDER, signed_reason).replace(
            FORM_KEY, shlex.quote(str(signer.key))
        )
        signed = subprocess.run(
            ["sh", "-c", signing], capture_output=True, text=True, timeout=30, check=True
        )
        signature = signed.stdout
        assert signature.startswith("-----BEGIN SSH SIGNATURE-----"), signed.stderr

        def field(label: str) -> Any:
            # The label may carry "(Optional)"; no description starts with a label.
            title = page.get_by_text(re.compile(rf"^\s*{re.escape(label)}\b"))
            return (
                form.locator(".schema-form-property")
                .filter(has=title)
                .locator("textarea, input")
                .first
            )

        shown_signed_at = field("Signed At").input_value()
        field("Reason").fill(typed_reason)
        field("Confirmation").fill(request["expectedConfirmation"])
        field("Signature").fill(signature)
        form.screenshot(path=str(ARTIFACTS / shot))
        form.get_by_role("button", name="Submit").click()
        stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=180)
    return {"statement": statement, "command": command, "signed_at": shown_signed_at}


COUNT = "SELECT count(*) FROM image"


def no_private_key(text: str, signer: Signer) -> None:
    for line in signer.private_text.splitlines():
        if "-----" not in line:
            assert line not in text


def test_a_bad_signature_pasted_in_the_ui_rejects_the_run(stack: Stack, signer: Signer) -> None:
    """A genuine signature by an allowed key, but over another reason than the one typed:
    the statement the worker rebuilds from the form is not what was signed. (Before the
    approved run below: that one empties the target.)"""
    url = stack.targets[TARGET]
    before = table_checksums(url, MEDUSA_TABLES)
    assert scalar(url, COUNT)
    run_id = start_signed_purge(stack, signer)
    stack.wait_state(run_id, {"PAUSED"}, timeout=240)

    approve_in_the_ui(
        stack,
        run_id,
        signer,
        approval_request(stack, run_id),
        signed_reason="OPS-12 what was signed",
        typed_reason="OPS-12 what was typed",
        shot="approval-form-bad-signature.png",
    )
    state = stack.flow_run(run_id)["state"]
    assert state["type"] == "FAILED", state
    assert re.search("signature does not match the statement", state["message"] or ""), state
    assert table_checksums(url, MEDUSA_TABLES) == before
    if scalar(url, "SELECT to_regclass('safeops.safeops_audit')") is not None:
        assert not scalar(
            url, "SELECT count(*) FROM safeops.safeops_audit WHERE flow_run_id = %s", run_id
        )


def test_a_deployment_run_with_self_approval_forbidden_needs_one_more_signer(
    stack: Stack, signers: list[Signer]
) -> None:
    """Nobody knows who pressed *Run* (the open-source server records no user), so with
    SAFEOPS_FORBID_SELF_APPROVAL one approval more is needed: after one valid signed
    approval from `safeops approve` the run pauses again instead of applying; the second
    signer's signed rejection then ends it with nothing changed."""
    url = stack.targets[TARGET]
    before = table_checksums(url, MEDUSA_TABLES)
    first, second = signers
    run_id = start_signed_purge(stack, first, SAFEOPS_FORBID_SELF_APPROVAL="true")
    stack.wait_state(run_id, {"PAUSED"}, timeout=240)
    request = approval_request(stack, run_id)
    assert request["starterUnknown"] is True and request["requiredApprovals"] == 2

    approved = stack.safeops(
        "approve",
        run_id,
        "--confirm",
        request["expectedConfirmation"],
        "--reason",
        "OPS-12 first of two",
        "--key",
        str(first.key),
    )
    assert approved.returncode == 0, approved.stderr
    deadline = time.monotonic() + 120
    votes: dict[str, Any] = {}
    while votes.get("approvedCount") != 1:  # the run records the vote, then pauses again
        assert time.monotonic() < deadline, (votes, stack.flow_run(run_id)["state"])
        time.sleep(0.5)
        with suppress(Exception):
            value = stack.api("GET", f"/flow_runs/{run_id}/input/safeops-approval-votes")
            votes = dict(json.loads(value) if isinstance(value, str) else value)
    assert votes == {
        "approvedBy": [first.principal],
        "approvedCount": 1,
        "requiredApprovals": 2,
    }
    assert stack.wait_state(run_id, {"PAUSED", "COMPLETED", "FAILED"}) == "PAUSED"
    assert table_checksums(url, MEDUSA_TABLES) == before

    rejected = stack.safeops(
        "reject", run_id, "--reason", "OPS-12 not this one", "--key", str(second.key)
    )
    assert rejected.returncode == 0, rejected.stderr
    state = stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"})
    assert state == "FAILED"
    message = stack.flow_run(run_id)["state"]["message"] or ""
    assert f"Rejected by {second.principal}" in message, message
    assert table_checksums(url, MEDUSA_TABLES) == before


def test_signed_approval_pasted_in_the_prefect_ui(stack: Stack, signer: Signer) -> None:
    url = stack.targets[TARGET]
    assert scalar(url, COUNT)
    run_id = start_signed_purge(stack, signer)
    stack.wait_state(run_id, {"PAUSED"}, timeout=240)
    request = approval_request(stack, run_id)
    assert request["signed"] is True

    shown = approve_in_the_ui(
        stack,
        run_id,
        signer,
        request,
        signed_reason="OPS-12 signed in the UI",
        typed_reason="OPS-12 signed in the UI",
        shot="approval-form-signed.png",
    )
    # The form showed this run's exact statement and the one command that signs it.
    assert shown["statement"] + "\n" == request["statementTemplate"]
    assert shown["command"] == request["signingCommand"]
    assert f"flow_run_id: {run_id}" in shown["statement"]
    assert f"plan_hash: {request['planHash']}" in shown["statement"]
    assert f"signed_at: {shown['signed_at']}" in shown["statement"]

    run = stack.flow_run(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert scalar(url, COUNT) == 0
    identity, approver, principal, fingerprint, statement = (
        scalar(url, f"SELECT {column} FROM safeops.safeops_audit WHERE flow_run_id = %s", run_id)
        for column in (
            "identity",
            "approver",
            "signatures->0->>'principal'",
            "signatures->0->>'fingerprint'",
            "signatures->0->>'statement'",
        )
    )
    assert (identity, approver, principal) == ("verified", signer.principal, signer.principal)
    assert fingerprint == signer.fingerprint
    assert statement == request["statementTemplate"].replace(PLACEHOLDER, "OPS-12 signed in the UI")
    # The key stays the approver's: not in the audit row, the run's parameters, or any log.
    everything = " ".join(
        [
            str(scalar(url, "SELECT to_jsonb(a)::text FROM safeops.safeops_audit a")),
            str(run["parameters"]),
            *(log.read_text(errors="replace") for log in stack.logs.glob("*.log")),
        ]
    )
    no_private_key(everything, signer)
