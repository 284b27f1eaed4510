"""Throwaway SSH keys and signed answers for the signed-approval tests: real
``ssh-keygen`` keys in a temporary folder and an OpenSSH ``allowed_signers`` file."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safeops.core import signing
from tasks.common.approval import signed_answer


@dataclass(frozen=True)
class Key:
    name: str
    path: Path
    private_text: str
    fingerprint: str

    @property
    def principal(self) -> str:
        return f"{self.name}@example.com"


def keygen(folder: Path, name: str) -> Key:
    path = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    fp = subprocess.run(
        ["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    return Key(name, path, path.read_text(), fp)


def make_keys(folder: Path) -> dict[str, Key]:
    """alice, bob and carol in ``folder/allowed_signers``; mallory made but not allowed."""
    made = {n: keygen(folder, n) for n in ("alice", "bob", "carol", "mallory")}
    lines = ["# approvers of safeops"]
    for name in ("alice", "bob", "carol"):  # mallory is not allowed
        key_type, key_b64 = Path(f"{made[name].path}.pub").read_text().split()[:2]
        lines.append(f"{made[name].principal} {key_type} {key_b64}")
    (folder / "allowed_signers").write_text("\n".join(lines) + "\n")
    return made


def sign_as(
    key: Key,
    decision: str = "approve",
    reason: str = "OPS-12 drop images",
    confirmation: str | None = None,
    **statement_changes: Any,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An approver who signs this run's statement (optionally altered) with ``key``."""

    def answer(data: dict[str, Any]) -> dict[str, Any]:
        request = data["request"]
        confirm = data["expected_confirmation"] if confirmation is None else confirmation
        if not statement_changes:
            return signed_answer(
                request, decision=decision, reason=reason, confirmation=confirm, key=str(key.path)
            )
        values: dict[str, Any] = dict(
            flow_run_id=request["flowRunId"],
            flow=request["flow"],
            target_fingerprint=request["targetFingerprint"],
            plan_hash=request["planHash"],
            decision=decision,
            reason=reason,
            signed_at=datetime.now(UTC),
        )
        values.update(statement_changes)
        text = signing.Statement(**values).text()
        return {
            "reason": reason,
            "confirmation": confirm,
            "decision": decision,
            "signed_at": signing.format_time(values["signed_at"]),
            "statement": text,
            "signature": signing.sign(text, str(key.path)),
        }

    return answer


def no_key_material(text: str, keys: dict[str, Key]) -> None:
    for key in keys.values():
        for line in key.private_text.splitlines():
            if "-----" not in line:
                assert line not in text and line[:24] not in text
