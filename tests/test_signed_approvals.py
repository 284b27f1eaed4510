"""Issue 12: signed approvals, two people when it matters, approvers told.

Real parts only: ed25519 keys made by ssh-keygen in a temporary folder, an OpenSSH
allowed_signers file, real PostgreSQL, Prefect's pause/resume, and a loopback HTTP
receiver behind a CustomWebhookNotificationBlock. Every refusal checks the database
is unchanged and no audit row was written.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flows.media_purge import purge_product_media
from safeops.core.errors import (
    ApprovalDenied,
    ApprovalTimedOut,
    BadSignature,
    SignatureMissing,
    SignerNotAllowed,
    StatementMismatch,
    exit_code_for,
)
from tests.cli import cli
from tests.conftest import MEDUSA_TABLES, answer_approval, free_port
from tests.pg import audit_records, execute, scalar, table_checksums
from tests.signing import Key, keygen, no_key_material, sign_as

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH")


def refused(url: str, answer: Any, kind: type[BaseException], words: str) -> ApprovalDenied:
    """A live purge answered with ``answer``: refused as ``kind``, nothing changed."""
    before = table_checksums(url, MEDUSA_TABLES)
    with answer_approval(answer), pytest.raises(kind, match=words) as caught:
        purge_product_media(dry_run=False)
    assert table_checksums(url, MEDUSA_TABLES) == before
    assert audit_records(url) == []
    assert isinstance(caught.value, ApprovalDenied) and exit_code_for(caught.value) == 4
    assert "\n" not in str(caught.value)
    return caught.value


# --------------------------------------------------------------------- 1. signed approvals


def test_signed_approval_applies_and_the_audit_row_can_be_reverified(
    medusa_url: str, exports: Path, signed: dict[str, Key]
) -> None:
    alice = signed["alice"]
    with answer_approval(sign_as(alice)) as seen:
        result = purge_product_media(dry_run=False)
    request = seen[0]["request"]
    assert request["signed"] and request["targetFingerprint"].endswith(
        "/" + medusa_url.rsplit("/", 1)[1].split("?")[0]
    )
    assert "ssh-keygen -Y sign -n safeops" in request["signingCommand"]
    assert result.applied["images"] > 0 and scalar(medusa_url, "SELECT count(*) FROM image") == 0
    assert result.approval is not None and result.approval.identity == "verified"
    assert result.approval.approver == alice.principal
    [row] = audit_records(medusa_url)
    assert row["identity"] == "verified" and row["approver"] == alice.principal
    [vote] = row["signatures"]
    assert vote["principal"] == alice.principal and vote["fingerprint"] == alice.fingerprint
    assert vote["statement"].startswith("safeops approval v1\n")
    assert f"plan_hash: {row['plan_hash']}" in vote["statement"]
    assert vote["signature"].startswith("-----BEGIN SSH SIGNATURE-----")
    # Anyone can re-verify it later; the private key is nowhere.
    run = cli("audit", "verify", "--target", "medusa")
    assert run.code == 0, run
    assert f": ok {alice.principal} {alice.fingerprint}" in run.stdout
    no_key_material(json.dumps(row, default=str) + result.model_dump_json() + run.stdout, signed)
    # A tampered row (someone rewrote the plan hash) no longer verifies: exit 3.
    execute(medusa_url, "UPDATE safeops.safeops_audit SET plan_hash = %s", "f" * 64)
    run = cli("audit", "verify", "--target", "medusa")
    assert run.code == 3 and "MISMATCH alice@example.com (plan_hash)" in run.stdout, run


def test_audit_verify_checks_the_approver_and_identity_against_the_signatures(
    medusa_url: str, exports: Path, signed: dict[str, Key], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row whose signatures verify but whose approver, identity or set of signatures
    was rewritten (a name changed, the signatures emptied, one of a quorum's two
    dropped) is a MISMATCH: exit 3."""
    monkeypatch.setenv("SAFEOPS_REQUIRED_APPROVALS", "2")
    answers = [sign_as(signed["bob"]), sign_as(signed["carol"])]
    with answer_approval(lambda d: answers[d["round"] - 1](d)):
        purge_product_media(dry_run=False)
    [row] = audit_records(medusa_url)
    assert row["approver"] == "bob@example.com + carol@example.com"
    original = json.dumps(row["signatures"])
    run = cli("audit", "verify", "--target", "medusa")
    assert run.code == 0 and "MISMATCH" not in run.stdout, run
    tampered = [
        ("approver = %s", "mallory@example.com + carol@example.com"),
        ("approver = %s", "bob@example.com"),
        ("signatures = %s::jsonb", "[]"),
        ("signatures = signatures - 1, identity = %s", "verified"),
        ("identity = %s", "unverified"),
    ]
    for change, value in tampered:
        execute(medusa_url, f"UPDATE safeops.safeops_audit SET {change}", value)
        run = cli("audit", "verify", "--target", "medusa")
        assert run.code == 3, (change, value, run)
        [line] = [x for x in run.stdout.splitlines() if x.startswith(f"audit {row['id']} ")]
        assert ": MISMATCH " in line, (change, value, line)
        execute(
            medusa_url,
            "UPDATE safeops.safeops_audit SET approver = %s, signatures = %s::jsonb, "
            "identity = 'verified'",
            row["approver"],
            original,
        )
    assert cli("audit", "verify", "--target", "medusa").code == 0


def test_unsigned_approval_is_refused(
    medusa_url: str, exports: Path, signed: dict[str, Key]
) -> None:
    refused(
        medusa_url,
        lambda d: {
            "reason": "OPS-1",
            "decision": "approve",
            "confirmation": d["expected_confirmation"],
        },
        SignatureMissing,
        "carries no signature",
    )


def test_altered_statement_is_a_bad_signature(
    medusa_url: str, exports: Path, signed: dict[str, Key]
) -> None:
    def altered(data: dict[str, Any]) -> dict[str, Any]:
        answer = sign_as(signed["alice"])(data)
        answer["statement"] = answer["statement"].replace("OPS-12 drop images", "OPS-13 other")
        answer["reason"] = "OPS-13 other"
        return answer

    refused(medusa_url, altered, BadSignature, "does not match the statement")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"plan_hash": "b" * 64}, "plan_hash"),
        ({"flow_run_id": str(uuid.uuid4())}, "flow_run_id"),
        ({"target_fingerprint": "7000000000000000001/medusa"}, "target_fingerprint"),
    ],
)
def test_signature_over_another_run_plan_or_target_is_refused(
    medusa_url: str, exports: Path, signed: dict[str, Key], change: dict[str, Any], field: str
) -> None:
    caught = refused(
        medusa_url, sign_as(signed["alice"], **change), StatementMismatch, f"for {field} "
    )
    assert getattr(caught, "field", None) == field


def test_signer_not_in_allowed_signers_is_refused(
    medusa_url: str, exports: Path, signed: dict[str, Key]
) -> None:
    refused(
        medusa_url,
        sign_as(signed["mallory"]),
        SignerNotAllowed,
        signed["mallory"].fingerprint.replace("+", r"\+"),
    )


def test_statement_older_than_the_pause_is_refused(
    medusa_url: str, exports: Path, signed: dict[str, Key]
) -> None:
    old = datetime.now(UTC) - timedelta(minutes=10)
    refused(
        medusa_url,
        sign_as(signed["alice"], signed_at=old),
        StatementMismatch,
        "before this approval was requested",
    )


def test_well_signed_rejection_stops_the_run(
    medusa_url: str, exports: Path, signed: dict[str, Key]
) -> None:
    refused(
        medusa_url,
        sign_as(signed["bob"], decision="reject", reason="not during the sale"),
        ApprovalDenied,
        "Rejected by bob@example.com .*not during the sale",
    )


def test_unverified_when_no_allowed_signers(
    medusa_url: str, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    monkeypatch.delenv("SAFEOPS_ALLOWED_SIGNERS", raising=False)
    with answer_approval(
        lambda d: {
            "approver": "alice",
            "reason": "OPS-1",
            "decision": "approve",
            "confirmation": d["expected_confirmation"],
        }
    ) as seen:
        result = purge_product_media(dry_run=False)
    assert result.approval is not None and result.approval.identity == "unverified"
    [row] = audit_records(medusa_url)
    assert row["identity"] == "unverified" and row["signatures"] == []
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[seen[0]["flow_run_id"]])
            )
        )
    summary = next(a for a in artifacts if a.key == "media-purge-summary")
    assert "- identity: unverified" in str(summary.data)


def test_signed_saved_plan(
    medusa_url: str, exports: Path, signed: dict[str, Key], tmp_path: Path
) -> None:
    plan = purge_product_media(dry_run=True).plan.plan_hash
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    with pytest.raises(SignatureMissing):
        purge_product_media(dry_run=False, approved_plan_hash=plan, approved_by="alice")
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before

    out = tmp_path / "plan.signed"
    run = cli(
        "sign-plan",
        plan,
        "--flow",
        "purge-product-media",
        "--target",
        "medusa",
        "--reason",
        "OPS-12 reviewed",
        "--key",
        str(signed["bob"].path),
        "--out",
        str(out),
    )
    assert run.code == 0, run
    no_key_material(out.read_text(), signed)
    result = purge_product_media(
        dry_run=False, approved_plan_hash=plan, approved_plan_signature=out.read_text()
    )
    assert result.approval is not None and result.approval.via == "saved-plan"
    assert result.approval.approver == "bob@example.com"
    assert (
        audit_records(medusa_url)[0]["signatures"][0]["statement"].split("\n")[1]
        == "flow_run_id: saved-plan"
    )


# --------------------------------------------------------------------- 2. two people


def test_quorum_of_two_with_self_approval_forbidden(
    medusa_url: str, exports: Path, signed: dict[str, Key], monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice started the run (approved_by): her signature never counts; bob's counts once
    however often he answers; carol's makes two and the run applies."""
    from safeops.cli.approvals import waiting_approvals

    monkeypatch.setenv("SAFEOPS_REQUIRED_APPROVALS", "purge-product-media=2,1")
    monkeypatch.setenv("SAFEOPS_FORBID_SELF_APPROVAL", "true")
    order = [signed["alice"], signed["bob"], signed["bob"], signed["carol"]]
    listed: list[list[dict[str, Any]]] = []

    def next_signer(data: dict[str, Any]) -> dict[str, Any]:
        if data["round"] == 3:
            listed.append(waiting_approvals())
        return sign_as(order[data["round"] - 1])(data)

    with answer_approval(next_signer) as seen:
        result = purge_product_media(dry_run=False, approved_by="alice@example.com")
    assert [d["needed"] for d in seen] == [2, 2, 1, 1]
    assert result.approval is not None
    assert result.approval.approver == "bob@example.com + carol@example.com"
    [row] = audit_records(medusa_url)
    assert [v["principal"] for v in row["signatures"]] == ["bob@example.com", "carol@example.com"]
    [waiting] = [r for r in listed[0] if r["run_id"] == str(seen[0]["flow_run_id"])]
    assert waiting["approvedBy"] == ["bob@example.com"] and waiting["requiredApprovals"] == 2


def test_one_rejection_ends_a_quorum(
    medusa_url: str, exports: Path, signed: dict[str, Key], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEOPS_REQUIRED_APPROVALS", "2")
    answers = [
        sign_as(signed["bob"]),
        sign_as(signed["carol"], decision="reject", reason="wrong shop"),
    ]
    refused(
        medusa_url,
        lambda d: answers[d["round"] - 1](d),
        ApprovalDenied,
        "Rejected by carol@example.com",
    )


def test_cli_live_yes_signs_and_its_own_signature_does_not_count_when_forbidden(
    medusa_url: str, exports: Path, signed: dict[str, Key], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--live --yes` signs with SAFEOPS_SIGNING_KEY (alice): she started the run, so with
    self-approval forbidden her answer does not count and the CLI prints the command
    for someone else; bob answers the second pause and the purge applies."""
    monkeypatch.setenv("SAFEOPS_SIGNING_KEY", str(signed["alice"].path))
    monkeypatch.setenv("SAFEOPS_FORBID_SELF_APPROVAL", "true")
    with _only_rounds({2}, sign_as(signed["bob"])):
        run = cli("media", "purge", "--live", "--yes", "--reason", "OPS-12")
    assert run.code == 0, run
    assert "waiting: 1 more approval(s) of 1" in run.stdout and "safeops approve " in run.stdout
    [row] = audit_records(medusa_url)
    assert [v["principal"] for v in row["signatures"]] == ["bob@example.com"]
    no_key_material(run.stdout + run.stderr + json.dumps(row, default=str), signed)


def test_a_second_key_of_the_starter_does_not_count_when_forbidden(
    medusa_url: str,
    exports: Path,
    signed: dict[str, Key],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """alice has two keys under alice@example.com: the CLI starts the run with the first
    (`--live --yes --key`), her answer with the second does not count either; bob and
    carol make the quorum of two."""
    alice2 = keygen(tmp_path, "alice2")
    lines = []
    for key, principal in (
        (signed["alice"], "alice@example.com"),
        (alice2, "alice@example.com"),
        (signed["bob"], "bob@example.com"),
        (signed["carol"], "carol@example.com"),
    ):
        key_type, key_b64 = Path(f"{key.path}.pub").read_text().split()[:2]
        lines.append(f"{principal} {key_type} {key_b64}")
    (tmp_path / "allowed_signers").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SAFEOPS_ALLOWED_SIGNERS", str(tmp_path / "allowed_signers"))
    monkeypatch.setenv("SAFEOPS_REQUIRED_APPROVALS", "2")
    monkeypatch.setenv("SAFEOPS_FORBID_SELF_APPROVAL", "true")
    later = {2: alice2, 3: signed["bob"], 4: signed["carol"]}
    with _only_rounds(set(later), lambda d: sign_as(later[d["round"]])(d)):
        run = cli(
            "media",
            "purge",
            "--live",
            "--yes",
            "--key",
            str(signed["alice"].path),
            "--reason",
            "OPS-12",
        )
    assert run.code == 0, run
    [row] = audit_records(medusa_url)
    assert row["approver"] == "bob@example.com + carol@example.com"
    assert [v["principal"] for v in row["signatures"]] == ["bob@example.com", "carol@example.com"]
    assert alice2.fingerprint not in json.dumps(row["signatures"])


@pytest.mark.parametrize("key", [None, "not-a-key"])
def test_cli_live_yes_that_cannot_sign_ends_the_run_rejected(
    medusa_url: str, exports: Path, signed: dict[str, Key], tmp_path: Path, key: str | None
) -> None:
    """No key, no agent (or --key naming something that is not a key): the CLI's answer
    is an unsigned rejection the signed form accepts, so the run ends (exit 4) rather
    than staying paused, and the one line says why."""
    extra: list[str] = []
    if key is not None:
        (tmp_path / key).write_text("this is not an ssh key\n")
        extra = ["--key", str(tmp_path / key)]
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    run = cli("media", "purge", "--live", "--yes", *extra)
    assert run.code == 4, run
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_records(medusa_url) == []
    output = run.stdout + run.stderr
    assert "approver" not in output and "Cannot resume" not in output
    [line] = [x for x in output.splitlines() if "could not sign the approval" in x]
    assert "sign" in line.split("could not sign the approval: ", 1)[1].lower(), line


def test_a_saved_plan_the_starter_signed_does_not_count_toward_her_run(
    medusa_url: str,
    exports: Path,
    signed: dict[str, Key],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """alice signs the saved plan and starts the run with the same key: with self-approval
    forbidden neither her saved plan nor her answer counts; bob and carol make two."""
    monkeypatch.setenv("SAFEOPS_REQUIRED_APPROVALS", "2")
    monkeypatch.setenv("SAFEOPS_FORBID_SELF_APPROVAL", "true")
    alice = str(signed["alice"].path)
    plan = purge_product_media(dry_run=True).plan.plan_hash
    sig = tmp_path / "a.sig"
    run = cli(
        "sign-plan", plan, "--flow", "purge-product-media", "--target", "medusa",
        "--reason", "OPS-12 reviewed", "--key", alice, "--out", str(sig),
    )  # fmt: skip
    assert run.code == 0, run
    later = {2: signed["bob"], 3: signed["carol"]}
    with _only_rounds(set(later), lambda d: sign_as(later[d["round"]])(d)):
        run = cli(
            "media", "purge", "--live", "--yes", "--plan", plan, "--plan-signature", str(sig),
            "--key", alice, "--reason", "OPS-12",
        )  # fmt: skip
    assert run.code == 0, run
    [row] = audit_records(medusa_url)
    assert row["approver"] == "bob@example.com + carol@example.com"
    assert [v["principal"] for v in row["signatures"]] == ["bob@example.com", "carol@example.com"]


@pytest.mark.parametrize("live", [[], ["--live", "--yes"]])
def test_plan_signature_without_plan_is_bad_input(
    medusa_url: str, exports: Path, signed: dict[str, Key], tmp_path: Path, live: list[str]
) -> None:
    sig = tmp_path / "a.sig"
    sig.write_text("not used\n")
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    run = cli("media", "purge", *live, "--plan-signature", str(sig))
    assert run.code == 2 and "--plan HASH" in run.stdout + run.stderr, run
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before


def _only_rounds(rounds: set[int], answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    import time
    from contextlib import contextmanager

    from safeops.core import events

    @contextmanager
    def ctx() -> Iterator[None]:
        from prefect import get_client
        from prefect.flow_runs import resume_flow_run

        def resume(data: dict[str, Any]) -> None:
            with get_client(sync_client=True) as client:
                for _ in range(600):
                    state = client.read_flow_run(data["flow_run_id"]).state
                    if (
                        state is not None
                        and state.is_paused()
                        and state.state_details.pause_key == f"approval-{data['round']}"
                    ):
                        break
                    time.sleep(0.1)
            resume_flow_run(data["flow_run_id"], run_input=answer(data))

        def listener(kind: str, data: dict[str, Any]) -> None:
            if kind == "approval" and data["round"] in rounds:
                threading.Thread(target=resume, args=(data,), daemon=True).start()

        with events.listening(listener):
            yield

    return ctx()


# --------------------------------------------------------------------- 3. approvers told


class Receiver:
    """A loopback HTTP server that keeps every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [str(b.get("text", "")) for b in self.bodies]


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()


def webhook_block(url: str) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = f"approvers-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name=name, url=url, timeout=5, json_data={"text": "{{body}}", "title": "{{subject}}"}
    ).save(name, overwrite=True)
    return f"custom-webhook/{name}"


def test_approvers_are_told_of_the_pause_and_the_approval(
    medusa_url: str,
    exports: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    signed: dict[str, Key],
) -> None:
    monkeypatch.setenv("SAFEOPS_NOTIFY_BLOCK", webhook_block(receiver.url))
    monkeypatch.setenv("PREFECT_UI_URL", "http://prefect.example:4200")
    with answer_approval(sign_as(signed["alice"])) as seen:
        result = purge_product_media(dry_run=False)
    run_id = str(seen[0]["flow_run_id"])
    paused, approved = receiver.texts()
    images = result.plan.counts["images"]
    for text in (paused, approved):
        assert f"images={images}" in text and result.plan.plan_hash in text
        assert f"http://prefect.example:4200/runs/flow-run/{run_id}" in text
        assert str(result.snapshot_uri) in text and "target: medusa (" in text
    assert f"safeops approve {run_id} --confirm 'PURGE {images} IMAGES'" in paused
    assert "deadline: 20" in paused and "waiting for approval" in receiver.bodies[0]["title"]
    assert "approved by alice@example.com (identity: verified)" in approved


def test_approvers_are_told_of_a_timeout(
    medusa_url: str, exports: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFEOPS_ALLOWED_SIGNERS", raising=False)
    monkeypatch.setenv("SAFEOPS_NOTIFY_BLOCK", webhook_block(receiver.url))
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    with pytest.raises(ApprovalTimedOut):
        purge_product_media(dry_run=False, approval_timeout_s=2)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    paused, timed_out = receiver.texts()
    assert "safeops approve " in paused
    assert "approval timed out" in receiver.bodies[1]["title"]
    assert "Approval timed out after 2 s" in timed_out and "plan hash: " in timed_out


def test_a_dead_receiver_changes_nothing_about_the_outcome(
    medusa_url: str,
    exports: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("SAFEOPS_ALLOWED_SIGNERS", raising=False)
    monkeypatch.setenv("SAFEOPS_NOTIFY_BLOCK", webhook_block(f"http://127.0.0.1:{free_port()}/x"))
    with answer_approval(
        lambda d: {
            "approver": "alice",
            "reason": "OPS-1",
            "decision": "approve",
            "confirmation": d["expected_confirmation"],
        }
    ):
        result = purge_product_media(dry_run=False)
    assert result.applied["images"] > 0 and scalar(medusa_url, "SELECT count(*) FROM image") == 0
