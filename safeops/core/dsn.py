"""One parser for every connection string libpq accepts, and the only place that sees
the password.

Operators paste what their platform hands them: a URL (percent-encoded or not, one
host or several), libpq's ``key=value`` form, a password in the query string, or none
at all with ``PGPASSWORD`` in the environment. Every other module works from what
``parse_dsn`` returns: a password-free :class:`DsnTarget` to show people (logs, errors,
Prefect states, audit rows) and libpq keywords to connect with. Errors are built from
that description only, never from the raw string nor from psycopg's parse errors,
which quote fragments of the string (``missing "=" after "S3cr3t"``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, unquote
from weakref import WeakKeyDictionary

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from safeops.core.errors import DatabaseUnreachable, InvalidDsn, LoginRefused

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# A scheme is letters, digits, '+', '-' and '.': safe to quote in an error, unlike
# anything after "://".
SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")
# Keywords whose values are secrets (passfile is a path, but says where secrets live).
SECRET_KEYWORDS = ("password", "sslpassword", "passfile")
# Environment variables libpq reads in place of a keyword; PGPASSWORD is the secret one.
ENV_DEFAULTS = {
    "user": "PGUSER",
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
}
NOT_SHOWN = "(not shown: it may contain a password)"
# What PostgreSQL says when it answers but refuses the login (connection errors carry
# no SQLSTATE in psycopg, only the server's message).
LOGIN_REFUSALS = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "permission denied for database",
    "authentication failed for user",
)


@dataclass(frozen=True)
class DsnTarget:
    """Where a connection string points, without its secrets: what people may see.

    ``hosts`` and ``ports`` have the same length; an empty host is libpq's default
    (the local socket), an empty port the default port (5432)."""

    user: str | None
    hosts: tuple[str, ...]
    ports: tuple[str, ...]
    database: str
    has_password: bool

    def _endpoints(self, *, url: bool) -> str:
        parts = []
        for host, port in zip(self.hosts, self.ports, strict=True):
            if url and host.startswith("/"):
                shown = quote(host, safe="")  # a socket directory, as libpq's URLs write it
            elif ":" in host:
                shown = f"[{host}]"  # IPv6 literal
            else:
                shown = host
            parts.append(shown + (f":{port}" if port else ""))
        return ",".join(parts)

    def masked(self) -> str:
        """``postgresql://user:***@h1:5432,h2:5433/db``: a URL with the password starred."""
        user = quote(self.user or "", safe="") + (":***" if self.has_password else "")
        return (
            f"postgresql://{user}{'@' if user else ''}{self._endpoints(url=True)}/"
            f"{quote(self.database, safe='')}"
        )

    def location(self) -> str:
        """``user@h1:5432,h2:5433/db``, as people read it (``local socket`` for no host)."""
        endpoints = self._endpoints(url=False)
        if not any(self.hosts):
            endpoints = "local socket" + endpoints
        return f"{self.user or ''}@{endpoints}/{self.database}"

    def __str__(self) -> str:
        return self.masked()


@dataclass(frozen=True)
class ParsedDsn:
    """A parsed connection string: the description plus libpq keywords, password included.

    Kept in memory only: its repr hides the keywords and it refuses to be pickled, so
    it cannot end up in a Prefect state, result or log by accident."""

    target: DsnTarget
    params: Mapping[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)

    def __reduce__(self) -> NoReturn:
        raise TypeError("ParsedDsn holds a password and is never serialized")

    def connect_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (``overrides`` win)."""
        return {**self.params, **overrides}

    def conninfo(self) -> str:
        """libpq's ``key=value`` form, quoted by psycopg (for ``psycopg.connect``)."""
        return make_conninfo("", **self.params)

    def with_database(self, name: str) -> ParsedDsn:
        """The same server and credentials, another database (admin tasks, demo)."""
        return parse_dsn(make_conninfo("", **{**self.params, "dbname": name}))

    def sqlalchemy_url(self) -> URL:
        """A ``postgresql+psycopg`` URL for ``create_engine``; several hosts go in the query
        the way SQLAlchemy's psycopg dialect reads them (one port per host)."""
        from sqlalchemy.engine import URL  # here: the CLI parses URLs before SQLAlchemy loads

        params = dict(self.params)
        user, password = params.pop("user", None), params.pop("password", None)
        database = params.pop("dbname", None)
        host, port = params.pop("host", None), params.pop("port", None)
        if host is not None and "," not in host and (port is None or "," not in port):
            return URL.create(
                "postgresql+psycopg",
                username=user,
                password=password,
                host=host,
                port=int(port) if port else None,
                database=database,
                query=params,
            )
        if host is not None:
            params["host"] = host
            hosts = host.split(",")
            if port is not None:
                ports = port.split(",")
                params["port"] = ",".join(ports * len(hosts) if len(ports) == 1 else ports)
        elif port is not None:
            params["port"] = port
        return URL.create(
            "postgresql+psycopg", username=user, password=password, database=database, query=params
        )

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this string (raw and percent-encoded) starred:
        for driver messages, which are not ours to trust."""
        for secret in self.secrets:
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
        return text

    def connect_failure(self, driver_error: BaseException) -> DatabaseUnreachable:
        """The one line a failed connection becomes, whoever connected (an engine, the
        CLI's preflight): the masked URL and the driver's first line, secrets starred;
        LoginRefused when the server answered and said no (no retry fixes that)."""
        detail = self.scrub(str(driver_error))
        kind = (
            LoginRefused
            if any(marker in detail for marker in LOGIN_REFUSALS)
            else DatabaseUnreachable
        )
        text = str(driver_error).strip()
        first = text.splitlines()[0] if text else type(driver_error).__name__
        return kind(self.scrub(f"Cannot connect to {self.target.masked()}: {first}"))


def parse_dsn(raw: str, environ: Mapping[str, str] | None = None) -> ParsedDsn:
    """Parse a URL (``postgresql://``, ``postgres://``, ``postgresql+psycopg://``) or a
    ``key=value`` DSN; ``environ`` (default ``os.environ``) supplies libpq's PG* defaults.

    Raises InvalidDsn (exit 2) when the string cannot be parsed, is not PostgreSQL,
    or names no database; the message never contains any part of the string."""
    env = os.environ if environ is None else environ
    text = str(raw).strip()
    if not text:
        raise InvalidDsn("The database URL is empty.")
    scheme = SCHEME.match(text)
    if scheme is None:
        params = _libpq_parse(text)
    else:
        name = scheme.group(1).lower()
        if name.split("+", 1)[0] not in POSTGRES_SCHEMES:
            raise InvalidDsn(f"Only PostgreSQL is supported, got a {name!r} URL.")
        rest = text[scheme.end() :]
        params = _libpq_parse("postgresql://" + rest)
        if params is None or not _plausible(params):
            params = _libpq_parse(_encode_credentials(rest))
    if params is None:
        form = (
            "a postgresql:// URL libpq accepts"
            if scheme is not None
            else "libpq's key=value form (quote values holding spaces in '')"
        )
        raise InvalidDsn(f"The database URL is not {form} {NOT_SHOWN}.")
    return ParsedDsn(
        target=_describe(params, env),
        params=MappingProxyType(params),
        secrets=_secrets(params, env),
    )


def _libpq_parse(conninfo: str) -> dict[str, str] | None:
    """libpq's own reading, or None: psycopg's message quotes the string around the
    fault, so it is dropped here and never shown."""
    try:
        return {str(k): str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    except (ProgrammingError, ValueError, TypeError):
        return None


def _plausible(params: Mapping[str, str]) -> bool:
    """False when libpq read a password as typed into the host, port or database: it ends
    the credentials at the first '@' (or '/'), so ``rt:S3cr@t@host`` gives host
    ``t@host`` and ``rt:ab/cd@host/db`` port ``ab``. No host or database name holds '@'."""
    return (
        "@" not in params.get("host", "")
        and "@" not in params.get("dbname", "")
        and all(not p or p.isdigit() for p in params.get("port", "").split(","))
    )


def _encode_credentials(rest: str) -> str:
    """``rest`` (after ``scheme://``) with user and password percent-encoded.

    The credentials end at the *last* '@' before the path ('/') that follows the first
    '@' (else before the query), the user at the first ':'; both are decoded, then
    encoded, so a password typed with '@', ':', '/' or '?' reads as typed and an
    already encoded one stays the same."""
    first = rest.find("@")
    if first < 0:
        return "postgresql://" + rest
    end = next((i for i in (rest.find("/", first), rest.find("?", first)) if i >= 0), len(rest))
    at = rest.rfind("@", 0, end)
    user, sep, password = rest[:at].partition(":")
    credentials = quote(unquote(user), safe="")
    if sep:
        credentials += ":" + quote(unquote(password), safe="")
    return f"postgresql://{credentials}@{rest[at + 1 :]}"


def _describe(params: Mapping[str, str], env: Mapping[str, str]) -> DsnTarget:
    def value(key: str) -> str:
        return params.get(key) or env.get(ENV_DEFAULTS[key], "")

    hosts = tuple((value("host") or value("hostaddr")).split(","))
    ports = tuple(value("port").split(","))
    if any(port and not port.isdigit() for port in ports):
        raise InvalidDsn(f"The database URL has a port that is not a number {NOT_SHOWN}.")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise InvalidDsn(f"The database URL names {len(hosts)} hosts but {len(ports)} ports.")
    database = value("dbname")
    target = DsnTarget(
        user=value("user") or None,
        hosts=hosts,
        ports=ports,
        database=database,
        has_password=bool(params.get("password") or env.get("PGPASSWORD")),
    )
    if not database:
        raise InvalidDsn(f"The database URL names no database: {target.masked()}")
    if "=" in database or "://" in database:
        # A connection string in dbname (libpq's expand_dbname): may carry a password.
        raise InvalidDsn(f"The database name is itself a connection string {NOT_SHOWN}.")
    return target


def _secrets(params: Mapping[str, str], env: Mapping[str, str]) -> tuple[str, ...]:
    found = [params.get(key, "") for key in SECRET_KEYWORDS] + [env.get("PGPASSWORD", "")]
    # Longest first, so a secret containing another is starred whole.
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


# What each engine connects to: engines are built with an empty URL (the keywords travel
# in connect_args, which no repr or log shows), so messages about an engine's database
# look up its parsed, password-free description here.
_BY_ENGINE: WeakKeyDictionary[Any, ParsedDsn] = WeakKeyDictionary()


def remember(engine: Any, dsn: ParsedDsn) -> None:
    _BY_ENGINE[engine] = dsn


def parsed_for(engine: Any) -> ParsedDsn | None:
    return _BY_ENGINE.get(engine)
