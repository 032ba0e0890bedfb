"""One error taxonomy, acted on: what a failing destination or source makes the worker print and exit with, and
what the API server does with that exit.

End to end: the real worker (``python -m wallaby.control.worker``) against the test Postgres, with a destination that
fails for real (a DuckDB path under a file, a Kafka address where nothing listens, a bucket the S3 server does not
have, an HTTP receiver answering 500 or a closed port, a source database that does not exist). Each must end with
its documented exit status and one line naming the destination and what it tried, with no bytewax/Rust panic
text, no traceback and no password anywhere on stderr.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from sinks.base import PermanentSinkError, SinkError, TransientSinkError
from tests import WORKER
from tests.http_receiver import Receiver, receiver  # noqa: F401 - fixture
from tests.kafka_broker import kafka_broker  # noqa: F401 - fixture
from tests.s3_server import s3_server  # noqa: F401 - fixture
from wallaby.control.panicfilter import PanicFilter
from wallaby.core import errors
from wallaby.core.errors import (
    EXIT_CONFIG,
    EXIT_FENCED,
    EXIT_PERMANENT,
    EXIT_TRANSIENT,
    ConfigError,
    FencedError,
    FieldProblem,
    TerminalError,
    TerminalSourceError,
    TransientError,
    TransientSourceError,
    WallabyError,
    exit_status,
    is_transient,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "pw-" + uuid.uuid4().hex[:8]  # in the source DSN (trust auth ignores it) and in destination credentials
FORBIDDEN = ("panic", "outputs.rs", "StatefulSink", "Traceback", SECRET)


# -- the taxonomy --------------------------------------------------------------------------------------------------

def test_sink_errors_are_wallaby_errors_of_one_kind_each():
    import sinks.base

    assert sinks.base.SinkError is errors.SinkError and sinks.base.TransientSinkError is errors.TransientSinkError
    assert issubclass(SinkError, WallabyError)
    assert issubclass(TransientSinkError, TransientError) and not issubclass(TransientSinkError, TerminalError)
    assert issubclass(PermanentSinkError, TerminalError) and not issubclass(PermanentSinkError, TransientError)
    t = TransientSinkError("k", f"cannot reach postgres://u:{SECRET}@h/db", retry_after=2.5)
    assert is_transient(t) and t.retry_after == 2.5 and t.destination == "k" and SECRET not in str(t)
    assert not is_transient(PermanentSinkError("k", "no"))
    assert errors.grpc_status_name(t) == "UNAVAILABLE"
    assert errors.grpc_status_name(PermanentSinkError("k", "no")) == "FAILED_PRECONDITION"


def test_one_is_transient_for_driver_errors_too():
    import sources.postgres.connection

    assert sources.postgres.connection.is_transient is is_transient  # one classifier, not two
    assert is_transient(psycopg.errors.AdminShutdown("terminated"))  # 57P01
    assert not is_transient(psycopg.errors.InsufficientPrivilege("denied"))  # 42501
    assert is_transient(psycopg.OperationalError("connection lost"))  # libpq: no SQLSTATE
    assert not is_transient(psycopg.ProgrammingError("bad"))
    assert is_transient(ConnectionRefusedError(111, "refused")) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError(2, "missing")) and not is_transient(KeyError("x"))
    assert is_transient(socket.gaierror(socket.EAI_AGAIN, "try again"))
    assert not is_transient(socket.gaierror(socket.EAI_NONAME, "no such host"))


@pytest.mark.parametrize(("exc", "status"), [
    (ConfigError.single("flow 'f'", "source.options.slot", "required"), EXIT_CONFIG),
    (FencedError("f", 1, 2), EXIT_FENCED),
    (TransientSinkError("k", "brokers down"), EXIT_TRANSIENT),
    (TransientSourceError("walsender terminated"), EXIT_TRANSIENT),
    (PermanentSinkError("d", "cannot create the directory"), EXIT_PERMANENT),
    (TerminalSourceError("no privilege"), EXIT_PERMANENT),
    (errors.SourceError("publication missing"), EXIT_PERMANENT),
    (SinkError("d", "plain"), EXIT_PERMANENT),
    (ConnectionResetError(104, "reset"), EXIT_TRANSIENT),  # a network error nobody mapped
    (psycopg.errors.AdminShutdown("terminating connection"), EXIT_TRANSIENT),
    (KeyError("bug"), EXIT_PERMANENT),  # of unknown kind: a bug repeats, it is not retried
    (ValueError("bad"), EXIT_PERMANENT),
])
def test_exit_status_of_each_kind(exc, status):
    assert exit_status(exc) == status


# -- bytewax's wrapping, for real ----------------------------------------------------------------------------------

def _run_failing_sink(where: str, error: BaseException) -> BaseException:
    """Run a one-step bytewax dataflow whose sink raises ``error`` in ``where``; the exception cli_main raises."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
    from bytewax.run import cli_main
    from bytewax.testing import TestingSource

    class Part(StatefulSinkPartition):
        def write_batch(self, values):
            if where == "write":
                raise error

        def snapshot(self):
            if where == "snapshot":
                raise error

    class Sink(FixedPartitionedSink):
        def list_parts(self):
            return ["p"]

        def part_fn(self, item_key):
            return 0

        def build_part(self, step_id, for_part, resume_state):
            if where == "build":
                try:
                    raise OSError(20, "Not a directory")
                except OSError:
                    raise error  # noqa: B904 - the context is what a sink leaves when it raises `from None`
            return Part()

    flow = Dataflow("taxonomy")
    op.output("out", op.input("in", flow, TestingSource([("k", 1), ("k", 2)])), Sink())
    with pytest.raises(BaseException) as got:
        cli_main(flow, epoch_interval=timedelta(milliseconds=10))
    return got.value


@pytest.mark.parametrize("where", ["build", "write", "snapshot"])
def test_root_cause_is_found_under_bytewax_wrapping(where):
    from wallaby.control.worker import _root_cause

    mine = TransientSinkError("events", f"cannot reach brokers 127.0.0.1:9 (password={SECRET})")
    raised = _run_failing_sink(where, mine)
    cause, line = _root_cause(raised)
    assert cause is mine
    assert line.startswith("destination 'events': cannot reach brokers 127.0.0.1:9") and SECRET not in line
    assert exit_status(cause) == EXIT_TRANSIENT


def test_root_cause_of_an_error_of_unknown_kind_names_its_type():
    from wallaby.control.worker import _root_cause

    raised = _run_failing_sink("snapshot", KeyError("lost_column"))
    cause, line = _root_cause(raised)
    assert isinstance(cause, KeyError) and line == "KeyError: 'lost_column'" and exit_status(cause) == 1
    cause, line = _root_cause(RuntimeError("first line\n  second line"))
    assert line == "RuntimeError: first line; second line"
    cause, line = _root_cause(ConfigError("flow 'f'", [FieldProblem("a", "x"), FieldProblem("b", "y")]))
    assert line.count("\n") == 2  # every problem on its own line


def test_panic_filter_drops_the_report_and_keeps_everything_else():
    from wallaby.control.panicfilter import PanicFilter

    text = (b'{"level": "info", "msg": "source ready"}\n'
            b"thread '<unnamed>' panicked at src/outputs.rs:364:37:\n"
            b"Box<dyn Any>\n"
            b"stack backtrace:\n"
            b"%4|1796535265.695|GETPID|rdkafka#producer-2| [thrd:main]: written by another thread meanwhile\n"
            b"   0: std::panicking::begin_panic\n"
            b'{"level": "warning", "msg": "so is this"}\n'
            b"   1: bytewax::timely::EagerNotificator<T,D>::for_each\n"
            b"             at /rustc/library/std/src/panicking.rs:12:5\n"
            b"note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n"
            b"\n"
            b'{"level": "warning", "msg": "after"}\n'
            b"thread 'timely:work-0' panicked at src/inputs.rs:446:37:\n"
            b"Box<dyn Any>\n"
            b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
            b"wallaby-worker: destination 'duck': cannot create the directory of /x/y.duckdb\n"
            b"   0: an indented line outside a report stays\n"
            b"\n")
    f = PanicFilter()
    kept = [ln for ln in text.splitlines(keepends=True) if f.keep(ln)]
    assert kept == [b'{"level": "info", "msg": "source ready"}\n',
                    b"%4|1796535265.695|GETPID|rdkafka#producer-2| [thrd:main]: written by another thread meanwhile\n",
                    b'{"level": "warning", "msg": "so is this"}\n',
                    b'{"level": "warning", "msg": "after"}\n',
                    b"wallaby-worker: destination 'duck': cannot create the directory of /x/y.duckdb\n",
                    b"   0: an indented line outside a report stays\n", b"\n"]


def test_panic_filter_process_passes_lines_through_until_the_pipe_closes(tmp_path):
    """The filter as the worker runs it: a child process between fd 2 and the real stderr."""
    script = ("import os, sys\n"
              "from wallaby.control.panicfilter import filtered_stderr\n"
              "with filtered_stderr():\n"
              "    print('before', file=sys.stderr, flush=True)\n"
              "    os.write(2, b\"thread '<unnamed>' panicked at src/outputs.rs:1:2:\\nBox<dyn Any>\\n\")\n"
              "    os.write(2, b'note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\\n')\n"
              "    print('after', file=sys.stderr, flush=True)\n"
              "print('restored', file=sys.stderr, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stderr == "before\nafter\nrestored\n", out.stderr


# -- the API server acts on the exit status ---------------------------------------------------------------------

class FakeDispatcher:
    """Our own dispatcher's interface, recording launches (no processes)."""

    def __init__(self):
        self.launches: list[tuple[str, int]] = []
        self.launched = threading.Event()

    def launch(self, flow_id: str, generation: int, *, once: bool = False):
        self.launches.append((flow_id, generation))
        self.launched.set()

    def running(self, flow_id: str):
        return None

    def stop(self, flow_id: str, timeout=None) -> bool:
        return False

    def close(self, timeout=None) -> None:
        pass


@pytest.fixture
def manager(tmp_path):
    from tests.flows import flow_spec
    from wallaby.control.api.manager import FlowManager
    from wallaby.state.checkpoints import Checkpoints
    from wallaby.state.sqldb import SQLiteDatabase

    checkpoints = Checkpoints(SQLiteDatabase(tmp_path / "store.db"))
    m = FlowManager(checkpoints, env={"WALLABY_WORKER_MAX_RESTARTS": "3"}, dispatcher=FakeDispatcher())
    spec = flow_spec(f"postgresql://u:{SECRET}@127.0.0.1:1/x", flow_id="f", duckdb_path=tmp_path / "f.duckdb")
    m.store.create(spec.id, spec.name, spec.model_dump(mode="json"))
    m.start("f")
    yield m
    checkpoints.close()


@pytest.mark.parametrize(("returncode", "restarted"), [
    (EXIT_TRANSIENT, True),  # transient: restarted
    (-9, True),  # kill -9 / the OOM killer
    (-11, True),  # a crash
    (EXIT_PERMANENT, False),  # permanent: FAILED at once with the reason
    (EXIT_CONFIG, False),
    (0, False),  # a running flow does not stop by itself
    (120, False),  # not one of ours: permanent
])
def test_worker_exited_restarts_only_transient_failures_and_signals(manager, returncode, restarted):
    from wallaby.control.api.dispatch import WorkerExit
    from wallaby.state.flowstore import FAILED, RUNNING

    gen = manager.store.get("f").generation
    reason = "destination 'duck': cannot create the directory of /x/y.duckdb"
    manager.dispatcher.launched.clear()
    manager.worker_exited(WorkerExit("f", gen, False, returncode, reason, False))
    flow = manager.store.get("f")
    if restarted:
        assert flow.state == RUNNING and flow.state_reason == f"restarting after: {reason}"
        assert manager.dispatcher.launched.wait(30), "the worker was not launched again"
        assert manager.store.get("f").generation == gen + 1
    else:
        assert flow.state == FAILED and flow.generation == gen and manager.dispatcher.launches == [("f", gen)]
        want = "the worker stopped by itself" if returncode == 0 else reason
        assert flow.state_reason == want


def test_worker_exited_ignores_fenced_stopped_and_stale_workers(manager):
    from wallaby.control.api.dispatch import WorkerExit
    from wallaby.state.flowstore import RUNNING

    gen = manager.store.get("f").generation
    for ex in (WorkerExit("f", gen, False, EXIT_FENCED, "fenced", False),
               WorkerExit("f", gen, False, EXIT_PERMANENT, "stopped by us", True),
               WorkerExit("f", gen - 1, False, EXIT_PERMANENT, "an older generation", False)):
        manager.worker_exited(ex)
        assert manager.store.get("f").state == RUNNING and manager.store.get("f").generation == gen
    assert manager.dispatcher.launches == [("f", gen)]


def test_the_reason_is_the_workers_report(tmp_path):
    from wallaby.control.api.dispatch import last_error

    log = tmp_path / "f.log"
    log.write_text('{"level": "info", "msg": "source ready"}\n'
                   "wallaby-worker: flow 'f' has 2 problems:\n"
                   "  - destinations[0].options.dsn: DuckDB file '/x/y.duckdb': is a directory\n"
                   f"  - source.options.dsn: postgresql://u:{SECRET}@h/db is not reachable\n")
    reason = last_error(log)
    assert reason.startswith("flow 'f' has 2 problems: destinations[0].options.dsn: DuckDB file '/x/y.duckdb'")
    assert reason.endswith("postgresql://u:***@h/db is not reachable") and SECRET not in reason
    with log.open("a") as f:
        f.write("--- worker generation 2\nwallaby-worker: destination 'k': cannot reach brokers 127.0.0.1:9\n")
    assert last_error(log) == "destination 'k': cannot reach brokers 127.0.0.1:9"


def test_transient_failures_give_up_after_the_restart_budget(manager):
    from wallaby.control.api.dispatch import WorkerExit
    from wallaby.state.flowstore import FAILED

    manager.max_restarts = 1
    gen = manager.store.get("f").generation
    manager.worker_exited(WorkerExit("f", gen, False, EXIT_TRANSIENT, "broker down", False))
    assert manager.dispatcher.launched.wait(30)
    gen = manager.store.get("f").generation
    manager.worker_exited(WorkerExit("f", gen, False, EXIT_TRANSIENT, "broker down", False))
    flow = manager.store.get("f")
    assert flow.state == FAILED and flow.state_reason == "broker down (gave up after 1 restarts)"


# -- end to end: the worker ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_password(dsn: str) -> str:
    assert dsn.startswith("postgresql://postgres@")
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


@pytest.fixture
def items(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    return pgdb


def _flow(tmp_path: Path, dsn: str, flow_id: str, destination: dict) -> Path:
    spec = {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": _with_password(dsn), "slot": f"{flow_id}_slot",
                                   "publication": f"{flow_id}_pub", "publication_tables": "public.items",
                                   "batch_timeout": "50ms", "status_interval": "1s"}},
            "destinations": [destination]}
    path = tmp_path / f"{flow_id}.json"
    path.write_text(json.dumps(spec))
    return path


def _worker(tmp_path: Path, flow: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALLABY_", "AWS_"))}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_EPOCH_INTERVAL="300ms",
               PYTHONPATH=str(ROOT), RUST_BACKTRACE="1", AWS_EC2_METADATA_DISABLED="true")
    return subprocess.run([*WORKER, "-flow-file", str(flow), "-max-empty-reads", "2"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)


def _fail(tmp_path: Path, dsn: str, flow: Path) -> subprocess.CompletedProcess:
    """Run the worker until the destination fails: a destination is built when the first change reaches it, so a
    first run that finds nothing to do (it creates the slot) is followed by a change and a second run."""
    out = _worker(tmp_path, flow)
    if out.returncode == 0:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("INSERT INTO items VALUES (1, 'first')")
        out = _worker(tmp_path, flow)
    return out


def _assert_reported(out: subprocess.CompletedProcess, status: int, *names: str) -> str:
    """The report is the end of stderr: one line (a ConfigError: its head line, then one line per problem)."""
    assert out.returncode == status, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("wallaby-worker:")]
    assert len(starts) == 1, out.stderr[-3000:]
    report = lines[starts[0]:]
    if status == EXIT_CONFIG:
        assert all(ln.startswith("  - ") for ln in report[1:]) and len(report) >= 2, report
    else:
        assert len(report) == 1, report
    text = "\n".join(report)
    for name in names:
        assert name in text, text
    for bad in FORBIDDEN:
        assert bad not in out.stderr, (bad, out.stderr[-3000:])
    return text


def test_duckdb_path_that_cannot_be_created(tmp_path, items):
    """Found before anything is created (the preflight): a bad flow spec, exit 2, naming the field and the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "sub" / "x.duckdb"
    flow = _flow(tmp_path, items, "tx_duck", {"name": "duck", "type": "duckdb", "options": {"dsn": str(path)}})
    out = _worker(tmp_path, flow)
    _assert_reported(out, EXIT_CONFIG, "destinations[0].options.dsn", str(path), "is a file, not a directory")
    with psycopg.connect(items) as c:
        assert c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tx_duck_slot'").fetchone() \
            == (0,)


def test_duckdb_file_that_is_not_a_database(tmp_path, items):
    """Found by the sink when bytewax builds it (after the preflight passed): unwrapped from bytewax's
    "error init StatefulSink", permanent, exit 1, naming the destination and the path."""
    path = tmp_path / "garbage.duckdb"
    path.write_bytes(b"this is no DuckDB database\n" * 512)
    flow = _flow(tmp_path, items, "tx_duck_bad", {"name": "duck", "type": "duckdb", "options": {"dsn": str(path)}})
    line = _assert_reported(_fail(tmp_path, items, flow), EXIT_PERMANENT, "destination 'duck'", str(path))
    assert "cannot open DuckDB" in line


def test_kafka_broker_nobody_listens_on(tmp_path, items):
    """Transient (exit 75) wherever it is found (the preflight asks the brokers first), naming the brokers."""
    broker = f"127.0.0.1:{_free_port()}"
    flow = _flow(tmp_path, items, "tx_kafka", {"name": "events", "type": "kafka",
                                                "options": {"brokers": broker, "topic": "orders"}})
    _assert_reported(_fail(tmp_path, items, flow), EXIT_TRANSIENT, "destination 'events'", broker)


def test_kafka_topic_the_brokers_refuse(tmp_path, items, kafka_broker):  # noqa: F811
    """A live broker that refuses the topic (an invalid name): found by the sink, classified by librdkafka's error
    code as permanent, exit 1, naming the topic and the brokers."""
    flow = _flow(tmp_path, items, "tx_kafka_topic", {"name": "events", "type": "kafka", "options": {
        "brokers": kafka_broker.bootstrap, "topic": "no spaces allowed!"}})
    _assert_reported(_fail(tmp_path, items, flow), EXIT_PERMANENT, "destination 'events'", kafka_broker.bootstrap,
                     "'no spaces allowed!'")


def test_s3_bucket_that_does_not_exist(tmp_path, items, s3_server):  # noqa: F811
    """Found before anything is created (the preflight's HeadBucket): exit 2, naming the bucket and the endpoint."""
    bucket = "no-such-bucket-" + uuid.uuid4().hex[:8]
    flow = _flow(tmp_path, items, "tx_s3", {"name": "lake", "type": "s3", "options": {
        "bucket": bucket, "endpoint": s3_server, "force_path_style": "true", "region": "us-east-1",
        "access_key": "test", "secret_key": SECRET}})
    line = _assert_reported(_worker(tmp_path, flow), EXIT_CONFIG, bucket, s3_server)
    assert "does not exist" in line


def test_s3_state_object_the_sink_cannot_read(tmp_path, items, s3_server):  # noqa: F811
    """Found by the sink when bytewax builds it: permanent, exit 1, naming the destination, bucket and key."""
    import boto3

    bucket = "tx-state-" + uuid.uuid4().hex[:8]
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="_wallaby/tx_s3_state/lake.json", Body=b"not json")
    flow = _flow(tmp_path, items, "tx_s3_state", {"name": "lake", "type": "s3", "options": {
        "bucket": bucket, "endpoint": s3_server, "force_path_style": "true", "region": "us-east-1",
        "access_key": "test", "secret_key": SECRET}})
    _assert_reported(_fail(tmp_path, items, flow), EXIT_PERMANENT, "destination 'lake'",
                     f"s3://{bucket}/_wallaby/tx_s3_state/lake.json")


def test_http_receiver_answering_500(tmp_path, items, receiver):  # noqa: F811
    url = receiver.url("/hook", auth=f"hooker:{SECRET}")
    flow = _flow(tmp_path, items, "tx_http", {"name": "hook", "type": "http", "options": {
        "url": url, "payload_mode": "record_json", "max_retries": "1", "backoff_base": "10ms",
        "backoff_max": "20ms", "timeout": "5s"}})
    receiver.fail_next(1000, 500, "internal trouble")
    line = _assert_reported(_fail(tmp_path, items, flow), EXIT_TRANSIENT, "destination 'hook'",
                            f"http://127.0.0.1:{receiver.port}/hook")
    assert "HTTP 500" in line and receiver.statuses()[:2] == [500, 500]  # the first try and its one retry


def test_http_receiver_that_is_gone(tmp_path, items):
    gone = Receiver().start()
    port = gone.port
    gone.stop()  # nothing listens there now
    flow = _flow(tmp_path, items, "tx_http_gone", {"name": "hook", "type": "http", "options": {
        "url": f"http://127.0.0.1:{port}/hook", "max_retries": "0", "timeout": "5s"}})
    line = _assert_reported(_fail(tmp_path, items, flow), EXIT_TRANSIENT, "destination 'hook'",
                            f"http://127.0.0.1:{port}/hook")
    assert "connection failed" in line


def test_source_database_that_does_not_exist(tmp_path, pg):
    missing = "no_such_db_" + uuid.uuid4().hex[:6]
    flow = _flow(tmp_path, pg.dsn(missing), "tx_nodb", {"name": "duck", "type": "duckdb",
                                                         "options": {"dsn": str(tmp_path / "x.duckdb")}})
    out = _worker(tmp_path, flow)
    line = _assert_reported(out, EXIT_PERMANENT, f"database '{missing}' does not exist on 127.0.0.1:{pg.port}")
    assert "reachable" not in line
    assert not (tmp_path / "x.duckdb").exists()


def test_stderr_keeps_flowing_while_the_worker_runs(tmp_path, items):
    """The filter sits between the worker and its stderr for the whole run: log lines arrive while it runs (not
    only at its end), and a clean stop still exits 0 with nothing lost."""
    flow = _flow(tmp_path, items, "tx_live", {"name": "duck", "type": "duckdb",
                                               "options": {"dsn": str(tmp_path / "live.duckdb")}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_EPOCH_INTERVAL="300ms",
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # arrives while the worker runs
        assert first.strip() and proc.poll() is None, first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(items) as c:
                if c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'tx_live_slot'").fetchone() \
                        == (True,):
                    break
            time.sleep(0.2)
        proc.terminate()
        rest = proc.stderr.read()
        assert proc.wait(60) == 0, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "wallaby-worker:" not in rest and "flow tx_live: stopped" in rest, rest[-3000:]


def test_panic_report_split_by_another_writer_is_dropped():
    """Under load another thread's write can land inside Rust's report line: the report is still dropped."""
    f = PanicFilter()
    lines = [b'{"msg": "a log line"}thread \'', b"<unnamed>' panicked at src/outputs.rs:321:49:", b"Box<dyn Any>",
             b"wallaby-worker: the real error"]
    assert [ln for ln in lines if f.keep(ln)] == [lines[0], lines[3]]
