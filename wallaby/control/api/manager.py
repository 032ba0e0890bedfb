"""Flow lifecycle: what the FlowService calls do, without gRPC.

State lives in the flow store; workers are launched and stopped through the
dispatcher. A state change is written before the worker is touched, so a
worker's exit that follows is read in the light of the new state (paused or
stopped: expected; still running: it died, see :meth:`FlowManager.worker_exited`).

A worker that ends while its flow is RUNNING is judged by its exit status
(``wallaby.control.worker``'s docstring has the table; ``wallaby.core.errors.EXIT_*``):

- 75 (a transient failure: the source or a destination away or busy) or a death
  by signal (negative return code: kill -9, the OOM killer, a crash): restarted,
  by the flow's ``config.give_up_policy``:

  - ``never``: with back-off (1 s doubling to 30 s), for ever;
  - ``on_retry_exhaustion`` (default): up to ``WALLABY_WORKER_MAX_RESTARTS``
    times (default 3) within ten minutes, then FAILED with the worker's last error;
- 1 (a permanent failure: credentials, permissions, something missing, a
  refused payload, an error of unknown kind) or 2 (a bad flow spec): FAILED at
  once with the worker's reason, never restarted: the same start fails the same way;
- 0 (it stopped by itself): FAILED, a running flow has no end;
- 3 (fenced off by a newer generation): simply gone.

Any other status (none of ours) counts as permanent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

from dataflows.preflight import preflight
from dataflows.staging import resolve_flow_staging
from wallaby.control.api import sourceops
from wallaby.control.api.convert import check_wire_format
from wallaby.control.api.dispatch import LocalDispatcher, WorkerExit
from wallaby.control.api.kubernetes import KubernetesDispatcher
from wallaby.core import settings
from wallaby.core.changes import format_lsn
from wallaby.core.errors import (
    EXIT_CONFIG,
    EXIT_FENCED,
    EXIT_OK,
    EXIT_TRANSIENT,
    ConfigError,
    FencedError,
    FieldProblem,
    IllegalStateError,
    SourceError,
    TransientSinkError,
)
from wallaby.core.options import SOURCE_OPTIONS, did_you_mean
from wallaby.core.secrets import UnresolvedReference, parse_options
from wallaby.core.spec import FlowSpec
from wallaby.state.checkpoints import Checkpoint, Checkpoints
from wallaby.state.flowstore import FAILED, PAUSED, RUNNING, STOPPING, FlowStore, StoredFlow

log = logging.getLogger("wallaby.api")

RESTART_WINDOW = 600.0


class FlowManager:
    def __init__(self, checkpoints: Checkpoints, env: Mapping[str, str] | None = None,
                 dispatcher: LocalDispatcher | KubernetesDispatcher | None = None):
        self.env = dict(os.environ if env is None else env)
        # Every WALLABY_* setting is checked at server start (WALLABY_DBOS_* by wallaby.control.scheduling): a bad
        # value refuses to start (exit 2, one line).
        tuned = settings.load(self.env)
        self.max_restarts = tuned.worker_max_restarts
        self.checkpoints = checkpoints
        self.store: FlowStore = checkpoints.flow_store
        if dispatcher is None:  # WALLABY_K8S_ENABLED=true: a Kubernetes Job per flow run, else a local process
            dispatcher = (KubernetesDispatcher(self.worker_exited, tuned, self.env) if tuned.k8s_enabled
                          else LocalDispatcher(self.worker_exited))
        self.dispatcher = dispatcher
        self._restarts: dict[str, list[float]] = {}
        self._backfills: dict[str, tuple[int, bool]] = {}  # flow -> (the backfill worker's generation, resume after)
        self._flow_locks: dict[str, threading.RLock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, flow_id: str) -> threading.RLock:
        with self._locks_lock:
            return self._flow_locks.setdefault(flow_id, threading.RLock())

    # -- definitions ---------------------------------------------------------------------------
    def _check_against_source(self, spec: FlowSpec) -> None:
        """The preflight every entry point runs (:func:`dataflows.preflight.preflight`: what this build can run, the
        destinations that can be checked for free, type_mappings keys and metadata column names against the source):
        a flow it refuses is refused at create. When the source or a destination does not answer, the flow is
        accepted and the worker checks again before it creates anything."""

        try:
            preflight(spec, environ=self.env)
        except UnresolvedReference as exc:  # a ${env:...}/${file:...} of the worker's environment, not ours
            log.info("flow %s: not checked against its source and destinations at create: %s; the worker checks"
                     " it", spec.id, exc, extra={"flow": spec.id})
        except (SourceError, TransientSinkError) as exc:
            what = "source" if isinstance(exc, SourceError) else "destination"
            log.info("flow %s: %s not reachable at create (%s); the worker will check it", spec.id, what, exc,
                     extra={"flow": spec.id})

    def create(self, spec: FlowSpec, start: bool = False) -> StoredFlow:
        check_wire_format(spec, self.env)
        self._check_against_source(spec)
        stored = self.store.create(spec.id, spec.name, spec.model_dump(mode="json"))
        log.info("flow %s: created", spec.id, extra={"flow": spec.id})
        return self.start(spec.id) if start else stored

    def update(self, spec: FlowSpec) -> StoredFlow:
        """Replace the definition, keeping state and checkpoints; a running worker is restarted to pick it up."""
        check_wire_format(spec, self.env)
        self._check_against_source(spec)
        with self._lock(spec.id):
            self.store.update_spec(spec.id, spec.name, spec.model_dump(mode="json"))
            log.info("flow %s: updated", spec.id, extra={"flow": spec.id})
            if self.store.get(spec.id).state == RUNNING and self.dispatcher.running(spec.id):
                self.dispatcher.stop(spec.id)
                self._launch(spec.id)
            return self.store.get(spec.id)

    def delete(self, flow_id: str) -> None:
        with self._lock(flow_id):
            flow = self.store.get(flow_id)
            if flow.state == RUNNING or self.dispatcher.running(flow_id):
                raise IllegalStateError(f"cannot delete flow {flow_id!r}: it is running; stop it first")
            self.store.delete(flow_id)
            self.checkpoints.delete(flow_id)
            log.info("flow %s: deleted", flow_id, extra={"flow": flow_id})

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, flow_id: str) -> StoredFlow:
        with self._lock(flow_id):
            self.store.transition(flow_id, "start")
            self._restarts.pop(flow_id, None)
            return self._launch(flow_id)

    def resume(self, flow_id: str) -> StoredFlow:
        with self._lock(flow_id):
            self.store.transition(flow_id, "resume")
            return self._launch(flow_id)

    def pause(self, flow_id: str) -> StoredFlow:
        with self._lock(flow_id):
            self.store.transition(flow_id, "pause")
            self.dispatcher.stop(flow_id)
            log.info("flow %s: paused", flow_id, extra={"flow": flow_id})
            return self.store.get(flow_id)

    def stop(self, flow_id: str) -> StoredFlow:
        with self._lock(flow_id):
            flow = self.store.get(flow_id)
            if flow.state == RUNNING:  # visible while the worker finishes its epoch
                self.store.db.run("UPDATE wallaby_flows SET state = ? WHERE id = ?", (STOPPING, flow_id))
            try:
                self.dispatcher.stop(flow_id)
            finally:
                self.store.transition(flow_id, "stop")
            log.info("flow %s: stopped", flow_id, extra={"flow": flow_id})
            return self.store.get(flow_id)

    def run_once(self, flow_id: str) -> bool:
        """Run a worker until the flow has caught up (max-empty-reads), leaving its state as it is."""
        with self._lock(flow_id):
            flow = self.store.get(flow_id)
            if self.dispatcher.running(flow_id) or flow.state == RUNNING:
                raise IllegalStateError(f"flow {flow_id!r} is running; its worker is already reading the slot"
                                        " (RunFlowOnce is for created, paused, stopped or failed flows)")
            gen = self.store.claim(flow_id)
            self.dispatcher.launch(flow_id, gen, once=True)
            return True

    def reset_positions(self, flow_id: str, destination: str | None = None) -> tuple[list[Checkpoint], frozenset[str]]:
        """Discard the flow's stored positions on purpose (``wallaby-admin checkpoint reset``): without
        ``destination``, its checkpoint rows are deleted now and its next worker empties the recovery store and
        discards every destination's high-water; with one, the next worker discards that destination's high-water
        (:meth:`Checkpoints.request_reset`; the worker clears the request once its first epoch is confirmed).
        Refused while a worker of the flow runs. Returns the checkpoint rows deleted and the resets now pending."""

        with self._lock(flow_id):
            flow = self.store.get(flow_id)  # NOT_FOUND for an unknown flow
            if flow.state in (RUNNING, STOPPING) or self.dispatcher.running(flow_id):
                what = flow.state if flow.state in (RUNNING, STOPPING) else "running a worker (run-once)"
                raise IllegalStateError(f"cannot reset the positions of flow {flow_id!r}: it is {what}; stop or"
                                        " pause the flow first")
            names = [d.get("name", "") for d in flow.spec.get("destinations", [])]
            if destination is not None and destination not in names:
                raise ConfigError("ResetCheckpoint", [FieldProblem(
                    "destination", f"flow {flow_id!r} has no destination {destination!r}"
                    f"{did_you_mean(destination, names)} (its destinations: {', '.join(names) or 'none'})")])
            deleted: list[Checkpoint] = []
            with self.checkpoints.db.transaction():
                if destination is None:
                    deleted = self.checkpoints.list(flow_id)
                    self.checkpoints.delete(flow_id)  # its pending resets too: "*" covers them
                self.checkpoints.request_reset(flow_id, destination)
            pending = self.checkpoints.resets(flow_id)
        if destination is None:
            log.warning("flow %s: positions reset (%d checkpoint row(s) deleted: %s); the next worker empties the"
                        " recovery store and discards every destination's high-water", flow_id, len(deleted),
                        ", ".join(f"slot {c.slot} at {format_lsn(c.confirmed_lsn)}" for c in deleted) or "none",
                        extra={"flow": flow_id})
        else:
            log.warning("flow %s: reset of destination %r asked for; the next worker discards its high-water",
                        flow_id, destination, extra={"flow": flow_id})
        return deleted, pending

    def resolve_staging(self, flow_id: str, tables: list[str] | None = None, schemas: list[str] | None = None,
                        destination: str | None = None) -> list:
        """Move the rows a backfill staged into the flow's target tables (:func:`dataflows.staging.
        resolve_flow_staging`). Refused while a worker of the flow runs: it holds the DuckDB file."""
        with self._lock(flow_id):
            flow = self.store.get(flow_id)  # NOT_FOUND for an unknown flow
            if flow.state in (RUNNING, STOPPING) or self.dispatcher.running(flow_id):
                what = flow.state if flow.state in (RUNNING, STOPPING) else "running a worker (run-once)"
                raise IllegalStateError(f"cannot resolve the staging tables of flow {flow_id!r}: it is {what} and"
                                        " its worker holds the destinations; stop or pause the flow first")
            spec = FlowSpec.model_validate(flow.spec)
            done = resolve_flow_staging(spec, tables=tables, schemas=schemas, dest=destination)
        log.info("flow %s: staging resolved: %s", flow_id, ", ".join(
            f"{r.destination}:{r.table} ({r.resolution}, {r.rows} rows)" if r.staged
            else f"{r.destination}:{r.table} (nothing staged)" for r in done) or "nothing staged",
            extra={"flow": flow_id})
        return done

    def _launch(self, flow_id: str) -> StoredFlow:
        gen = self.store.claim(flow_id)  # fences off any older worker of this flow, wherever it runs
        try:
            self.dispatcher.launch(flow_id, gen)
        except OSError as exc:
            self.store.transition(flow_id, "fail", f"cannot launch a worker: {exc}")
        return self.store.get(flow_id)

    # -- workers ---------------------------------------------------------------------------------
    def backfill(self, flow_id: str, tables: list[str], resume_after: bool) -> None:
        """Start a backfill of ``tables`` (a worker in ``-mode backfill``); ``resume_after``: resume the paused flow
        once it has finished. Refused while the flow streams: its stream would meet the backfill's rows out of
        order (docs/backfill.md); pause it first."""
        with self._lock(flow_id):
            flow = self.store.get(flow_id)
            if flow.state in (RUNNING, STOPPING) or self.dispatcher.running(flow_id):
                raise IllegalStateError(f"cannot backfill flow {flow_id!r} while it is {flow.state}: its stream would"
                                        " meet the backfill's rows out of order; pause it first (-pause)")
            gen = self.store.claim(flow_id)
            self._backfills[flow_id] = (gen, resume_after)
            self.dispatcher.launch(flow_id, gen, backfill=tables)
            log.info("flow %s: backfill of %s started%s", flow_id, ", ".join(tables),
                     "; the flow resumes when it ends" if resume_after else "", extra={"flow": flow_id})

    def backfill_running(self, flow_id: str) -> bool:
        """Whether a backfill worker this server launched for the flow (:meth:`backfill`) is running now."""
        with self._lock(flow_id):
            pending = self._backfills.get(flow_id)
            worker = self.dispatcher.running(flow_id)
            return pending is not None and worker is not None and worker.generation == pending[0]

    def _backfill_exited(self, ex: WorkerExit) -> bool:
        """A backfill worker's exit (True when ``ex`` was one): resume the flow if asked, else record why not."""
        with self._lock(ex.flow_id):
            pending = self._backfills.get(ex.flow_id)
            if pending is None or pending[0] != ex.generation:
                return False
            del self._backfills[ex.flow_id]
            if ex.returncode != EXIT_OK:
                self.store.set_reason(ex.flow_id, f"backfill failed: {ex.reason}")
                log.warning("flow %s: backfill failed: %s", ex.flow_id, ex.reason, extra={"flow": ex.flow_id})
                return True
            log.info("flow %s: backfill finished", ex.flow_id, extra={"flow": ex.flow_id})
            try:
                if pending[1] and self.store.get(ex.flow_id).state == "paused":
                    self.resume(ex.flow_id)
            except Exception as exc:  # deleted meanwhile, or a state change raced us
                log.warning("flow %s: not resumed after its backfill: %s", ex.flow_id, exc, extra={"flow": ex.flow_id})
            return True

    def worker_exited(self, ex: WorkerExit) -> None:
        """The dispatcher's report: decide between nothing, FAILED and a restart."""
        if ex.once and self._backfill_exited(ex):
            return
        if ex.once or ex.stopped_by_us or ex.returncode == EXIT_FENCED:
            if ex.once and ex.returncode not in (EXIT_OK, EXIT_FENCED):
                self.store.set_reason(ex.flow_id, f"run-once failed: {ex.reason}")
            return
        with self._lock(ex.flow_id):
            try:
                flow = self.store.get(ex.flow_id)
            except Exception:
                return  # deleted
            if flow.state != RUNNING or flow.generation != ex.generation:
                return  # paused/stopped meanwhile, or a newer worker runs
            if ex.returncode == EXIT_OK:
                self._fail(flow, "the worker stopped by itself")
                return
            if ex.returncode != EXIT_TRANSIENT and ex.returncode > 0:  # permanent: the same start fails the same way
                default = "bad flow spec" if ex.returncode == EXIT_CONFIG else f"worker exited with {ex.returncode}"
                self._fail(flow, ex.reason or default)
                return
            policy = flow.spec.get("config", {}).get("give_up_policy", "on_retry_exhaustion")
            now = time.time()
            recent = [t for t in self._restarts.get(flow.id, []) if now - t < RESTART_WINDOW]
            if policy != "never" and len(recent) >= self.max_restarts:
                self._fail(flow, f"{ex.reason} (gave up after {len(recent)} restarts)")
                return
            recent.append(now)
            self._restarts[flow.id] = recent
            delay = min(30.0, 2.0 ** (len(recent) - 1))
            self.store.set_reason(flow.id, f"restarting after: {ex.reason}")
            log.warning("flow %s: worker died (%s); restarting in %.0fs", flow.id, ex.reason, delay,
                        extra={"flow": flow.id})
            timer = threading.Timer(delay, self._restart, args=(flow.id, ex.generation))
            timer.daemon = True
            timer.start()

    def _restart(self, flow_id: str, generation: int) -> None:
        with self._lock(flow_id):
            try:
                flow = self.store.get(flow_id)
            except Exception:
                return
            if flow.state == RUNNING and flow.generation == generation and not self.dispatcher.running(flow_id):
                self._launch(flow_id)

    def _fail(self, flow: StoredFlow, reason: str) -> None:
        """The flow gives up. With ``failure_mode=drop_slot`` its slot is dropped (WAL is no longer held; the
        changes not yet delivered are gone from it: a backfill is needed), and that is said loudly."""
        if flow.spec.get("config", {}).get("failure_mode") == "drop_slot":
            reason += self._drop_slot(flow)
        try:
            self.store.transition(flow.id, "fail", reason, generation=flow.generation)
        except FencedError:
            return
        log.error("flow %s: failed: %s", flow.id, reason, extra={"flow": flow.id})

    def _drop_slot(self, flow: StoredFlow) -> str:
        src = flow.spec["source"]
        try:
            opts = parse_options(SOURCE_OPTIONS[src["type"]], src["options"], what=f"flow {flow.id!r}",
                                 path="source.options", context={"endpoint_name": src["name"], "flow_id": flow.id})
            slots = [v.slot for v in opts.slot_views()]  # every slot of a flow of several
            found = [v.slot for v in opts.slot_views() if sourceops.drop_slot(v.dsn, v.slot, True, flow.id)[0]]
        except Exception as exc:
            log.error("flow %s: failure_mode=drop_slot: could not drop the slot: %s", flow.id, exc,
                      extra={"flow": flow.id})
            return f"; failure_mode=drop_slot, but dropping the slot failed: {exc}"
        if not found:
            return "; failure_mode=drop_slot: the slot was already gone" if len(slots) == 1 else \
                "; failure_mode=drop_slot: the slots were already gone"
        names = ", ".join(repr(s) for s in found)
        log.error("flow %s: failure_mode=drop_slot: DROPPED replication slot %s; changes not delivered before it"
                  " are lost to this flow: backfill before starting it again", flow.id, names,
                  extra={"flow": flow.id})
        return f"; failure_mode=drop_slot: dropped replication slot {names} (backfill before restarting)"

    # -- server start / stop -----------------------------------------------------------------------
    def recover(self) -> None:
        """At server start: relaunch the workers of running flows (a new generation fences any orphan);
        finish stops that were interrupted."""
        for flow in self.store.list():
            if flow.state == RUNNING:
                log.info("flow %s: running before the restart; launching its worker", flow.id,
                         extra={"flow": flow.id})
                with self._lock(flow.id):
                    self._launch(flow.id)
            elif flow.state == STOPPING:
                self.store.transition(flow.id, "stop", "stopped while the server restarted")

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop every worker gracefully; the flows keep their state for the next start."""
        self.dispatcher.close(timeout)


__all__ = ["FAILED", "PAUSED", "FlowManager"]
