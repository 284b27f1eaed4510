"""SSHSIG signatures through the system's ssh-keygen: sign, verify, the approver's command.

All cryptography is done by ``ssh-keygen`` (OpenSSH >= 8.9); see the package
docstring for how key material is kept out of messages. Somewhat over the usual
~300 lines because every way ssh-keygen can fail (no key, locked key, agent,
namespace, unknown signer, altered text) is mapped here to one named refusal,
next to the call that meets it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from safeops.core.errors import (
    BadSignature,
    SignatureMalformed,
    SignatureMissing,
    SignerNotAllowed,
    SigningUnavailable,
    WrongNamespace,
)
from safeops.core.signing.allowed_signers import AllowedSigners, read_string
from safeops.core.signing.statement import (
    NAMESPACE,
    SIGNING_KEY_ENV,
    Statement,
    check_statement,
    clip,
)

_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_TIMEOUT_S = 30


def _run(
    tool: str, args: list[str], *, stdin: bytes = b"", env_extra: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run an OpenSSH tool detached from any terminal.

    Without a terminal ssh-keygen would read a key passphrase from stdin, which
    carries the message; forcing a failing askpass makes a locked key fail
    cleanly instead. A new session also keeps it off the caller's tty.
    """
    exe = shutil.which(tool)
    if exe is None:
        raise SigningUnavailable(f"{tool} (OpenSSH >= 8.9) is not installed or not on PATH.")
    env = {
        **os.environ,
        "LC_ALL": "C",
        "SSH_ASKPASS": shutil.which("false") or "/bin/false",
        "SSH_ASKPASS_REQUIRE": "force",
        **(env_extra or {}),
    }
    try:
        return subprocess.run(
            [exe, *args],
            input=stdin,
            capture_output=True,
            env=env,
            start_new_session=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SigningUnavailable(f"{tool} did not finish within {_TIMEOUT_S} s.") from None


def _diagnostic(result: subprocess.CompletedProcess[bytes], hide: str = "") -> str:
    """ssh-keygen's first meaningful stderr line, for one-line messages.

    ``hide`` (a temporary path) is shortened to its file name: the reader needs
    "allowed_signers:3", not where a deleted temporary file lived.
    """
    for line in result.stderr.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if hide:
            line = line.replace(hide, Path(hide).name)
        if line and not line.startswith(("Signing data on standard input", "No principal matched")):
            return clip(line, 200)
    return f"exit status {result.returncode}"


@dataclass(frozen=True)
class _Signature:
    armored: str
    public_key: bytes
    namespace: bytes

    @property
    def fingerprint(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.public_key).digest()).decode()
        return "SHA256:" + digest.rstrip("=")


def _parse_signature(signature: str) -> _Signature:
    """Check the SSHSIG envelope ourselves so each failure gets its own message.

    The armor is re-rendered from the decoded bytes, so what ssh-keygen verifies
    is exactly what was checked here (pasting may have changed line endings).
    """
    lines = [line.strip() for line in signature.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        raise SignatureMalformed(
            f"Refused: the signature is malformed: paste the whole block from {_BEGIN} to {_END}."
        )
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
        if blob[:6] != b"SSHSIG":
            raise ValueError("no SSHSIG magic")
        if int.from_bytes(blob[6:10], "big") != 1:
            raise ValueError("unsupported SSHSIG version")
        public_key, pos = read_string(blob, 10)
        namespace, pos = read_string(blob, pos)
        _reserved, pos = read_string(blob, pos)
        hash_algorithm, pos = read_string(blob, pos)
        raw_signature, pos = read_string(blob, pos)
        if pos != len(blob) or not public_key or not raw_signature:
            raise ValueError("unexpected length")
        if hash_algorithm not in (b"sha256", b"sha512"):
            raise ValueError("unsupported hash algorithm")
    except (binascii.Error, ValueError) as exc:
        raise SignatureMalformed(
            f"Refused: the signature is malformed ({exc}); paste the whole block that "
            "ssh-keygen -Y sign printed."
        ) from None
    body = "\n".join(textwrap.wrap(base64.b64encode(blob).decode(), 70))
    return _Signature(f"{_BEGIN}\n{body}\n{_END}\n", public_key, namespace)


def _key_path(key: str, origin: str) -> str:
    """Validate a key *path* without ever echoing something that may be key material."""
    if "PRIVATE KEY" in key or "\n" in key or len(key) > 4096:
        raise SigningUnavailable(f"{origin} must be the path of a key file, not key material.")
    path = Path(key).expanduser()
    if not path.is_file():
        raise SigningUnavailable(f"{origin} names {clip(key, 200)!r}, which is not a file.")
    return str(path)


def _agent_public_key(workdir: str) -> str:
    """The agent's first key (git's default for SSH signing), written as a .pub file."""
    listed = _run("ssh-add", ["-L"])
    keys = [line for line in listed.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    if listed.returncode != 0 or not keys:
        if listed.returncode == 1:
            problem = "holds no keys (ssh-add your key)"
        else:
            problem = "cannot be reached"
        raise SigningUnavailable(
            f"No signing key: {SIGNING_KEY_ENV} is unset and the ssh-agent at SSH_AUTH_SOCK "
            f"{problem}."
        )
    path = Path(workdir, "agent-key.pub")
    path.write_text(keys[0] + "\n", encoding="utf-8")
    return str(path)


def sign(text: str, key: str | None = None) -> str:
    """Sign ``text`` under the ``safeops`` namespace; returns the armored signature.

    The key is ``key`` (a private key path, or a ``.pub`` whose private half is
    in the agent), else ``SAFEOPS_SIGNING_KEY`` (a path too), else the first key
    of the ssh-agent at ``SSH_AUTH_SOCK``. A passphrase-protected key must be
    loaded into the agent: nothing here asks for a passphrase.
    """
    with tempfile.TemporaryDirectory(prefix="safeops-sign-") as workdir:
        if key is not None:
            key_path, label = _key_path(key, "The signing key"), "the signing key"
        elif os.environ.get(SIGNING_KEY_ENV, "").strip():
            key_path = _key_path(os.environ[SIGNING_KEY_ENV].strip(), SIGNING_KEY_ENV)
            label = SIGNING_KEY_ENV
        elif os.environ.get("SSH_AUTH_SOCK"):
            key_path, label = _agent_public_key(workdir), "the ssh-agent's key"
        else:
            raise SigningUnavailable(
                f"No signing key: pass a key file, set {SIGNING_KEY_ENV} to one, or load a key "
                "into ssh-agent (SSH_AUTH_SOCK)."
            )
        result = _run(
            "ssh-keygen",
            ["-Y", "sign", "-n", NAMESPACE, "-f", key_path],
            stdin=text.encode("utf-8"),
        )
    if result.returncode != 0:
        detail = _diagnostic(result)
        if "passphrase" in detail:
            detail = "the key is passphrase-protected; load it with ssh-add and sign again"
        raise SigningUnavailable(f"Could not sign with {label}: {detail}.")
    armored = result.stdout.decode("ascii", "replace")
    _parse_signature(armored)
    return armored


def signing_key_fingerprint(key: str | None = None) -> str | None:
    """The SHA256 fingerprint of the key :func:`sign` would use (``key``, else
    SAFEOPS_SIGNING_KEY, else the ssh-agent's first key), without signing anything;
    None when there is no usable key (signing would then fail and say why)."""
    try:
        with tempfile.TemporaryDirectory(prefix="safeops-keyid-") as workdir:
            if key is not None:
                key_path = _key_path(key, "The signing key")
            elif os.environ.get(SIGNING_KEY_ENV, "").strip():
                key_path = _key_path(os.environ[SIGNING_KEY_ENV].strip(), SIGNING_KEY_ENV)
            elif os.environ.get("SSH_AUTH_SOCK"):
                key_path = _agent_public_key(workdir)
            else:
                return None
            listed = _run("ssh-keygen", ["-l", "-E", "sha256", "-f", key_path])
    except (SigningUnavailable, OSError):
        return None
    words = listed.stdout.decode("utf-8", "replace").split()
    if listed.returncode != 0 or len(words) < 2 or not words[1].startswith("SHA256:"):
        return None
    return words[1]


def key_fingerprint(signature: str) -> str:
    """The SHA256 fingerprint of the key that made ``signature`` (no verification)."""
    return _parse_signature(signature).fingerprint


def signing_command(statement_text: str, key_path: str = "~/.ssh/id_ed25519") -> str:
    """The one POSIX-shell command an approver runs to sign ``statement_text``.

    ``printf '%s\\n'`` repeats per argument, so each statement line is one quoted
    argument and the command fits on one line yet reproduces the exact bytes.
    """
    statement = Statement.parse(statement_text)
    lines = statement.text().splitlines()
    quoted_key = (
        "~/" + shlex.quote(key_path[2:]) if key_path.startswith("~/") else shlex.quote(key_path)
    )
    return (
        f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} "
        f"| ssh-keygen -Y sign -n {NAMESPACE} -f {quoted_key}"
    )


@dataclass(frozen=True)
class VerifiedSigner:
    """Who signed: the allowed_signers principal and the key's SHA256 fingerprint."""

    principal: str
    fingerprint: str


_GOOD = re.compile(
    r'^Good "safeops" signature for (?P<principal>.+) with \S+ key '
    r"(?P<fingerprint>SHA256:[A-Za-z0-9+/]+)$"
)


def verify(
    text: str, signature: str | None, allowed_signers: str | AllowedSigners
) -> VerifiedSigner:
    """Check ``signature`` over ``text``; the principal comes from allowed_signers only.

    ``find-principals`` looks the signing key up in allowed_signers, then
    ``verify -I <that principal>`` checks the signature, the namespace and the
    line's options (``namespaces=``, ``valid-before=``) in one go.
    """
    require_signature(signature)
    assert signature is not None  # require_signature refused None
    parsed = _parse_signature(signature)
    if parsed.namespace != NAMESPACE.encode():
        shown = clip(parsed.namespace.decode("utf-8", "replace"), 40)
        raise WrongNamespace(
            f"Refused: the signature was made for namespace {shown!r}, not {NAMESPACE!r}; "
            f"sign with -n {NAMESPACE}."
        )
    signers = (
        allowed_signers
        if isinstance(allowed_signers, AllowedSigners)
        else AllowedSigners.parse(allowed_signers)
    )
    with tempfile.TemporaryDirectory(prefix="safeops-verify-") as workdir:
        signers_path = Path(workdir, "allowed_signers")
        signers_path.write_text(signers.text, encoding="utf-8")
        signature_path = Path(workdir, "approval.sig")
        signature_path.write_text(parsed.armored, encoding="ascii")
        found = _run(
            "ssh-keygen",
            ["-Y", "find-principals", "-s", str(signature_path), "-f", str(signers_path)],
        )
        principals = found.stdout.decode("utf-8", "replace").split("\n")
        principal = principals[0].strip()
        if found.returncode != 0 or not principal:
            if "No principal matched" in found.stderr.decode("utf-8", "replace"):
                detail = _diagnostic(found, str(signers_path))
                raise SignerNotAllowed(
                    f"Refused: the signing key {parsed.fingerprint} is not in the allowed "
                    "signers" + ("." if detail.startswith("exit status") else f" ({detail}).")
                )
            raise SignatureMalformed(
                f"Refused: ssh-keygen cannot read the signature ({_diagnostic(found)})."
            )
        checked = _run(
            "ssh-keygen",
            [
                "-Y",
                "verify",
                "-n",
                NAMESPACE,
                "-I",
                principal,
                "-f",
                str(signers_path),
                "-s",
                str(signature_path),
            ],
            stdin=text.encode("utf-8"),
        )
    if checked.returncode != 0:
        detail = _diagnostic(checked, str(signers_path))
        if any(word in detail for word in ("not permitted", "expired", "not yet valid")):
            raise SignerNotAllowed(
                f"Refused: {principal}'s key {parsed.fingerprint} may not sign {NAMESPACE} "
                f"approvals now ({detail})."
            )
        if "namespace" in detail:
            raise WrongNamespace(f"Refused: the signature's namespace is not {NAMESPACE!r}.")
        raise BadSignature(
            "Refused: the signature does not match the statement (the statement was altered "
            f"after signing, or another key signed it): {detail}."
        )
    match = _GOOD.match(checked.stdout.decode("utf-8", "replace").strip())
    if match is None or match["principal"] != principal:
        raise BadSignature("Refused: ssh-keygen did not confirm a good safeops signature.")
    return VerifiedSigner(principal=principal, fingerprint=match["fingerprint"])


class VerifiedApproval(NamedTuple):
    """A signature that passed every check, with the statement it covers."""

    signer: VerifiedSigner
    statement: Statement


def verify_approval(
    statement_text: str,
    signature: str | None,
    allowed_signers: str | AllowedSigners,
    *,
    flow_run_id: str,
    flow: str,
    target_fingerprint: str,
    plan_hash: str,
    not_before: datetime,
    now: datetime | None = None,
) -> VerifiedApproval:
    """Parse, verify and bind a signed answer in the order a user fixes them.

    The statement's ``decision`` is returned, not judged: a well-signed
    ``reject`` passes here and the caller must stop the run on it.
    """
    require_signature(signature)
    statement = Statement.parse(statement_text)
    signer = verify(statement_text, signature, allowed_signers)
    check_statement(
        statement,
        flow_run_id=flow_run_id,
        flow=flow,
        target_fingerprint=target_fingerprint,
        plan_hash=plan_hash,
        not_before=not_before,
        now=now,
    )
    return VerifiedApproval(signer, statement)


def require_signature(signature: str | None) -> None:
    """An answer without a signature is refused before anything else is read from it."""
    if signature is None or not signature.strip():
        raise SignatureMissing(
            f"Refused: the approval carries no signature; sign the statement with "
            f"'ssh-keygen -Y sign -n {NAMESPACE}' and paste the signature."
        )
