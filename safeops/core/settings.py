"""Configuration read from the environment, resolved at the moment of use.

Flow parameters only *name* a target ("medusa", "cms", "medusa-staging");
the URL with its password is looked up here, from ``<TARGET>_DATABASE_URL`` or
from a Prefect Secret block called ``<target>-database-url``. That keeps
secrets out of flow-run parameters, which Prefect stores and shows in the UI.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from safeops.core.dsn import parse_dsn
from safeops.core.errors import SafeopsError
from safeops.core.targets import TARGET_NAME as TARGET_NAME
from safeops.core.targets import env_var_for as env_var_for
from safeops.core.targets import missing_database as missing_database
from safeops.core.targets import secret_block_name as secret_block_name
from safeops.core.targets import validate_target as validate_target

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


class Settings(BaseSettings):
    """Knobs an operator sets with ``SAFEOPS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SAFEOPS_", extra="ignore")

    snapshot_uri: str = Field(
        "./exports", description="Where snapshots go: a folder or s3://bucket/prefix."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 API endpoint (MinIO); AWS when unset."
    )
    approvers: Annotated[frozenset[str] | None, NoDecode] = Field(
        None, description="Comma list of people allowed to approve; anyone when unset."
    )
    media_bucket: str | None = Field(None, description="Bucket holding Medusa's product files.")
    media_file_url: str | None = Field(
        None, description="Medusa's file_url: image URLs start with it."
    )
    media_copy_workers: int = Field(
        16,
        ge=1,
        le=128,
        description="Concurrent S3 requests of an ImageRef migration (HEAD, LIST, copy).",
    )
    lock_timeout_s: float = Field(30.0, description="How long an apply waits for its locks.")
    approval_poll_s: int = Field(2, description="How often a paused run checks for an answer.")
    retry_delay_s: float = Field(
        1.0, ge=0, description="First retry delay of transient faults (then 3x and 9x)."
    )
    approver: str | None = Field(
        None, description="The name an unsigned CLI approval records (default: login name)."
    )
    allowed_signers: str | None = Field(
        None,
        description="allowed_signers file (or Secret block) that makes approvals signed; "
        "resolved by safeops.core.signing.",
    )
    nightly_cron: str = Field("0 3 * * *", description="Schedule of the nightly deployments.")
    nightly_timezone: str = Field("UTC", description="Time zone of that schedule.")

    @field_validator("approvers", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """People write lists as ``alice,bob``; an empty value means no list."""
        if isinstance(value, str):
            names = frozenset(name.strip() for name in value.split(",") if name.strip())
            return names or None
        return value


def get_settings() -> Settings:
    """Cached per state of the ``SAFEOPS_*`` environment: workers and tests change the
    environment between runs, and a stale setting must never outlive its variable."""
    return _settings_for(
        tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("SAFEOPS_")))
    )


@functools.lru_cache(maxsize=8)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()


def database_url(target: str) -> str:
    """The raw URL of a target; never log or return it to a flow's caller.

    Read here rather than as a Settings field: the variable's name depends on the target
    (``MEDUSA_DATABASE_URL``, ``MEDUSA_STAGING_DATABASE_URL``, ...)."""
    validate_target(target)
    value = os.environ.get(env_var_for(target))
    if not value:
        value = _secret_block(secret_block_name(target))
    if not value:
        raise missing_database(target)
    return value


def _secret_block(name: str) -> str | None:
    from safeops.core.prefect_blocks import secret_value

    try:
        return str(secret_value(name))
    except ValueError:
        return None
    except Exception:  # no API reachable, block type missing: treat as not configured
        return None


def sqlalchemy_url(raw: str) -> URL:
    """Any connection string libpq accepts as a ``postgresql+psycopg`` URL (for tests and
    tools that build their own engine; safeops' engines come from safeops.core.db)."""
    return parse_dsn(raw).sqlalchemy_url()


def mask_url(raw: str | URL) -> str:
    """The URL as it may appear in logs, artifacts and audit rows: the one parser's
    masked form, or a placeholder when it cannot be parsed (never the raw text)."""
    text = raw if isinstance(raw, str) else raw.render_as_string(hide_password=False)
    try:
        return parse_dsn(text).target.masked()
    except SafeopsError:
        return "(database URL not shown: it cannot be parsed and may contain a password)"


def describe_target(target: str) -> str:
    """A target as people read it: name plus masked location."""
    try:
        dsn = parse_dsn(database_url(target))
    except SafeopsError:
        return target
    return f"{target} ({dsn.target.location()})"
