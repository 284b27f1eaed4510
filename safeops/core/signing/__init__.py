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

Layout: :mod:`.statement` (the text and its binding to a run),
:mod:`.allowed_signers` (the operator's file), :mod:`.sshsig` (ssh-keygen).
The exceptions live in :mod:`safeops.core.errors` with every other one and
are re-exported here.
"""

from safeops.core.errors import (
    AllowedSignersInvalid,
    BadSignature,
    SignatureMalformed,
    SignatureMissing,
    SignatureRefused,
    SignerNotAllowed,
    SigningUnavailable,
    StatementInvalid,
    StatementMalformed,
    StatementMismatch,
    WrongNamespace,
)
from safeops.core.signing.allowed_signers import (
    AllowedSigner,
    AllowedSigners,
    load_allowed_signers,
)
from safeops.core.signing.sshsig import (
    VerifiedApproval,
    VerifiedSigner,
    key_fingerprint,
    require_signature,
    sign,
    signing_command,
    signing_key_fingerprint,
    verify,
    verify_approval,
)
from safeops.core.signing.statement import (
    ALLOWED_SIGNERS_ENV,
    HEADER,
    MAX_CLOCK_SKEW,
    NAMESPACE,
    SAVED_PLAN_RUN_ID,
    SIGNING_KEY_ENV,
    Statement,
    check_statement,
    format_time,
    parse_time,
)

__all__ = [
    "ALLOWED_SIGNERS_ENV",
    "HEADER",
    "MAX_CLOCK_SKEW",
    "NAMESPACE",
    "SAVED_PLAN_RUN_ID",
    "SIGNING_KEY_ENV",
    "AllowedSigner",
    "AllowedSigners",
    "AllowedSignersInvalid",
    "BadSignature",
    "SignatureMalformed",
    "SignatureMissing",
    "SignatureRefused",
    "SignerNotAllowed",
    "SigningUnavailable",
    "Statement",
    "StatementInvalid",
    "StatementMalformed",
    "StatementMismatch",
    "VerifiedApproval",
    "VerifiedSigner",
    "WrongNamespace",
    "check_statement",
    "format_time",
    "key_fingerprint",
    "load_allowed_signers",
    "parse_time",
    "require_signature",
    "sign",
    "signing_command",
    "signing_key_fingerprint",
    "verify",
    "verify_approval",
]
