"""The S3 destination's free preflight check (:mod:`dataflows.preflight`): HeadBucket, nothing is created."""

from __future__ import annotations

import re
from types import ModuleType

from sinks.s3.options import S3DestinationOptions
from wallaby.core.errors import FieldProblem, TransientSinkError
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint

S3_TIMEOUT = 5.0  # seconds to connect and to read HeadBucket's answer; one attempt


def _field(i: int, option: str) -> str:
    return join_path("destinations", i, "options", option)


def check_s3_bucket(i: int, dest: Endpoint, opts: S3DestinationOptions, writer: ModuleType) -> list[FieldProblem]:
    """HeadBucket on the destination's bucket with its credentials, endpoint and region (one attempt, short
    timeouts), through the client of ``writer`` (:mod:`sinks.s3.writer`, loaded by the plugin when the check runs).
    A missing bucket, denied access or missing credentials are problems; no answer is a
    :class:`TransientSinkError`."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

    try:
        client = writer.make_client(opts, connect_timeout=S3_TIMEOUT, read_timeout=S3_TIMEOUT,
                             retries={"mode": "standard", "max_attempts": 1})
    except ValueError as exc:  # botocore: an endpoint URL it cannot use
        return [FieldProblem(_field(i, "endpoint"), f"not a usable S3 endpoint: {exc}")]
    endpoint = re.sub(r"//[^/@]*@", "//", opts.endpoint or client.meta.endpoint_url or "AWS S3")
    where = f"bucket {opts.bucket!r} at {endpoint}"
    try:
        client.head_bucket(Bucket=opts.bucket)
    except NoCredentialsError:
        return [FieldProblem(_field(i, "access_key"), f"no AWS credentials for {where}; set access_key and secret_key"
                                                      " or configure boto3's default chain (AWS_* variables, a"
                                                      " profile)")]
    except ParamValidationError as exc:
        return [FieldProblem(_field(i, "bucket"), f"{opts.bucket!r} is not a valid bucket name: {exc}")]
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
            return [FieldProblem(_field(i, "bucket"), f"{where} does not exist; create it or name another")]
        if status == 403 or code in writer._PERMANENT_AUTH:
            return [FieldProblem(_field(i, "bucket"), f"access denied to {where} ({code or status}); check"
                                                      " access_key/secret_key and the bucket policy (the destination"
                                                      " lists, reads and writes objects in it)")]
        if status in (301, 307) or code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed"):
            return [FieldProblem(_field(i, "region"), f"{where} is in another region than"
                                                      f" {client.meta.region_name!r}; set region")]
        if status >= 500 or status == 429:
            raise TransientSinkError(dest.name, f"{where} answered {code or status} to HeadBucket") from None
        return [FieldProblem(_field(i, "bucket"), f"{where} answered {code or status} to HeadBucket")]
    except BotoCoreError as exc:
        raise TransientSinkError(dest.name, f"cannot reach {where} ({_field(i, 'endpoint')}):"
                                            f" {type(exc).__name__}") from None
    return []


__all__ = ["S3_TIMEOUT", "check_s3_bucket"]
