"""DBOS scheduling (USAGE.md "DBOS Scheduling", docs/workflows.md): scheduled catch-up runs of running flows.

With ``WALLABY_DBOS_ENABLED=true`` the API server launches DBOS (the ``dbos`` package) with its system database on
the flow store's Postgres (schema ``dbos`` of the same database), or, when the flow store is SQLite, in a SQLite
file beside it (``dbos.sqlite``). It registers the queue ``WALLABY_DBOS_QUEUE`` (default ``wallaby``) and, when
``WALLABY_DBOS_SCHEDULE`` is set (a 6-field cron with seconds: ``*/10 * * * * *``), a DBOS schedule whose every tick
enqueues one run per flow in ``running`` state on that queue.

A run is a durable DBOS workflow with one step: claim a new generation of the flow, launch its worker through the API
server's dispatcher with ``-max-empty-reads`` (``WALLABY_DBOS_MAX_EMPTY_READS``, else
``WALLABY_RUN_ONCE_EMPTY_READS``; with DBOS on, RunFlowOnce's workers stop after as many, as the Go build's do; a
Kubernetes Job with ``WALLABY_K8S_ENABLED=true``, where ``WALLABY_K8S_JOB_MAX_EMPTY_READS`` wins) and wait for its
exit. A transient failure (exit 75, a death by signal) fails the step, which DBOS retries up to
``WALLABY_DBOS_MAX_RETRIES`` times (default 3) with back-off; the same number bounds the workflow's recovery attempts.
A permanent one (exit 1 or 2) fails the flow, as the API server does for a streaming worker, and is not retried. A
server killed mid-run leaves the workflow PENDING in the system database: the next start with the same executor id
(``WALLABY_DBOS_EXECUTOR_ID``, default ``wallaby``) and the same application version (this wallaby's version) recovers
it and runs the step again, under a new generation (the orphaned worker of the killed server is fenced off by it).

Running flows vs fencing: with a schedule, the schedule is what runs a running flow. The API server starts no
streaming worker for it (StartFlow, ResumeFlow, UpdateFlow and the relaunch at server start claim a generation and
launch nothing: the next tick runs the flow); so a run never fights a streaming worker of its flow for the slot,
and the generation each run claims fences off only what must go (an orphan of a killed server). A run still skips a
flow whose worker is alive (the previous run, RunFlowOnce, a backfill) and a flow that is no longer running when the
run starts. Without a schedule, flows stream as usual and DBOS only recovers runs left from an earlier schedule.

At most one run per flow per tick: a run's workflow id is ``wallaby-run:<flow id>:<tick time>`` (enqueueing it
again is a no-op), and its deduplication id is the flow id, so a tick that finds the flow's previous run still
enqueued or running enqueues nothing for it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from wallaby.core.errors import EXIT_CONFIG, EXIT_FENCED, EXIT_OK, EXIT_TRANSIENT, ConfigError, FieldProblem, redact_dsn
from wallaby.core.options import did_you_mean, parse_bool
from wallaby.core.settings import SettingsError, count, log_level_or_default
from wallaby.state.flowstore import RUNNING

log = logging.getLogger("wallaby.dbos")

ENABLED = "WALLABY_DBOS_ENABLED"
APP = "WALLABY_DBOS_APP"
QUEUE = "WALLABY_DBOS_QUEUE"
SCHEDULE = "WALLABY_DBOS_SCHEDULE"
MAX_RETRIES = "WALLABY_DBOS_MAX_RETRIES"
EXECUTOR_ID = "WALLABY_DBOS_EXECUTOR_ID"
MAX_EMPTY_READS = "WALLABY_DBOS_MAX_EMPTY_READS"
VARIABLES = (ENABLED, APP, QUEUE, SCHEDULE, MAX_RETRIES, EXECUTOR_ID, MAX_EMPTY_READS)

SCHEDULE_NAME = "wallaby-catch-up"
RUN_PREFIX = "wallaby-run:"
CRON_FORMAT = "a 6-field cron with seconds first: second minute hour day month weekday, like */10 * * * * *"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class DBOSSettings:
    enabled: bool = False
    app: str = "wallaby"
    queue: str = "wallaby"
    schedule: str | None = None
    max_retries: int = 3
    executor_id: str = "wallaby"
    max_empty_reads: int | None = None  # None: WALLABY_RUN_ONCE_EMPTY_READS


def _name(text: str) -> str:
    text = text.strip()
    if not _NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a name (letters, digits, '.', '_' and '-', at most 100)")
    return text


def parse_schedule(text: str) -> str:
    """A 6-field cron with seconds (``*/10 * * * * *``), or ValueError."""
    from croniter import croniter

    fields = text.split()
    if len(fields) != 6:
        raise ValueError(f"{text!r} has {len(fields)} field(s), not 6 ({CRON_FORMAT})")
    expr = " ".join(fields)
    if not croniter.is_valid(expr, second_at_beginning=True):
        raise ValueError(f"{text!r} is not a valid cron ({CRON_FORMAT})")
    return expr


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a boolean (use true or false)") from None


_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    ENABLED: ("enabled", _bool),
    APP: ("app", _name),
    QUEUE: ("queue", _name),
    SCHEDULE: ("schedule", parse_schedule),
    MAX_RETRIES: ("max_retries", count(0)),
    EXECUTOR_ID: ("executor_id", _name),
    MAX_EMPTY_READS: ("max_empty_reads", count(1)),  # a run must end: at least 1
}


def load(environ: Mapping[str, str] | None = None) -> DBOSSettings:
    """The ``WALLABY_DBOS_*`` settings of ``environ`` (default ``os.environ``), or one :class:`SettingsError`
    naming every bad variable (exit 2 at server start, as :func:`wallaby.core.settings.load`)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    for var in sorted(k for k, v in env.items() if k.startswith("WALLABY_DBOS_") and v.strip()):
        if var not in _PARSERS:
            problems.append(FieldProblem(var, f"not a DBOS setting (those are {', '.join(VARIABLES)})"
                                              f"{did_you_mean(var, VARIABLES)}"))
            continue
        field, parse = _PARSERS[var]
        try:
            values[field] = parse(env[var])
        except ValueError as exc:
            problems.append(FieldProblem(var, str(exc)))
    if not values.get("enabled", False) and ENABLED not in {p.path for p in problems}:
        problems += [FieldProblem(var, f"set, but {ENABLED} is not true: DBOS is off and this would be ignored;"
                                       f" set {ENABLED}=true or unset it")
                     for var in VARIABLES if var != ENABLED and (env.get(var) or "").strip()]
    if problems:
        raise SettingsError(problems)
    return DBOSSettings(**values)


def system_database_url(db: Any, environ: Mapping[str, str] | None = None) -> str:
    """DBOS's system database: the flow store's Postgres database (DBOS keeps to its schema ``dbos``), or a SQLite
    file beside the flow store's SQLite file."""
    env = os.environ if environ is None else environ
    if getattr(db, "dialect", "") == "postgres":
        dsn = (env.get("WALLABY_CHECKPOINT_DSN") or "").strip() or (env.get("WALLABY_POSTGRES_DSN") or "").strip()
        if re.match(r"postgres(ql)?(\+\w+)?://", dsn):
            return dsn
        import psycopg.conninfo
        import sqlalchemy as sa

        parts = psycopg.conninfo.conninfo_to_dict(dsn)
        port = parts.pop("port", None)
        url = sa.engine.URL.create(
            "postgresql+psycopg", username=parts.pop("user", None), password=parts.pop("password", None),
            host=parts.pop("host", None), port=int(port) if port else None, database=parts.pop("dbname", None),
            query={k: str(v) for k, v in parts.items()})
        return url.render_as_string(hide_password=False)
    path = Path(getattr(db, "path", "") or "~/.wallaby/checkpoints.db").expanduser().resolve()
    return f"sqlite:///{path.with_name('dbos.sqlite')}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"wallaby-{version('wallaby')}"
    except PackageNotFoundError:
        return "wallaby-dev"


class RunFailed(Exception):
    """A run's worker failed: the step is retried (up to WALLABY_DBOS_MAX_RETRIES) unless the failure is
    ``permanent`` (the flow is FAILED then)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class _Dispatcher:
    """The manager's dispatcher, seen through the scheduler: with a schedule, a streaming launch launches nothing
    (the schedule runs the flow); everything else is the dispatcher's."""

    def __init__(self, inner: Any, owner: Scheduler):
        self._inner = inner
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def launch(self, flow_id: str, generation: int, *, once: bool = False, backfill: list[str] | None = None):
        if not once and backfill is None and self._owner.settings.schedule:
            log.info("flow %s: runs on the DBOS schedule %r (generation %d): each tick runs a worker until it has"
                     " caught up", flow_id, self._owner.settings.schedule, generation, extra={"flow": flow_id})
            return None
        return self._inner.launch(flow_id, generation, once=once, backfill=backfill)

    def close(self, timeout: float | None = None) -> None:
        self._owner.closing.set()  # no run launches a worker from now on
        self._inner.close(timeout)


_active: Scheduler | None = None
_registered: dict[str, Any] = {}


def _scheduler() -> Scheduler:
    if _active is None:
        raise RuntimeError("DBOS scheduling is not started in this process")
    return _active


def _tick(scheduled_at: datetime, context: Any) -> int:
    """The scheduled workflow: one run per running flow, on the queue."""
    return _scheduler().enqueue_runs(scheduled_at)


def _catch_up(flow_id: str, tick: str) -> str:
    """A run: the flow's worker once, until it has caught up (a durable workflow)."""
    return _scheduler().catch_up(flow_id, tick)


class Scheduler:
    """DBOS in the API server: :meth:`start` after the manager exists (and has relaunched its flows), :meth:`stop`
    after the server has stopped."""

    def __init__(self, manager: Any, settings: DBOSSettings, environ: Mapping[str, str] | None = None):
        self.manager = manager
        self.settings = settings
        self.env = dict(os.environ if environ is None else environ)
        self.closing = threading.Event()
        self._waiters: dict[tuple[str, int], tuple[threading.Event, list]] = {}
        self._lock = threading.Lock()
        self._inner = manager.dispatcher
        if settings.max_empty_reads is not None:  # every run-once worker: the scheduled runs and RunFlowOnce
            self._inner.run_once_empty_reads = settings.max_empty_reads
        self._on_exit = self._inner.on_exit
        self._inner.on_exit = self._worker_exited
        manager.dispatcher = _Dispatcher(self._inner, self)
        self._launched = False
        self._ready = threading.Event()

    # -- DBOS --------------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        global _active
        from dbos import DBOS

        _active = self
        s = self.settings
        if not _registered:  # once per process: DBOS's registry is global
            _registered["tick"] = DBOS.workflow(name="wallaby.scheduled_tick")(_tick)
        if "run" not in _registered:
            _registered["run"] = DBOS.workflow(name="wallaby.catch_up", max_recovery_attempts=s.max_retries)(
                _catch_up)
        url = system_database_url(self.manager.store.db, self.env)
        try:
            self._launch(url)
        except Exception as exc:
            self.manager.shutdown()
            raise ConfigError("DBOS", [FieldProblem(ENABLED, f"DBOS could not start on {redact_dsn(url)}:"
                                                             f" {redact_dsn(str(exc))}")]) from None
        where = "SQLite " + url.removeprefix("sqlite:///") if url.startswith("sqlite") else "the flow store's Postgres"
        log.info("DBOS: app %s, executor %s, version %s, queue %s, system database on %s; %s", s.app, s.executor_id,
                 _version(), s.queue, where,
                 f"schedule {s.schedule!r}: one run per running flow each tick" if s.schedule else "no schedule")
        return self

    def _launch(self, url: str) -> None:
        from dbos import DBOS

        s = self.settings
        DBOS(config={
            "name": s.app,
            "system_database_url": url,
            "application_version": _version(),
            "executor_id": s.executor_id,
            # DBOS's own log (its migrations, queues): warnings and errors unless WALLABY_LOG_LEVEL=debug
            "log_level": "DEBUG" if log_level_or_default(self.env) == "debug" else "WARNING",
            "scheduler_polling_interval_sec": 5.0,
        })
        DBOS.launch()  # recovers the runs this executor left PENDING
        self._launched = True
        self.queue = DBOS.register_queue(s.queue, on_conflict="always_update")
        self._ready.set()
        if s.schedule:
            DBOS.apply_schedules([{"schedule_name": SCHEDULE_NAME, "workflow_fn": _registered["tick"],
                                   "schedule": s.schedule}])
        elif DBOS.get_schedule(SCHEDULE_NAME) is not None:
            DBOS.delete_schedule(SCHEDULE_NAME)

    def stop(self, timeout: int = 10) -> None:
        """Stop DBOS (after the server and its workers: an interrupted run has recorded its end by then)."""
        global _active
        self.closing.set()
        if self._launched:
            from dbos import DBOS

            DBOS.destroy(workflow_completion_timeout_sec=timeout)
            self._launched = False
        _active = None

    # -- the scheduled tick -----------------------------------------------------------------------
    def running_flows(self) -> list[str]:
        return [f.id for f in self.manager.store.list() if f.state == RUNNING]

    def enqueue_runs(self, scheduled_at: datetime) -> int:
        from croniter import croniter
        from dbos import DBOS, SetEnqueueOptions, SetWorkflowID
        from dbos import error as dbos_error

        if not self._ready.wait(60):  # a tick recovered at launch, before the queue is registered
            raise RuntimeError("the DBOS queue is not registered yet")
        schedule = self.settings.schedule
        if not schedule or not croniter.match(schedule, scheduled_at, second_at_beginning=True):
            # DBOS keeps schedules in its system database: the one of an earlier start (another
            # WALLABY_DBOS_SCHEDULE, or none now) fires from launch until this start replaces or deletes it
            log.info("DBOS tick at %s is not of the schedule %s (an earlier one's, fired before it was replaced):"
                     " no runs", scheduled_at.isoformat(), schedule or "(none)")
            return 0
        flows = DBOS.run_step({"name": "running_flows"}, self.running_flows)
        enqueued = 0
        for flow_id in flows:
            workflow_id = f"{RUN_PREFIX}{flow_id}:{scheduled_at.isoformat()}"
            try:
                with SetWorkflowID(workflow_id), SetEnqueueOptions(deduplication_id=flow_id):
                    self.queue.enqueue(_registered["run"], flow_id, scheduled_at.isoformat())
                enqueued += 1
            except dbos_error.DBOSQueueDeduplicatedError:
                log.debug("flow %s: its previous DBOS run is not finished; none added for the tick at %s", flow_id,
                         scheduled_at.isoformat(), extra={"flow": flow_id})
        return enqueued

    # -- a run --------------------------------------------------------------------------------------
    def catch_up(self, flow_id: str, tick: str) -> str:
        from dbos import DBOS

        retries = self.settings.max_retries
        return DBOS.run_step({"name": "run_worker", "retries_allowed": retries > 0, "max_attempts": retries + 1,
                              "interval_seconds": 1.0, "backoff_rate": 2.0,
                              "should_retry": lambda exc: isinstance(exc, RunFailed) and not exc.permanent},
                             self.run_worker, flow_id, tick)

    def run_worker(self, flow_id: str, tick: str) -> str:
        """Claim a generation, launch the flow's worker with -max-empty-reads, wait for its exit."""
        manager = self.manager
        with manager._lock(flow_id):  # no start/pause/stop of the flow in between
            if self.closing.is_set():
                return "skipped: the API server is stopping"
            try:
                flow = manager.store.get(flow_id)
            except Exception:
                return "skipped: the flow is gone"
            if flow.state != RUNNING:
                return f"skipped: the flow is {flow.state}"
            if self._inner.running(flow_id) is not None:
                return "skipped: a worker of the flow is running"
            gen = manager.store.claim(flow_id)  # fences off any older worker (an orphan of a killed server)
            done = threading.Event()
            result: list = []
            with self._lock:
                self._waiters[(flow_id, gen)] = (done, result)
            try:
                self._inner.launch(flow_id, gen, once=True)
            except OSError as exc:
                with self._lock:
                    self._waiters.pop((flow_id, gen), None)
                raise RunFailed(f"flow {flow_id}: cannot launch a worker: {exc}") from None
        log.info("flow %s: DBOS run for the tick at %s: worker generation %d launched", flow_id, tick, gen,
                 extra={"flow": flow_id})
        while not done.wait(1.0):
            if self.closing.is_set() and self._inner.running(flow_id) is None and not done.wait(5.0):
                return f"stopped (generation {gen}): the API server stopped"
        ex = result[0]
        if ex.stopped_by_us:
            return f"stopped (generation {gen})"
        if ex.returncode == EXIT_OK:
            log.info("flow %s: DBOS run for the tick at %s: caught up (generation %d)", flow_id, tick, gen,
                     extra={"flow": flow_id})
            return f"caught up (generation {gen})"
        if ex.returncode == EXIT_FENCED:
            return f"fenced off by a newer generation (generation {gen})"
        log.warning("flow %s: DBOS run for the tick at %s: worker generation %d exited with %s: %s", flow_id, tick,
                    gen, ex.returncode, ex.reason, extra={"flow": flow_id})
        failure = f"flow {flow_id}: worker generation {gen} exited with {ex.returncode}: {ex.reason}"
        if ex.returncode == EXIT_TRANSIENT or ex.returncode < 0:  # away or busy, or killed: the step is retried
            raise RunFailed(failure)
        # permanent (1, 2, or none of ours): as for a streaming worker, the flow fails and no retry can help
        with manager._lock(flow_id):
            flow = manager.store.get(flow_id)
            if flow.state == RUNNING and flow.generation == gen:
                default = "bad flow spec" if ex.returncode == EXIT_CONFIG else f"worker exited with {ex.returncode}"
                manager._fail(flow, ex.reason or default)
        raise RunFailed(failure, permanent=True)

    def _worker_exited(self, ex: Any) -> None:
        try:
            self._on_exit(ex)  # the manager's judgement first (a failed run-once is recorded on the flow)
        finally:
            with self._lock:
                waiter = self._waiters.pop((ex.flow_id, ex.generation), None)
            if waiter is not None:
                waiter[1].append(ex)
                waiter[0].set()


def attach(manager: Any, environ: Mapping[str, str] | None = None) -> Scheduler | None:
    """DBOS scheduling for the API server's ``manager`` when ``WALLABY_DBOS_ENABLED=true`` (None when off), before
    the server starts (with a schedule, the relaunch of running flows then launches no streaming worker);
    :meth:`Scheduler.start` it once the server has started. A bad ``WALLABY_DBOS_*`` value is a
    :class:`SettingsError` naming it (exit 2)."""
    tuned = load(environ)
    if not tuned.enabled:
        return None
    return Scheduler(manager, tuned, environ)


__all__ = ["DBOSSettings", "RunFailed", "Scheduler", "attach", "load", "parse_schedule", "system_database_url"]
