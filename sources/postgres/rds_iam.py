"""RDS IAM authentication: the source connects with a short-lived auth token as its password.

With ``aws_rds_iam=true`` every connection to the source (setup, replication,
type lookups, the API's slot/publication calls) gets a token built by boto3:

- credentials from boto3's default chain (environment, ``aws_profile`` in the
  shared config, IRSA web identity, instance roles), or from assuming
  ``aws_role_arn`` (session name ``aws_role_session_name``, default
  ``wallaby-<flow>``; ``aws_role_external_id``) through STS;
- region ``aws_region``, else inferred from an RDS host name
  (``db.xxxx.eu-west-1.rds.amazonaws.com``);
- ``aws_endpoint`` overrides the AWS endpoint (STS; a local test server).

A token is valid for 15 minutes; one is reused for 10 and then built again, so
every reconnect has a fresh one. Tokens are never logged (they are passwords).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from psycopg import conninfo

from wallaby.core.errors import SourceError

TOKEN_REUSE_SECONDS = 600.0

_providers: dict[str, TokenProvider] = {}
_lock = threading.Lock()


class TokenProvider:
    def __init__(self, opts: Any, flow_id: str):
        self.opts = opts
        self.flow_id = flow_id
        params = conninfo.conninfo_to_dict(opts.dsn)
        self.host = params.get("host") or "localhost"
        self.port = int(params.get("port") or 5432)
        self.user = params.get("user") or ""
        self.region = opts.region
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def _session(self):
        import boto3

        session = boto3.Session(profile_name=self.opts.aws_profile or None, region_name=self.region)
        if not self.opts.aws_role_arn:
            return session
        sts = session.client("sts", endpoint_url=self.opts.aws_endpoint or None, region_name=self.region)
        kwargs = {"RoleArn": self.opts.aws_role_arn,
                  "RoleSessionName": self.opts.aws_role_session_name or f"wallaby-{self.flow_id}"[:64]}
        if self.opts.aws_role_external_id:
            kwargs["ExternalId"] = self.opts.aws_role_external_id
        creds = sts.assume_role(**kwargs)["Credentials"]
        return boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                             aws_session_token=creds["SessionToken"], region_name=self.region)

    def token(self) -> str:
        with self._lock:
            now = time.monotonic()
            if self._token is not None and now - self._token[1] < TOKEN_REUSE_SECONDS:
                return self._token[0]
            try:
                rds = self._session().client("rds", region_name=self.region)
                token = rds.generate_db_auth_token(DBHostname=self.host, Port=self.port, DBUsername=self.user,
                                                   Region=self.region)
            except Exception as exc:  # botocore: no credentials, STS refused, bad profile
                raise SourceError(f"RDS IAM: cannot build an auth token for {self.user}@{self.host}:{self.port}"
                                  f" in {self.region}: {type(exc).__name__}: {exc}",
                                  server=f"{self.host}:{self.port}") from None
            self._token = (token, now)
            return token


def register(opts: Any, flow_id: str) -> None:
    """Connections to ``opts.dsn`` authenticate with RDS IAM tokens from now on."""
    with _lock:
        if opts.dsn not in _providers:
            _providers[opts.dsn] = TokenProvider(opts, flow_id)


def password_for(dsn: str) -> str | None:
    """A current token when ``dsn`` uses RDS IAM, else None."""
    provider = _providers.get(dsn)
    return provider.token() if provider is not None else None
