"""SSH-signed approvals: the statement an approver signs and its verification.

A typed approver name proves nothing, so where allowed signers are configured
every answer (and every saved plan) carries an SSH signature in the SSHSIG
format of ``ssh-keygen -Y sign`` (the one git uses for signed commits) over a
canonical :class:`Statement`. The signer's name is taken from the operator's
allowed_signers file entry that holds the signing key, never from the form.

The namespace ``safeops`` is part of what is signed, so a signature made for a
git commit (namespace ``git``) or anything else can never be replayed as an
approval, and the statement names the run, the flow, the target database and
the plan hash, so a signature for one run cannot approve another.

All cryptography is done by the system's ``ssh-keygen`` (OpenSSH >= 8.9): the
message always goes through stdin, temporary files exist only where
ssh-keygen insists on a path (the signature and the allowed signers for
verification, the agent's public key for signing) and live in a private
temporary directory that is removed afterwards. Nothing here prints, logs or
puts key material into a message; a key is only ever named by its path or its
SHA256 fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple
from uuid import UUID

from safeops.core.errors import ApprovalDenied, BadInput

# --- exceptions (to be moved into safeops/errors.py) ------------------------


class SigningUnavailable(BadInput):
    """No usable signing key: nothing was signed (no key, no agent, locked key)."""


class StatementInvalid(BadInput):
    """A statement cannot be built from these values (e.g. a reason with a newline)."""


class AllowedSignersInvalid(BadInput):
    """SAFEOPS_ALLOWED_SIGNERS is set but unusable; approvals must not fall back to unverified."""


class SignatureRefused(ApprovalDenied):
    """A signed approval was refused; every subclass names one reason."""


class SignatureMissing(SignatureRefused):
    """Allowed signers are configured but the answer carries no signature."""


class SignatureMalformed(SignatureRefused):
    """The text pasted as a signature is not an armored SSH signature."""


class StatementMalformed(SignatureRefused):
    """The signed text is not a canonical safeops statement."""


class WrongNamespace(SignatureRefused):
    """The signature was made for another purpose (e.g. ``git``), not ``safeops``."""


class SignerNotAllowed(SignatureRefused):
    """The signing key is not listed (or not allowed for safeops) in allowed_signers."""


class BadSignature(SignatureRefused):
    """The signature does not match the statement: the statement was altered."""


class StatementMismatch(SignatureRefused):
    """A valid signature over a statement for another run, flow, target, plan or time."""

    def __init__(self, message: str, field: str = "") -> None:
        # Only the message goes into args (pickling); ``field`` travels in __dict__.
        super().__init__(message)
        self.field = field


# --- the statement -----------------------------------------------------------

NAMESPACE = "safeops"
HEADER = "safeops approval v1"
SAVED_PLAN_RUN_ID = "saved-plan"
"""``flow_run_id`` of a saved plan's statement: signed before any run exists, so
it is bound to the flow, the target database and the plan hash only, and any
later run whose plan hashes the same may use it."""

MAX_CLOCK_SKEW = timedelta(minutes=5)
ALLOWED_SIGNERS_ENV = "SAFEOPS_ALLOWED_SIGNERS"
SIGNING_KEY_ENV = "SAFEOPS_SIGNING_KEY"

_FIELDS = (
    "flow_run_id",
    "flow",
    "target_fingerprint",
    "plan_hash",
    "decision",
    "reason",
    "signed_at",
)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_TARGET = re.compile(r"^(?:[0-9]{1,20}|unknown)/\S(?:.{0,198}\S)?$")
_PLAN_HASH = re.compile(r"^[0-9a-f]{64}$")
_MAX_REASON = 2000


def _one_line_problem(value: str) -> str | None:
    """Why ``value`` cannot stand on one ``key: value`` line, or None.

    Refusing (rather than escaping) control, format and separator characters
    keeps the rendered text exactly what a reader sees: no hidden line breaks,
    no bidi overrides that reorder what is displayed.
    """
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    for ch in value:
        category = unicodedata.category(ch)
        if category.startswith("C") or category in ("Zl", "Zp"):
            return f"contains the control or invisible character U+{ord(ch):04X}"
    if unicodedata.normalize("NFC", value) != value:
        return "is not in Unicode NFC form"
    return None


def _clip(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Statement:
    """What an approver signs: one decision about one plan of one run on one database.

    Every field is checked on construction, so a statement that exists renders
    to exactly one text and that text parses back to an equal statement.
    ``signed_at`` is kept in UTC to the second (sub-seconds are dropped) because
    the text carries seconds only.
    """

    flow_run_id: str
    flow: str
    target_fingerprint: str
    plan_hash: str
    decision: Literal["approve", "reject"]
    reason: str
    signed_at: datetime

    def __post_init__(self) -> None:
        run_id = self.flow_run_id
        if run_id != SAVED_PLAN_RUN_ID:
            try:
                run_id = str(UUID(str(run_id)))
            except ValueError:
                raise StatementInvalid(
                    f"flow_run_id {_clip(run_id)!r} is neither a flow run UUID nor "
                    f"{SAVED_PLAN_RUN_ID!r}."
                ) from None
            object.__setattr__(self, "flow_run_id", run_id)
        if not isinstance(self.flow, str) or not _FLOW_NAME.match(self.flow):
            raise StatementInvalid(
                f"flow {_clip(self.flow)!r} is not a flow name (lowercase letters, digits, "
                "'.', '_', '-')."
            )
        target = self.target_fingerprint
        if not isinstance(target, str) or not _TARGET.match(target) or _one_line_problem(target):
            raise StatementInvalid(
                f"target_fingerprint {_clip(target)!r} is not '<system identifier>/<database>'."
            )
        if not isinstance(self.plan_hash, str) or not _PLAN_HASH.match(self.plan_hash):
            raise StatementInvalid(
                f"plan_hash {_clip(self.plan_hash)!r} is not 64 lowercase hex digits."
            )
        if self.decision not in ("approve", "reject"):
            raise StatementInvalid(
                f"decision {_clip(self.decision)!r} is neither 'approve' nor 'reject'."
            )
        if not isinstance(self.reason, str):
            raise StatementInvalid("reason must be text.")
        problem = _one_line_problem(self.reason)
        if problem:
            raise StatementInvalid(f"reason {problem}; write it as one line of plain text.")
        if len(self.reason) > _MAX_REASON:
            raise StatementInvalid(
                f"reason has {len(self.reason)} characters, at most {_MAX_REASON} are allowed."
            )
        object.__setattr__(self, "signed_at", _utc_seconds(self.signed_at, "signed_at"))

    def text(self) -> str:
        """The canonical text: header, then ``key: value`` in fixed order, final newline."""
        values = {
            **{f: str(getattr(self, f)) for f in _FIELDS},
            "signed_at": self.signed_at.strftime(_TIME_FORMAT),
        }
        return "\n".join([HEADER, *(f"{f}: {values[f]}" for f in _FIELDS)]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Statement:
        """Read a statement back; anything but its exact canonical text is refused.

        Strictness is the point: the approver saw and signed these bytes, so the
        meaning must not depend on how leniently they are read.
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise StatementMalformed(
                "Refused: the signed statement is not canonical (it must end with a newline)."
            )
        lines = text[:-1].split("\n")
        if lines[0] != HEADER:
            raise StatementMalformed(
                f"Refused: the signed statement does not start with {HEADER!r}."
            )
        if len(lines) != len(_FIELDS) + 1:
            raise StatementMalformed(
                f"Refused: the signed statement has {len(lines) - 1} field lines, "
                f"expected {len(_FIELDS)} ({', '.join(_FIELDS)})."
            )
        values: dict[str, str] = {}
        for number, (field, line) in enumerate(zip(_FIELDS, lines[1:], strict=True), start=2):
            prefix = f"{field}: "
            if not line.startswith(prefix):
                raise StatementMalformed(
                    f"Refused: line {number} of the signed statement must start with {prefix!r}."
                )
            values[field] = line[len(prefix) :]
        try:
            signed_at = datetime.strptime(values["signed_at"], _TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise StatementMalformed(
                f"Refused: signed_at {_clip(values['signed_at'])!r} is not YYYY-MM-DDTHH:MM:SSZ."
            ) from None
        try:
            statement = cls(
                flow_run_id=values["flow_run_id"],
                flow=values["flow"],
                target_fingerprint=values["target_fingerprint"],
                plan_hash=values["plan_hash"],
                decision=values["decision"],  # type: ignore[arg-type]
                reason=values["reason"],
                signed_at=signed_at,
            )
        except StatementInvalid as exc:
            raise StatementMalformed(f"Refused: the signed statement's {exc}") from None
        if statement.text() != text:
            raise StatementMalformed(
                "Refused: the signed statement is not in canonical form (spacing, case or "
                "encoding differs from what safeops renders)."
            )
        return statement


def _utc_seconds(value: Any, name: str) -> datetime:
    """An aware datetime in UTC, truncated to the second; naive times are ambiguous."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise StatementInvalid(f"{name} must be a timezone-aware datetime.")
    return value.astimezone(UTC).replace(microsecond=0)


# --- allowed signers ----------------------------------------------------------

_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_OPTIONS = re.compile(
    r'^(?:cert-authority|namespaces="[^"]*"|valid-after="[0-9TZ]+"|valid-before="[0-9TZ]+")$',
    re.IGNORECASE,
)
_TOKEN = re.compile(r'(?:[^\s"]|"[^"]*")+')
_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")


@dataclass(frozen=True)
class AllowedSigner:
    """One allowed_signers line: who (exact principals), under which options, with which key."""

    principals: tuple[str, ...]
    options: str
    key_type: str
    key_base64: str


@dataclass(frozen=True)
class AllowedSigners:
    """The operator's allowed_signers file, checked line by line before it is trusted.

    ssh-keygen skips a line it cannot read and carries on; here any such line
    refuses the whole file, so a typo cannot silently drop an approver's
    restriction. Principal patterns (``*@example.com``) are refused too: the
    principal becomes the approver's recorded name, and a pattern names nobody.
    """

    text: str
    signers: tuple[AllowedSigner, ...]

    @classmethod
    def parse(cls, text: str, source: str = "allowed signers") -> AllowedSigners:
        signers: list[AllowedSigner] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            signers.append(_parse_signer_line(line, f"{source} line {number}"))
        if not signers:
            raise AllowedSignersInvalid(
                f"{source} lists no signer; refusing to treat every approval as unverified."
            )
        return cls(text=text if text.endswith("\n") else text + "\n", signers=tuple(signers))


def _parse_signer_line(line: str, where: str) -> AllowedSigner:
    tokens = _TOKEN.findall(line)
    if len(tokens) < 3:
        raise AllowedSignersInvalid(
            f"{where}: expected '<principals> [options] <key type> <base64 key>'."
        )
    principals_token = tokens[0].replace('"', "")
    if tokens[1] in _KEY_TYPES:
        options, key_type, key_b64 = "", tokens[1], tokens[2]
    elif len(tokens) >= 4 and tokens[2] in _KEY_TYPES:
        options, key_type, key_b64 = tokens[1], tokens[2], tokens[3]
    else:
        raise AllowedSignersInvalid(
            f"{where}: expected '<principals> [options] <key type> <base64 key>' with a "
            f"key type of {', '.join(sorted(_KEY_TYPES))}."
        )
    principals = tuple(principals_token.split(","))
    for principal in principals:
        if not principal or any(ch in principal for ch in "*?!") or _one_line_problem(principal):
            raise AllowedSignersInvalid(
                f"{where}: principal {_clip(principal)!r} must be an exact name (no patterns), "
                "because it is recorded as the approver."
            )
    for option in filter(None, options.split(",")):
        if not _OPTIONS.match(option):
            raise AllowedSignersInvalid(f"{where}: unsupported option {_clip(option)!r}.")
    try:
        blob = base64.b64decode(key_b64, validate=True)
        embedded, _ = _read_string(blob, 0)
    except (binascii.Error, ValueError):
        raise AllowedSignersInvalid(f"{where}: the {key_type} key is not valid base64.") from None
    if embedded != key_type.encode():
        raise AllowedSignersInvalid(f"{where}: the key data is not a {key_type} key.")
    return AllowedSigner(principals, options, key_type, key_b64)


def load_allowed_signers(environ: Mapping[str, str] | None = None) -> AllowedSigners | None:
    """The configured allowed signers, or None when signing is not configured at all.

    ``SAFEOPS_ALLOWED_SIGNERS`` is read as follows, judged by its spelling only
    (never by what happens to exist on disk, so the meaning cannot change with
    the working directory):

    - unset: None, approvals are recorded as unverified;
    - a bare Prefect block name (lowercase letters, digits, dashes, e.g.
      ``safeops-allowed-signers``): the text of that Prefect Secret block;
    - anything else (it contains ``/``, ``.``, ``~`` or ``_``): a file path; write
      ``./allowed-signers`` for a file in the working directory.

    Fail closed: set but empty, unreadable, missing or unparseable raises
    :class:`AllowedSignersInvalid`; it never degrades to unverified.
    """
    env = os.environ if environ is None else environ
    value = env.get(ALLOWED_SIGNERS_ENV)
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise AllowedSignersInvalid(
            f"{ALLOWED_SIGNERS_ENV} is set but empty; unset it to run without signed approvals."
        )
    if _BLOCK_NAME.match(value):
        return AllowedSigners.parse(_secret_text(value), f"Prefect Secret block {value!r}")
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AllowedSignersInvalid(
            f"{ALLOWED_SIGNERS_ENV} names {value!r}, which does not exist."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AllowedSignersInvalid(
            f"{ALLOWED_SIGNERS_ENV} names {value!r}, which cannot be read ({type(exc).__name__})."
        ) from None
    return AllowedSigners.parse(text, str(value))


def _secret_text(name: str) -> str:
    try:
        from prefect.blocks.system import Secret

        secret: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
        value = secret.get()
    except Exception as exc:  # no API, no such block: still configured, so refuse
        raise AllowedSignersInvalid(
            f"{ALLOWED_SIGNERS_ENV} names the Prefect Secret block {name!r}, which could not "
            f"be loaded ({type(exc).__name__})."
        ) from None
    if not isinstance(value, str):
        raise AllowedSignersInvalid(
            f"The Prefect Secret block {name!r} does not hold allowed_signers text."
        )
    return value


# --- ssh-keygen ---------------------------------------------------------------

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
            return _clip(line, 200)
    return f"exit status {result.returncode}"


def _read_string(blob: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(blob):
        raise ValueError("truncated")
    size = int.from_bytes(blob[pos : pos + 4], "big")
    end = pos + 4 + size
    if end > len(blob):
        raise ValueError("truncated")
    return blob[pos + 4 : end], end


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
        public_key, pos = _read_string(blob, 10)
        namespace, pos = _read_string(blob, pos)
        _reserved, pos = _read_string(blob, pos)
        hash_algorithm, pos = _read_string(blob, pos)
        raw_signature, pos = _read_string(blob, pos)
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


# --- signing ------------------------------------------------------------------


def _key_path(key: str, origin: str) -> str:
    """Validate a key *path* without ever echoing something that may be key material."""
    if "PRIVATE KEY" in key or "\n" in key or len(key) > 4096:
        raise SigningUnavailable(f"{origin} must be the path of a key file, not key material.")
    path = Path(key).expanduser()
    if not path.is_file():
        raise SigningUnavailable(f"{origin} names {_clip(key, 200)!r}, which is not a file.")
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


# --- verification -------------------------------------------------------------


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
    if signature is None or not signature.strip():
        raise SignatureMissing(
            f"Refused: the approval carries no signature; sign the statement with "
            f"'ssh-keygen -Y sign -n {NAMESPACE}' and paste the signature."
        )
    parsed = _parse_signature(signature)
    if parsed.namespace != NAMESPACE.encode():
        shown = _clip(parsed.namespace.decode("utf-8", "replace"), 40)
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


# --- binding the statement to the run ----------------------------------------


def check_statement(
    statement: Statement,
    *,
    flow_run_id: str,
    flow: str,
    target_fingerprint: str,
    plan_hash: str,
    not_before: datetime,
    now: datetime | None = None,
) -> None:
    """Refuse a genuine signature over a statement made for something else.

    A valid signature only proves who said it; this proves they said it about
    this run (or ``SAVED_PLAN_RUN_ID``), this flow, this database and this plan,
    after the pause began (no replay of an older answer) and not from a clock
    more than five minutes ahead. ``not_before`` is cut to the second like
    ``signed_at``, so an answer in the pause's own second counts.
    """
    run_id = str(flow_run_id)
    with contextlib.suppress(ValueError):
        run_id = str(UUID(run_id))
    expected = {
        "flow_run_id": run_id,
        "flow": flow,
        "target_fingerprint": target_fingerprint,
        "plan_hash": plan_hash,
    }
    for field, want in expected.items():
        got = getattr(statement, field)
        if got != want:
            raise StatementMismatch(
                f"Refused: the signed statement is for {field} {_clip(got, 40)!r}, "
                f"not this run's {_clip(want, 40)!r}.",
                field=field,
            )
    earliest = _utc_seconds(not_before, "not_before")
    current = _utc_seconds(now if now is not None else datetime.now(UTC), "now")
    signed = statement.signed_at.strftime(_TIME_FORMAT)
    if statement.signed_at < earliest:
        raise StatementMismatch(
            f"Refused: the statement was signed at {signed}, before this approval was "
            f"requested at {earliest.strftime(_TIME_FORMAT)}; sign a new statement.",
            field="signed_at",
        )
    if statement.signed_at > current + MAX_CLOCK_SKEW:
        raise StatementMismatch(
            f"Refused: the statement claims to be signed at {signed}, more than "
            f"{int(MAX_CLOCK_SKEW.total_seconds() // 60)} min after now "
            f"({current.strftime(_TIME_FORMAT)}); check the signer's clock.",
            field="signed_at",
        )


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
    if signature is None or not signature.strip():
        raise SignatureMissing(
            f"Refused: the approval carries no signature; sign the statement with "
            f"'ssh-keygen -Y sign -n {NAMESPACE}' and paste the signature."
        )
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
