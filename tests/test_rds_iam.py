"""RDS IAM: tokens from the default chain or an assumed role (a local STS from moto), and the source connecting
with the token as its password (a local Postgres role whose password is that token)."""

from __future__ import annotations

import urllib.parse
import uuid

import psycopg
import pytest

from sources.postgres import rds_iam
from sources.postgres.connection import connect
from tests.flows import drain, flow_spec, rows_of, source_part
from wallaby.core.errors import SourceError
from wallaby.core.options import PostgresSourceOptions


@pytest.fixture(scope="module")
def sts():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWALLABYTEST00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    yield
    rds_iam._providers.clear()


def _opts(dsn: str, **kw) -> PostgresSourceOptions:
    return PostgresSourceOptions.parse({"dsn": dsn, "slot": "s", "publication": "p", "aws_rds_iam": "true", **kw},
                                       what="test", path="source.options", context={})


def _query(token: str) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit("https://" + token).query))


def test_token_from_the_default_chain_and_region_from_the_host(aws_env):
    opts = _opts("postgresql://app@orders.abc123xyz.eu-west-1.rds.amazonaws.com:5432/app")
    assert opts.region == "eu-west-1"
    token = rds_iam.TokenProvider(opts, "f").token()
    q = _query(token)
    assert token.startswith("orders.abc123xyz.eu-west-1.rds.amazonaws.com:5432/?")
    assert q["Action"] == "connect" and q["DBUser"] == "app"
    assert q["X-Amz-Credential"].startswith("AKIAWALLABYTEST00001/") and "/eu-west-1/rds-db/" in q["X-Amz-Credential"]


def test_token_from_an_assumed_role(aws_env, sts):
    opts = _opts("postgresql://app@db.local:6543/app", aws_region="us-east-1",
                 aws_role_arn="arn:aws:iam::123456789012:role/wallaby", aws_role_session_name="cdc",
                 aws_role_external_id="ext-1", aws_endpoint=sts)
    provider = rds_iam.TokenProvider(opts, "f")
    q = _query(provider.token())
    assert q["X-Amz-Credential"].startswith("ASIA")  # temporary credentials from STS, not the base keys
    assert "X-Amz-Security-Token" in q
    first = provider._token
    assert provider.token() == first[0]  # reused within its lifetime
    provider._token = (first[0], first[1] - rds_iam.TOKEN_REUSE_SECONDS - 1)
    provider.token()
    assert provider._token[1] > first[1]  # rebuilt once old


def test_missing_credentials_is_one_clear_error(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    opts = _opts("postgresql://app@db.local/app", aws_region="us-east-1", aws_role_arn="arn:aws:iam::1:role/x",
                 aws_endpoint="http://127.0.0.1:1")
    with pytest.raises(SourceError, match=r"RDS IAM: cannot build an auth token for app@db.local:5432 in us-east-1"):
        rds_iam.TokenProvider(opts, "f").token()


def test_the_source_connects_with_the_token(aws_env, pgdb):
    """A role whose password is the token: the connection works only if the token is sent as the password."""
    user = "iam_" + uuid.uuid4().hex[:8]
    dsn = pgdb.replace("postgres@", f"{user}@")
    opts = _opts(dsn, aws_region="us-east-1")
    rds_iam.register(opts, "f")
    token = rds_iam.password_for(dsn)
    with psycopg.connect(pgdb, autocommit=True) as c:
        from psycopg import sql

        c.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION SUPERUSER PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(token)))
    try:
        with connect(dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == user
        rds_iam._providers.clear()
        with pytest.raises(SourceError, match="password"):  # without the token: refused
            connect(dsn)
        # The whole source (setup, slot, replication) on the token.
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        spec = flow_spec(dsn, slot="iam_slot", publication="iam_pub",
                         source={"aws_rds_iam": "true", "aws_region": "us-east-1", "publication_tables": "public.t"})
        rds_iam.register(spec.source_options(), spec.id)
        rds_iam._providers[dsn]._token = (token, __import__("time").monotonic())  # the role's password
        part = source_part(spec)
        try:
            drain(part, idle_polls=3)
            with psycopg.connect(pgdb, autocommit=True) as c:
                c.execute("INSERT INTO t VALUES (1)")
            got = drain(part, until_rows=1, timeout=30)
            assert [r.get("id") for r in rows_of(got)] == [1], rows_of(got)
        finally:
            part.close()
    finally:
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                      " WHERE slot_name = 'iam_slot' AND NOT active")
            c.execute(f"DROP OWNED BY {user}; DROP ROLE {user}")


def test_aws_profile_from_the_shared_config(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIADEFAULT000000000\naws_secret_access_key = a\n"
                     "[cdc]\naws_access_key_id = AKIAPROFILECDC000000\naws_secret_access_key = b\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    opts = _opts("postgresql://app@db.local/app", aws_region="us-west-2", aws_profile="cdc")
    q = _query(rds_iam.TokenProvider(opts, "f").token())
    assert q["X-Amz-Credential"].startswith("AKIAPROFILECDC000000/")
