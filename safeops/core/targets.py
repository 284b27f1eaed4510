"""Target names and where their URL is looked up, without any heavy import.

Apart from ``settings`` so the CLI can refuse a bad target name or an unset URL in a
few milliseconds, before it loads pydantic, SQLAlchemy or Prefect; ``settings``
re-exports every name, so tasks and flows keep importing them from there."""

from __future__ import annotations

import re

from safeops.core.errors import BadInput

TARGET_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def env_var_for(target: str) -> str:
    return f"{target.upper().replace('-', '_')}_DATABASE_URL"


def secret_block_name(target: str) -> str:
    return f"{target}-database-url"


def validate_target(target: str) -> str:
    if not isinstance(target, str) or not TARGET_NAME.match(target):
        raise BadInput(
            f"Invalid target name {target!r}: use lowercase letters, digits and dashes "
            "(e.g. 'medusa', 'cms')."
        )
    return target


def missing_database(target: str) -> BadInput:
    """The refusal when neither the variable nor the Secret block holds a URL (the CLI's
    preflight gives the same line before Prefect starts)."""
    return BadInput(
        f"No database configured for target {target!r}: set {env_var_for(target)} "
        f"or create a Prefect Secret block named '{secret_block_name(target)}'."
    )
