"""A real local HTTP receiver for webhook tests: records every request, fails or stalls on demand, dedupes.

Use it by importing the fixture: ``from tests.http_receiver import receiver  # noqa: F401``; it yields a started
:class:`Receiver` (a ``ThreadingHTTPServer`` on 127.0.0.1, an ephemeral port) and stops it afterwards.

- ``requests``: every request in arrival order (method, path, lower-cased headers, body, the status answered);
- ``fail_next(n, status, body=..., headers=...)``: answer the next ``n`` requests with ``status``;
- ``delay_next(n, seconds)``: hold the next ``n`` answers (beyond a client's timeout); the request still counts as
  received, as on a real server that finished its work after the client gave up;
- ``accepted``: the body of each request answered 2xx, first one per idempotency key only; a later request with a
  key already accepted is a duplicate: counted in ``duplicates`` and answered ``duplicate_status`` (200);
- ``truncated``: requests cut off before their whole body arrived (a client killed mid-send): never accepted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    at: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)


@dataclass
class _Script:
    remaining: int
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    def __init__(self, key_header: str = "Idempotency-Key"):
        self.key_header = key_header.lower()
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.accepted: dict[str, Received] = {}  # idempotency key -> first accepted request
        self.duplicates = 0
        self.duplicate_status = 200
        self.truncated: list[Received] = []  # requests whose body never arrived whole (not in ``requests``)
        self._script: list[_Script] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="http-receiver", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook", auth: str = "") -> str:
        return f"http://{auth + '@' if auth else ''}127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    # -- scripting

    def fail_next(self, n: int, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        with self.lock:
            self._script.append(_Script(n, status, data, dict(headers or {})))

    def delay_next(self, n: int, seconds: float) -> None:
        with self.lock:
            self._script.append(_Script(n, 200, delay=seconds))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.accepted.clear()
            self.duplicates = 0
            self.truncated.clear()
            self._script.clear()

    def _next_script(self) -> _Script | None:
        with self.lock:
            while self._script and self._script[0].remaining <= 0:
                self._script.pop(0)
            if not self._script:
                return None
            self._script[0].remaining -= 1
            return self._script[0]

    # -- views

    def statuses(self) -> list[int]:
        with self.lock:
            return [r.status for r in self.requests]

    def delivered(self) -> list[Received]:
        """Requests answered 2xx (duplicates included), in arrival order."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def _record(self, req: Received, script: _Script | None) -> tuple[int, bytes, dict[str, str]]:
        with self.lock:
            self.requests.append(req)
            if script is not None and script.delay == 0:
                req.status = script.status
                return script.status, script.body, script.headers
            key = req.headers.get(self.key_header, "")
            if key and key in self.accepted:
                self.duplicates += 1
                req.status = self.duplicate_status
                return req.status, b'{"duplicate": true}', {}
            if key:
                self.accepted[key] = req
            req.status = 200
            return 200, b'{"ok": true}', {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real webhook receivers
            timeout = 30
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if len(body) < length:  # the client died mid-request (kill -9): nothing to answer or accept
                    with receiver.lock:
                        receiver.truncated.append(req)
                    self.close_connection = True
                    return
                script = receiver._next_script()
                status, data, headers = receiver._record(req, script)
                if script is not None and script.delay:
                    time.sleep(script.delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json" if data.startswith(b"{") else "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True  # the client gave up (a timeout): fine

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _serve

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()
