"""A local S3 for tests: ``moto`` in server mode, as a real HTTP server in a subprocess.

Use it by importing the fixture: ``from tests.s3_server import s3_server  # noqa: F401``. It yields the endpoint
URL (``http://127.0.0.1:PORT``); any access key and secret key are accepted, buckets are created by the tests.
A server that cannot start fails the run with its output; it is never skipped.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.servers import free_port, running

START_TIMEOUT = 30.0



def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if not with 200
    except OSError:
        return False



@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server running for the whole session."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"})
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running(f"moto S3 server on {url}", command, lambda: _answers(url), timeout=START_TIMEOUT, env=env):
        yield url
