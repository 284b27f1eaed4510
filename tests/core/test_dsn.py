"""The one connection-string parser (safeops/core/dsn.py), one test per form libpq accepts.

Each form must give the same password-free description and the keywords psycopg
connects with, and nothing the parser says (description, repr, errors) may contain
the password. The end-to-end side, a real database behind each form:
tests/faults/test_password_never_shown.py.
"""

from __future__ import annotations

import pickle
from urllib.parse import quote

import pytest

from safeops.core.dsn import DsnTarget, ParsedDsn, parse_dsn
from safeops.core.errors import BadInput, InvalidDsn

# '@' and ':' as typed: the characters that split URLs wrongly.
PASSWORD = "S3cr@t:Pa55-q7"
ENCODED = quote(PASSWORD, safe="")


def shown(parsed: ParsedDsn) -> str:
    """Everything the parser lets people see."""
    target = parsed.target
    return "\n".join([target.masked(), target.location(), str(target), repr(target), repr(parsed)])


def assert_no_password(parsed: ParsedDsn) -> None:
    text = shown(parsed)
    assert PASSWORD not in text and ENCODED not in text, text


def test_keyword_dsn() -> None:
    parsed = parse_dsn(
        f"host=127.0.0.1 port=5432 user=rt password='{PASSWORD}' dbname=shop", environ={}
    )
    assert parsed.target == DsnTarget(
        user="rt", hosts=("127.0.0.1",), ports=("5432",), database="shop", has_password=True
    )
    assert parsed.target.masked() == "postgresql://rt:***@127.0.0.1:5432/shop"
    assert parsed.target.location() == "rt@127.0.0.1:5432/shop"
    assert parsed.params["password"] == PASSWORD
    assert_no_password(parsed)


def test_url_with_an_unencoded_at_and_colon_in_the_password() -> None:
    # libpq alone reads user 'rt', password 'S3cr' and host 't:Pa55-q7@127.0.0.1'.
    parsed = parse_dsn(f"postgresql://rt:{PASSWORD}@127.0.0.1:5432/shop", environ={})
    assert parsed.params["password"] == PASSWORD
    assert parsed.target.masked() == "postgresql://rt:***@127.0.0.1:5432/shop"
    assert_no_password(parsed)


@pytest.mark.parametrize("password", ["pa/ss@word", "a?b@c", "a@b?c", "1234/ab"])
def test_url_with_other_unencoded_characters_reads_the_password_as_typed(
    password: str,
) -> None:
    parsed = parse_dsn(f"postgresql://rt:{password}@db.internal/shop", environ={})
    assert parsed.params["password"] == password
    assert parsed.target.masked() == "postgresql://rt:***@db.internal/shop"


def test_url_with_a_percent_encoded_password() -> None:
    for scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        parsed = parse_dsn(f"{scheme}://rt:{ENCODED}@127.0.0.1:5432/shop", environ={})
        assert parsed.params["password"] == PASSWORD, scheme
        assert parsed.target.masked() == "postgresql://rt:***@127.0.0.1:5432/shop"
        assert_no_password(parsed)


def test_password_in_the_query_string() -> None:
    parsed = parse_dsn(
        f"postgresql://rt@127.0.0.1:5432/shop?password={ENCODED}&sslmode=disable", environ={}
    )
    assert parsed.params["password"] == PASSWORD
    assert parsed.params["sslmode"] == "disable"
    assert parsed.target.masked() == "postgresql://rt:***@127.0.0.1:5432/shop"
    assert_no_password(parsed)


def test_sslpassword_and_passfile_in_the_query_string() -> None:
    parsed = parse_dsn(
        f"postgresql://rt@127.0.0.1:5432/shop?sslpassword={ENCODED}&passfile=/secret/pgpass",
        environ={},
    )
    assert parsed.params["sslpassword"] == PASSWORD
    # Query options are never part of the description; passfile is scrubbed too.
    assert parsed.target.masked() == "postgresql://rt@127.0.0.1:5432/shop"
    assert "/secret/pgpass" not in shown(parsed)
    assert parsed.scrub(f"could not read /secret/pgpass: {PASSWORD}") == "could not read ***: ***"
    assert_no_password(parsed)


def test_pgpassword_in_the_environment() -> None:
    parsed = parse_dsn(
        "postgresql://127.0.0.1/shop",
        environ={"PGPASSWORD": PASSWORD, "PGUSER": "rt", "PGPORT": "5433"},
    )
    assert "password" not in parsed.params  # libpq reads the variable itself
    assert parsed.target.masked() == "postgresql://rt:***@127.0.0.1:5433/shop"
    assert parsed.scrub(f"failed for {PASSWORD}") == "failed for ***"
    assert_no_password(parsed)


def test_multi_host_url_and_keyword_forms() -> None:
    url = parse_dsn(f"postgresql://rt:{PASSWORD}@h1:5432,h2:5433/shop", environ={})
    keywords = parse_dsn(
        f"host=h1,h2 port=5432,5433 user=rt password='{PASSWORD}' dbname=shop", environ={}
    )
    for parsed in (url, keywords):
        assert parsed.target.hosts == ("h1", "h2") and parsed.target.ports == ("5432", "5433")
        assert parsed.target.masked() == "postgresql://rt:***@h1:5432,h2:5433/shop"
        assert parsed.target.location() == "rt@h1:5432,h2:5433/shop"
        assert parsed.params["host"] == "h1,h2" and parsed.params["port"] == "5432,5433"
        assert_no_password(parsed)
    # One port for every host, as libpq reads it; SQLAlchemy's URL needs one per host.
    one_port = parse_dsn("host=h1,h2 port=6432 dbname=shop", environ={})
    assert one_port.target.location() == "@h1:6432,h2:6432/shop"
    assert one_port.sqlalchemy_url().query["port"] == "6432,6432"


def test_socket_and_ipv6_hosts_are_described() -> None:
    socket = parse_dsn("postgresql://rt@/shop?host=/var/run/postgresql", environ={})
    assert socket.target.masked() == "postgresql://rt@%2Fvar%2Frun%2Fpostgresql/shop"
    assert socket.target.location() == "rt@/var/run/postgresql/shop"
    local = parse_dsn("dbname=shop", environ={})
    assert local.target.location() == "@local socket/shop"
    ipv6 = parse_dsn(f"postgresql://rt:{ENCODED}@[::1]:5432/shop", environ={})
    assert ipv6.target.masked() == "postgresql://rt:***@[::1]:5432/shop"


@pytest.mark.parametrize(
    "raw",
    [
        f"host=127.0.0.1 password={PASSWORD} dbname",  # psycopg: missing "=" after ...
        f"host=127.0.0.1 password='{PASSWORD} dbname=shop",  # unterminated quote
        f"host=127.0.0.1 password={PASSWORD} no_such_option=1 dbname=shop",
        f"postgresql://rt:{PASSWORD}@127.0.0.1/shop?no_such_option={PASSWORD}",
        f"postgresql://rt:{PASSWORD}@127.0.0.1:port{PASSWORD}/shop",
        f"postgresql://rt:{PASSWORD}@127.0.0.1:5432",  # no database
        f"host=h1,h2,h3 port=1,2 password={PASSWORD} dbname=shop",
        f"dbname='postgresql://rt:{PASSWORD}@h/db'",  # a connection string as dbname
        f"mysql://rt:{PASSWORD}@127.0.0.1/shop",
        "   ",
    ],
)
def test_errors_never_quote_the_string(raw: str) -> None:
    with pytest.raises(InvalidDsn) as caught:
        parse_dsn(raw, environ={})
    message = str(caught.value)
    assert PASSWORD not in message and ENCODED not in message and "S3cr" not in message
    assert isinstance(caught.value, BadInput)  # exit 2: configuration, never retried
    # Nothing chained either: a traceback would print psycopg's message, which quotes it.
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_error_messages_say_what_is_wrong() -> None:
    def error(raw: str) -> str:
        with pytest.raises(InvalidDsn) as caught:
            parse_dsn(raw, environ={})
        return str(caught.value)

    assert error(f"postgresql://rt:{PASSWORD}@127.0.0.1:5432") == (
        "The database URL names no database: postgresql://rt:***@127.0.0.1:5432/"
    )
    assert error("mysql://rt@h/db") == "Only PostgreSQL is supported, got a 'mysql' URL."
    assert "3 hosts but 2 ports" in error("host=a,b,c port=1,2 dbname=x")
    assert "not shown" in error(f"host=a password={PASSWORD} dbname")


def test_the_parsed_dsn_is_never_serialized() -> None:
    parsed = parse_dsn(f"postgresql://rt:{PASSWORD}@127.0.0.1/shop", environ={})
    with pytest.raises(TypeError, match="never serialized"):
        pickle.dumps(parsed)
    assert pickle.loads(pickle.dumps(parsed.target)) == parsed.target  # the description is
    assert PASSWORD not in repr(parsed) and "params" not in repr(parsed)


def test_scrub_removes_raw_and_encoded_forms() -> None:
    parsed = parse_dsn(f"postgresql://rt:{PASSWORD}@127.0.0.1/shop", environ={})
    assert parsed.scrub(f'x "{PASSWORD}" y {ENCODED} z') == 'x "***" y *** z'


def test_settings_wrappers_use_the_one_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from safeops.core.settings import describe_target, mask_url, sqlalchemy_url

    raw = f"host=127.0.0.1,127.0.0.1 port=1,5432 user=rt password='{PASSWORD}' dbname=shop"
    assert mask_url(raw) == "postgresql://rt:***@127.0.0.1:1,127.0.0.1:5432/shop"
    assert PASSWORD not in mask_url(f"host=127.0.0.1 password={PASSWORD} dbname")
    url = sqlalchemy_url(f"postgresql://rt:{PASSWORD}@127.0.0.1:5432/shop")
    assert url.password == PASSWORD and url.drivername == "postgresql+psycopg"
    assert mask_url(url) == "postgresql://rt:***@127.0.0.1:5432/shop"
    monkeypatch.setenv("DSNTEST_DATABASE_URL", raw)
    assert describe_target("dsntest") == "dsntest (rt@127.0.0.1:1,127.0.0.1:5432/shop)"
    monkeypatch.setenv("DSNTEST_DATABASE_URL", f"host=x password={PASSWORD} dbname")
    assert describe_target("dsntest") == "dsntest"
