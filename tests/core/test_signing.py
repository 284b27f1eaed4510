"""Signed approvals against the real ssh-keygen and ssh-agent (no mocks of OpenSSH)."""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from safeops.core import signing
from safeops.core.errors import ApprovalDenied, BadInput
from safeops.core.signing import (
    SAVED_PLAN_RUN_ID,
    AllowedSigners,
    AllowedSignersInvalid,
    BadSignature,
    SignatureMalformed,
    SignatureMissing,
    SignerNotAllowed,
    SigningUnavailable,
    Statement,
    StatementInvalid,
    StatementMalformed,
    StatementMismatch,
    WrongNamespace,
    check_statement,
    load_allowed_signers,
    sign,
    signing_command,
    verify,
    verify_approval,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH")

RUN_ID = "0b7c5a52-3f4e-4c1a-9d2e-5f6a7b8c9d0e"
FLOW = "purge-product-media"
TARGET = "7312345678901234567/shop"
PLAN = "a" * 64
PAUSED_AT = datetime(2025, 3, 1, 12, 0, 0, 400_000, tzinfo=UTC)
SIGNED_AT = datetime(2025, 3, 1, 12, 3, 7, tzinfo=UTC)
EXPECTED: dict[str, Any] = dict(
    flow_run_id=RUN_ID,
    flow=FLOW,
    target_fingerprint=TARGET,
    plan_hash=PLAN,
    not_before=PAUSED_AT,
    now=SIGNED_AT + timedelta(seconds=30),
)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Overrides tests/conftest.py's server: nothing here talks to Prefect."""
    yield


@dataclass(frozen=True)
class Key:
    path: Path
    pub: Path
    private_text: str
    fingerprint: str


@dataclass(frozen=True)
class Keys:
    alice: Key
    mallory: Key
    allowed: str


def _keygen(path: Path, comment: str, passphrase: str = "") -> Key:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f", str(path)],
        check=True,
    )
    listed = subprocess.run(
        ["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()
    return Key(path, Path(f"{path}.pub"), path.read_text(), listed[1])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    tmp = tmp_path_factory.mktemp("keys")
    alice, mallory = _keygen(tmp / "alice", "alice"), _keygen(tmp / "mallory", "mallory")
    key_type, key_b64 = alice.pub.read_text().split()[:2]
    allowed = f"# approvers\nalice@example.com {key_type} {key_b64}\n"
    return Keys(alice, mallory, allowed)


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own agent or key must not decide these tests."""
    for name in ("SSH_AUTH_SOCK", "SAFEOPS_SIGNING_KEY", "SAFEOPS_ALLOWED_SIGNERS"):
        monkeypatch.delenv(name, raising=False)


def _statement(**changes: Any) -> Statement:
    values: dict[str, Any] = dict(
        flow_run_id=RUN_ID,
        flow=FLOW,
        target_fingerprint=TARGET,
        plan_hash=PLAN,
        decision="approve",
        reason="OPS-12: drop orphaned images",
        signed_at=SIGNED_AT,
    )
    return Statement(**{**values, **changes})


def _private_body(key: Key) -> list[str]:
    return [line for line in key.private_text.splitlines() if "-----" not in line]


def _assert_no_key_material(message: str, key: Key) -> None:
    for line in _private_body(key):
        assert line not in message
        assert line[:20] not in message


# --- the statement ------------------------------------------------------------


def test_statement_text_is_canonical_and_round_trips() -> None:
    statement = _statement()
    assert statement.text() == (
        "safeops approval v1\n"
        f"flow_run_id: {RUN_ID}\n"
        "flow: purge-product-media\n"
        "target_fingerprint: 7312345678901234567/shop\n"
        f"plan_hash: {PLAN}\n"
        "decision: approve\n"
        "reason: OPS-12: drop orphaned images\n"
        "signed_at: 2025-03-01T12:03:07Z\n"
    )
    assert Statement.parse(statement.text()) == statement


def test_statement_normalises_what_has_one_meaning() -> None:
    local = datetime(2025, 3, 1, 13, 3, 7, 999_999, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=1))
    )
    statement = _statement(flow_run_id=RUN_ID.upper(), signed_at=local)
    assert statement.flow_run_id == RUN_ID
    assert statement.signed_at == datetime(2025, 3, 1, 13, 3, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.rstrip("\n"),
        lambda t: t.replace("\n", "\r\n"),
        lambda t: t.replace("flow: ", "flow:  "),
        lambda t: t.replace("decision: approve", "decision: Approve"),
        lambda t: t.replace("safeops approval v1", "safeops approval v2"),
        lambda t: t.replace(RUN_ID, RUN_ID.upper()),
        lambda t: t.replace("12:03:07Z", "12:03:07.5Z"),
        lambda t: t.replace("12:03:07Z", "12:03:07+00:00"),
        lambda t: t + "extra: line\n",
        lambda t: "\n".join(
            t.split("\n")[:2] + t.split("\n")[3:4] + t.split("\n")[2:3] + t.split("\n")[4:]
        ),
        lambda t: t.replace("reason: OPS-12", "reason:  OPS-12"),
        lambda t: t.replace("drop orphaned images", "drop orphaned images "),
        lambda t: t.replace("orphaned", "orphane\u0301d"),
        lambda t: t.replace("orphaned", "orph\u202eaned"),
        lambda t: t.replace(PLAN, PLAN[:-1]),
        lambda t: t.replace(TARGET, "shop"),
        lambda t: "",
    ],
)
def test_parse_refuses_anything_not_canonical(mutate: Any) -> None:
    with pytest.raises(StatementMalformed, match=r"^Refused: ") as caught:
        Statement.parse(mutate(_statement().text()))
    assert isinstance(caught.value, ApprovalDenied) and caught.value.exit_code == 4
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"reason": "line one\nline two"}, "one line"),
        ({"reason": "sneaky \u202e reversed"}, r"U\+202E"),
        ({"reason": " padded"}, "whitespace"),
        ({"reason": "x" * 2001}, "at most 2000"),
        ({"signed_at": datetime(2025, 3, 1, 12, 0)}, "timezone-aware"),
        ({"plan_hash": "A" * 64}, "64 lowercase hex"),
        ({"flow_run_id": "run-7"}, "neither a flow run UUID"),
        ({"decision": "maybe"}, "neither 'approve'"),
        ({"target_fingerprint": "7312/shop\nx"}, "system identifier"),
    ],
)
def test_statement_refuses_values_that_cannot_be_rendered_unambiguously(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(StatementInvalid, match=words) as caught:
        _statement(**changes)
    assert caught.value.exit_code == 2


# --- signing and verifying ----------------------------------------------------


def test_good_signature_names_the_allowed_signer_and_its_fingerprint(keys: Keys) -> None:
    text = _statement().text()
    armored = sign(text, str(keys.alice.path))
    assert armored.startswith("-----BEGIN SSH SIGNATURE-----\n")
    signer = verify(text, armored, keys.allowed)
    assert signer.principal == "alice@example.com"
    assert signer.fingerprint == keys.alice.fingerprint and signer.fingerprint.startswith("SHA256:")


def test_signature_survives_pasting_with_other_line_endings(keys: Keys) -> None:
    text = _statement().text()
    pasted = "  " + sign(text, str(keys.alice.path)).replace("\n", "\r\n") + "\n\n"
    assert verify(text, pasted, keys.allowed).principal == "alice@example.com"


@pytest.mark.parametrize("signature", [None, "", "  \n"])
def test_no_signature_is_refused(keys: Keys, signature: str | None) -> None:
    with pytest.raises(SignatureMissing, match="carries no signature"):
        verify(_statement().text(), signature, keys.allowed)


def test_malformed_signatures_are_refused(keys: Keys) -> None:
    text = _statement().text()
    good = sign(text, str(keys.alice.path)).splitlines()
    not_sshsig = base64.b64encode(b"NOTSIG" + bytes(40)).decode()
    for bad in [
        "approved!",
        "\n".join(good[:-1]),
        "\n".join([good[0], "@@@not base64@@@", good[-1]]),
        "\n".join([good[0], good[1][:-8], good[-1]]),
        "\n".join([good[0], not_sshsig, good[-1]]),
    ]:
        with pytest.raises(SignatureMalformed, match=r"^Refused: the signature is malformed"):
            verify(text, bad, keys.allowed)


def test_altered_statement_is_a_bad_signature(keys: Keys) -> None:
    text = _statement().text()
    armored = sign(text, str(keys.alice.path))
    altered = _statement(plan_hash="b" * 64).text()
    with pytest.raises(BadSignature, match="does not match the statement"):
        verify(altered, armored, keys.allowed)


def test_signer_not_in_allowed_signers_is_refused(keys: Keys) -> None:
    text = _statement().text()
    armored = sign(text, str(keys.mallory.path))
    with pytest.raises(SignerNotAllowed, match=keys.mallory.fingerprint.replace("+", r"\+")):
        verify(text, armored, keys.allowed)


def test_signature_for_another_namespace_is_refused(keys: Keys) -> None:
    text = _statement().text()
    git_signature = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(keys.alice.path)],
        input=text.encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    with pytest.raises(WrongNamespace, match="namespace 'git', not 'safeops'"):
        verify(text, git_signature, keys.allowed)


def test_allowed_signers_line_restricted_to_git_refuses_safeops(keys: Keys) -> None:
    text = _statement().text()
    armored = sign(text, str(keys.alice.path))
    restricted = keys.allowed.replace("alice@example.com ", 'alice@example.com namespaces="git" ')
    with pytest.raises(SignerNotAllowed, match="may not sign safeops"):
        verify(text, armored, restricted)


def test_several_principals_on_one_line_give_the_first(keys: Keys) -> None:
    text = _statement().text()
    armored = sign(text, str(keys.alice.path))
    both = keys.allowed.replace("alice@example.com ", "alice@example.com,a.smith@example.com ")
    assert verify(text, armored, both).principal == "alice@example.com"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "lists no signer"),
        ("# only a comment\n\n", "lists no signer"),
        ("alice@example.com\n", "expected"),
        ("alice@example.com ssh-ed25519 ###\n", "not valid base64"),
        ("*@example.com ssh-ed25519 KEY\n", "exact name"),
        ("alice@example.com nonsense=1 ssh-ed25519 KEY\n", "unsupported option"),
        ("alice@example.com ssh-rsa KEY\n", "not a ssh-rsa key"),
    ],
)
def test_allowed_signers_text_is_checked_line_by_line(keys: Keys, content: str, words: str) -> None:
    key_b64 = keys.alice.pub.read_text().split()[1]
    with pytest.raises(AllowedSignersInvalid, match=words) as caught:
        AllowedSigners.parse(content.replace("KEY", key_b64))
    assert caught.value.exit_code == 2


# --- binding to the run -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"flow_run_id": "11111111-2222-3333-4444-555555555555"}, "flow_run_id"),
        ({"flow_run_id": SAVED_PLAN_RUN_ID}, "flow_run_id"),
        ({"flow": "reset-site-structure"}, "flow"),
        ({"target_fingerprint": "7312345678901234567/shop_copy"}, "target_fingerprint"),
        ({"plan_hash": "b" * 64}, "plan_hash"),
    ],
)
def test_statement_for_another_run_flow_target_or_plan_is_refused(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(StatementMismatch, match=f"for {field} ") as caught:
        check_statement(_statement(**changes), **EXPECTED)
    assert caught.value.field == field
    assert pickle.loads(pickle.dumps(caught.value)).field == field


def test_statement_signed_before_the_pause_is_refused() -> None:
    with pytest.raises(StatementMismatch, match="before this approval was requested") as caught:
        check_statement(_statement(signed_at=PAUSED_AT - timedelta(seconds=1)), **EXPECTED)
    assert caught.value.field == "signed_at"
    # Signed in the pause's own second: the text has seconds only, so it counts.
    check_statement(_statement(signed_at=PAUSED_AT.replace(microsecond=0)), **EXPECTED)


def test_statement_from_a_clock_far_ahead_is_refused() -> None:
    now = SIGNED_AT
    check_statement(_statement(signed_at=now + timedelta(minutes=5)), **{**EXPECTED, "now": now})
    with pytest.raises(StatementMismatch, match="more than 5 min after now"):
        check_statement(
            _statement(signed_at=now + timedelta(minutes=5, seconds=1)), **{**EXPECTED, "now": now}
        )


def test_saved_plan_statement_binds_flow_target_and_plan_only(keys: Keys) -> None:
    saved = _statement(flow_run_id=SAVED_PLAN_RUN_ID, reason="saved plan for OPS-12")
    armored = sign(saved.text(), str(keys.alice.path))
    result = verify_approval(
        saved.text(),
        armored,
        keys.allowed,
        **{
            **EXPECTED,
            "flow_run_id": SAVED_PLAN_RUN_ID,
            "not_before": SIGNED_AT - timedelta(days=1),
        },
    )
    assert result.statement == saved and result.signer.principal == "alice@example.com"


def test_verify_approval_returns_signer_and_statement_including_a_rejection(keys: Keys) -> None:
    rejection = _statement(decision="reject", reason="wrong shop")
    armored = sign(rejection.text(), str(keys.alice.path))
    signer, statement = verify_approval(rejection.text(), armored, keys.allowed, **EXPECTED)
    assert statement.decision == "reject"
    assert signer.fingerprint == keys.alice.fingerprint
    with pytest.raises(StatementMismatch, match="plan_hash"):
        verify_approval(
            rejection.text(), armored, keys.allowed, **{**EXPECTED, "plan_hash": "c" * 64}
        )
    with pytest.raises(SignatureMissing):
        verify_approval("not even a statement", None, keys.allowed, **EXPECTED)


# --- allowed signers from the environment -------------------------------------


def test_allowed_signers_unset_means_unverified() -> None:
    assert load_allowed_signers() is None


def test_allowed_signers_from_a_file(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "allowed_signers"
    path.write_text(keys.allowed)
    monkeypatch.setenv("SAFEOPS_ALLOWED_SIGNERS", str(path))
    loaded = load_allowed_signers()
    assert loaded is not None and loaded.signers[0].principals == ("alice@example.com",)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "set but empty"),
        ("{tmp}/missing", "does not exist"),
        ("{tmp}/empty", "lists no signer"),
        ("{tmp}", "cannot be read"),
        ("{tmp}/garbage", "expected"),
    ],
)
def test_allowed_signers_set_but_unusable_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "garbage").write_text("this is not an allowed signers file\n")
    monkeypatch.setenv("SAFEOPS_ALLOWED_SIGNERS", value.format(tmp=tmp_path))
    with pytest.raises(AllowedSignersInvalid, match=words):
        load_allowed_signers()


def test_allowed_signers_from_a_prefect_secret_block(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect itself is stood in for: importing it costs more than this whole module."""
    loaded_names: list[str] = []

    class FakeSecret:
        def __init__(self, value: object) -> None:
            self.value = value

        def get(self) -> object:
            return self.value

        @classmethod
        def load(cls, name: str, **_: Any) -> FakeSecret:
            loaded_names.append(name)
            if name == "safeops-allowed-signers":
                return cls(keys.allowed)
            if name == "safeops-json-secret":
                return cls({"not": "text"})
            raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setitem(
        sys.modules, "prefect.blocks.system", types.SimpleNamespace(Secret=FakeSecret)
    )
    monkeypatch.setenv("SAFEOPS_ALLOWED_SIGNERS", "safeops-allowed-signers")
    loaded = load_allowed_signers()
    assert loaded is not None and loaded.text == keys.allowed
    monkeypatch.setenv("SAFEOPS_ALLOWED_SIGNERS", "safeops-allowed-signers-staging")
    with pytest.raises(AllowedSignersInvalid, match="could not be loaded"):
        load_allowed_signers()
    monkeypatch.setenv("SAFEOPS_ALLOWED_SIGNERS", "safeops-json-secret")
    with pytest.raises(AllowedSignersInvalid, match="does not hold allowed_signers text"):
        load_allowed_signers()
    assert loaded_names == [
        "safeops-allowed-signers",
        "safeops-allowed-signers-staging",
        "safeops-json-secret",
    ]


# --- where the key comes from -------------------------------------------------


def test_signing_key_from_the_environment(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEOPS_SIGNING_KEY", str(keys.alice.path))
    text = _statement().text()
    assert verify(text, sign(text, None), keys.allowed).principal == "alice@example.com"


def test_no_key_and_no_agent_is_bad_input() -> None:
    with pytest.raises(SigningUnavailable, match="No signing key") as caught:
        sign(_statement().text(), None)
    assert isinstance(caught.value, BadInput) and caught.value.exit_code == 2


@pytest.fixture()
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private ssh-agent in the foreground (-D), so it is ended by its own pid."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "ssh-agent did not start"
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(sock))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_signing_through_the_agent(
    keys: Keys, agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _statement().text()
    with pytest.raises(SigningUnavailable, match="holds no keys"):
        sign(text, None)
    subprocess.run(
        ["ssh-add", "-q", str(keys.alice.path)],
        check=True,
        env={**os.environ, "SSH_AUTH_SOCK": str(agent)},
        capture_output=True,
    )
    # key=None, nothing configured: the agent's first key signs.
    assert verify(text, sign(text, None), keys.allowed).fingerprint == keys.alice.fingerprint
    # SAFEOPS_SIGNING_KEY naming only the public half: the agent holds the private one.
    public_only = tmp_path / "alice.pub"
    shutil.copy(keys.alice.pub, public_only)
    monkeypatch.setenv("SAFEOPS_SIGNING_KEY", str(public_only))
    assert verify(text, sign(text, None), keys.allowed).principal == "alice@example.com"


def test_passphrase_protected_key_fails_cleanly_without_prompting(tmp_path: Path) -> None:
    locked = _keygen(tmp_path / "locked", "locked", passphrase="correct horse")
    started = time.monotonic()
    with pytest.raises(SigningUnavailable, match="passphrase-protected; load it with ssh-add") as e:
        sign(_statement().text(), str(locked.path))
    assert time.monotonic() - started < 10
    _assert_no_key_material(str(e.value), locked)


def test_private_key_material_never_appears_in_messages(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _statement().text()
    broken = tmp_path / "broken"
    body = keys.alice.private_text.splitlines()
    broken.write_text("\n".join(body[:3]) + "\n")  # truncated: real material, unusable
    messages: list[str] = []
    attempts: list[Any] = [
        lambda: sign(text, keys.alice.private_text),
        lambda: sign(text, str(broken)),
        lambda: verify(text, keys.alice.private_text, keys.allowed),
        lambda: verify(text, sign(text, str(keys.mallory.path)), keys.allowed),
        lambda: AllowedSigners.parse(keys.alice.private_text),
    ]
    monkeypatch.setenv("SAFEOPS_SIGNING_KEY", keys.alice.private_text)
    attempts.append(lambda: sign(text, None))
    for attempt in attempts:
        with pytest.raises((BadInput, ApprovalDenied)) as caught:
            attempt()
        messages.append(str(caught.value))
    for message in messages:
        _assert_no_key_material(message, keys.alice)
        _assert_no_key_material(message, keys.mallory)
    assert "not key material" in messages[0] and "not key material" in messages[-1]


# --- the approver's command ---------------------------------------------------


def test_signing_command_is_one_line_and_signs_exactly_the_statement(keys: Keys) -> None:
    statement = _statement(reason='it\'s $HOME `date` \\n 100% "quoted"')
    command = signing_command(statement.text(), key_path=str(keys.alice.path))
    assert "\n" not in command and command.endswith(
        f"| ssh-keygen -Y sign -n safeops -f {keys.alice.path}"
    )
    armored = subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    assert verify(statement.text(), armored, keys.allowed).principal == "alice@example.com"


def test_signing_command_defaults_to_the_usual_key_and_refuses_non_statements() -> None:
    command = signing_command(_statement().text())
    assert command.startswith("printf '%s\\n' 'safeops approval v1' ")
    assert command.endswith("-f ~/.ssh/id_ed25519")
    with pytest.raises(StatementMalformed):
        signing_command("approve everything\n")


def test_refusals_are_one_line_with_the_cli_exit_codes(keys: Keys) -> None:
    text = _statement().text()
    armored = sign(text, str(keys.mallory.path))
    with pytest.raises(SignerNotAllowed) as caught:
        verify(text, armored, keys.allowed)
    assert caught.value.exit_code == 4 and "\n" not in str(caught.value)
    assert signing.NAMESPACE == "safeops"
