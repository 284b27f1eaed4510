"""The operator's OpenSSH allowed_signers file (SAFEOPS_ALLOWED_SIGNERS), checked strictly."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safeops.core.errors import AllowedSignersInvalid
from safeops.core.signing.statement import ALLOWED_SIGNERS_ENV, clip, one_line_problem

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

    @property
    def fingerprint(self) -> str:
        """The key's SHA256 fingerprint, as ``ssh-keygen -l`` prints it."""
        blob = base64.b64decode(self.key_base64)
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


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

    def principals_of(self, fingerprints: set[str]) -> set[str]:
        """Every principal listed with any key of ``fingerprints`` (all of a person's
        names, whichever of her keys she signed with)."""
        return {
            principal
            for signer in self.signers
            if signer.fingerprint in fingerprints
            for principal in signer.principals
        }


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
        if not principal or any(ch in principal for ch in "*?!") or one_line_problem(principal):
            raise AllowedSignersInvalid(
                f"{where}: principal {clip(principal)!r} must be an exact name (no patterns), "
                "because it is recorded as the approver."
            )
    for option in filter(None, options.split(",")):
        if not _OPTIONS.match(option):
            raise AllowedSignersInvalid(f"{where}: unsupported option {clip(option)!r}.")
    try:
        blob = base64.b64decode(key_b64, validate=True)
        embedded, _ = read_string(blob, 0)
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
    from safeops.core.prefect_blocks import secret_value

    try:
        value = secret_value(name)
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


def read_string(blob: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(blob):
        raise ValueError("truncated")
    size = int.from_bytes(blob[pos : pos + 4], "big")
    end = pos + 4 + size
    if end > len(blob):
        raise ValueError("truncated")
    return blob[pos + 4 : end], end
