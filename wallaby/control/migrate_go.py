"""``wallaby-admin migrate go-wallaby``: the Go WALlaby's flows, their state and positions, into wallaby's store.

    wallaby-admin migrate go-wallaby -dsn GO_POSTGRES_DSN [-dry-run] [-flow-id ID]... [-drop-options a,b]
                                     [-checkpoint-backend sqlite|postgres] [-checkpoint-path FILE]
                                     [-checkpoint-dsn DSN] [-o table|json]

Reads the Go build's flow store and checkpoints (:mod:`wallaby.control.go_store`, read-only: nothing is written
to its database) and writes, for each flow, into wallaby's store (the database of ``WALLABY_CHECKPOINT_BACKEND`` /
``_PATH`` / ``_DSN`` and ``WALLABY_POSTGRES_DSN``, as the worker and the API server open it; the flags override
them):

- the flow, translated (:mod:`wallaby.control.go_translate`: what is dropped is named, what does not translate
  refuses the flow, by name);
- its state (created, running, paused, stopped, failed; ``stopping`` becomes stopped), with the reason of its last
  state event;
- a checkpoint at the Go build's confirmed position, with the source identity read from the source
  (:func:`sources.postgres.identity.read_source`): the later of the Go checkpoint's LSN and the slot's
  ``confirmed_flush_lsn`` (the Go runner acknowledges a batch to the slot before it records the checkpoint), located
  in the slot's pending stream (:func:`sources.postgres.slot_peek.locate`) so wallaby's worker emits exactly the
  changes after the last one the Go build delivered.

A flow is migrated whole or not at all: one whose slot is gone or in use (stop the Go worker first), or whose
source cannot be read, is refused with the reason. A flow already in wallaby's store with the same definition and
checkpoint is left as it is (running it again changes nothing); one with another definition or checkpoint is not
overwritten (reported). ``-dry-run`` prints the same plan and writes nothing.

Exit status: 0 when every flow was migrated (or was already), 1 when some flow was refused or conflicts, 2 for bad
usage or a store that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sources.postgres.identity import read_source
from sources.postgres.rds_iam import register
from sources.postgres.slot_peek import locate
from wallaby.control.go_store import GoFlow, GoStore, read_go_store
from wallaby.control.go_translate import Translation, translate
from wallaby.core.changes import Position, format_lsn, parse_lsn
from wallaby.core.errors import ConfigError, NotFoundError, WallabyError, redact_dsn
from wallaby.core.spec import FlowSpec
from wallaby.state.checkpoints import Checkpoint, Checkpoints
from wallaby.state.sqldb import open_database

PROG = "wallaby-admin migrate go-wallaby"
# The Go build's state -> the lifecycle actions (wallaby.state.flowstore.TRANSITIONS) that lead there from created.
STATE_ACTIONS: dict[str, tuple[str, ...]] = {
    "created": (), "running": ("start",), "paused": ("start", "pause"), "stopping": ("start", "stop"),
    "stopped": ("start", "stop"), "failed": ("fail",),
}
# wallaby-admin's global flags (ignored here), and those of them that take a value
ADMIN_FLAGS = ("addr", "endpoint", "token", "ca-file", "timeout", "tls", "insecure", "pretty")
VALUE_FLAGS = {"-addr", "-endpoint", "-token", "-ca-file", "-timeout", "-o", "-output"}


@dataclass
class FlowPlan:
    """What migrating one Go flow does (or would do)."""

    go: GoFlow
    translation: Translation
    flow: str = ""  # create | unchanged | conflict | refused
    state: str = ""  # the state it gets in wallaby
    reason: str = ""
    checkpoint: Checkpoint | None = None
    cp: str = ""  # write | unchanged | conflict | none | fresh (never started: no slot, no position yet)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.flow in ("create", "unchanged") and self.cp in ("write", "unchanged", "fresh")

    def as_dict(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {"flow_id": self.go.id, "go_state": self.go.state, "state": self.state, "flow": self.flow,
                "checkpoint": self.cp, "confirmed_lsn": format_lsn(cp.confirmed_lsn) if cp else "",
                "position": str(cp.position) if cp else "", "source": cp.source.describe() if cp and cp.source else "",
                "go_checkpoint": self.go.checkpoint.lsn if self.go.checkpoint else "",
                "changed": self.translation.changed, "dropped": self.translation.dropped, "notes": self.notes,
                "problems": self.problems}


# -- planning ------------------------------------------------------------------------------------------------

def _reason(go: GoFlow) -> str:
    last = go.events[-1] if go.events else None
    said = f"; its last state event: {last.from_state or '-'} -> {last.to_state}" + (
        f" ({last.reason})" if last and last.reason else "") if last else ""
    return f"migrated from the Go WALlaby (state {go.state}{said})"


def _position(plan: FlowPlan, spec: FlowSpec) -> None:
    """The checkpoint at the Go build's confirmed position, or the problems that stop it."""
    opts = spec.source_options()
    go = plan.go
    if getattr(opts, "aws_rds_iam", False):
        register(opts, spec.id)
    try:
        facts = read_source(opts, spec.id)
    except WallabyError as exc:
        plan.problems.append(f"source: {redact_dsn(str(exc))}")
        return
    if not facts.slot_exists and go.state == "created" and go.checkpoint is None:
        plan.cp = "fresh"
        plan.notes.append(f"never started: replication slot {opts.slot!r} does not exist yet; wallaby's first start"
                          " creates it")
        return
    if not facts.slot_exists:
        plan.problems.append(f"replication slot {opts.slot!r} does not exist on the source: there is no position of"
                             " the Go build's to continue from (a new slot starts at its creation, and changes"
                             " before it would be lost); create the flow in wallaby yourself and backfill")
        return
    go_lsn = None
    if go.checkpoint is not None:
        try:
            go_lsn = parse_lsn(go.checkpoint.lsn)
        except ValueError:
            plan.problems.append(f"the Go checkpoint's lsn {go.checkpoint.lsn!r} is not an LSN (X/Y)")
            return
    slot_lsn = facts.slot_confirmed
    candidates = [x for x in (go_lsn, slot_lsn) if x is not None]
    if not candidates:
        plan.problems.append(f"replication slot {opts.slot!r} was never confirmed and the Go build has no"
                             " checkpoint for the flow: nothing says where it stopped")
        return
    at = max(candidates)
    if at > facts.wal_end:
        plan.problems.append(f"the Go checkpoint {format_lsn(at)} is ahead of the source's WAL"
                             f" ({format_lsn(facts.wal_end)}): it is of another server (a restore, a copy)")
        return
    if go_lsn is None:
        plan.notes.append(f"no Go checkpoint: continues at the slot's confirmed position {format_lsn(at)}")
    elif slot_lsn is not None and slot_lsn > go_lsn:
        plan.notes.append(f"the slot was confirmed to {format_lsn(slot_lsn)}, past the Go checkpoint"
                          f" {format_lsn(go_lsn)} (the Go runner acknowledges before it records): continues there")
    try:
        found = locate(opts, at, spec.id)
    except WallabyError as exc:
        plan.problems.append(f"source: {redact_dsn(str(exc))}")
        return
    if found is None:
        position = Position(at, 0)
        plan.notes.append(f"no change pending at {format_lsn(at)}: streaming starts there (every transaction"
                          " committed after it)")
    else:
        position = found.position
        plan.notes.append(f"continues after the change at {format_lsn(at)} (change {found.position.ordinal} of"
                          f" the transaction committed at {format_lsn(found.position.lsn)})" if found.shared == 1
                          else f"{found.shared} changes share {format_lsn(at)} (one multi-insert): continues"
                          " before the first of them, so some of them may arrive twice")
    plan.checkpoint = Checkpoint(spec.id, opts.slot, at, position, time.time(), facts.identity)


def plan_flow(go: GoFlow, store: Checkpoints | None, drop_options: set[str]) -> FlowPlan:
    plan = FlowPlan(go, translate(go, drop_options))
    t = plan.translation
    if t.spec is None or t.flow is None:
        plan.flow, plan.cp, plan.problems = "refused", "none", list(t.problems)
        return plan
    plan.state = "stopped" if go.state == "stopping" else go.state
    if go.state not in STATE_ACTIONS:
        plan.problems.append(f"state {go.state!r} is not a Go WALlaby state ({', '.join(STATE_ACTIONS)})")
    plan.reason = _reason(go)
    existing = None
    if store is not None:
        try:
            existing = store.flow_store.get(go.id)
        except NotFoundError:
            existing = None
    if existing is None:
        plan.flow = "create"
    elif existing.spec == t.spec:
        plan.flow, plan.state = "unchanged", existing.state
    else:
        plan.flow = "conflict"
        plan.problems.append(f"flow {go.id!r} is in wallaby's store already with another definition: not"
                             " changed (wallaby-admin flow update, or flow delete, then migrate again)")
    _position(plan, t.flow)
    if plan.cp == "fresh":
        if plan.problems and plan.flow == "create":
            plan.flow = "refused"
        return plan
    if plan.checkpoint is None:
        plan.cp = "none"
        if plan.flow == "create":
            plan.flow = "refused"
        return plan
    cp = plan.checkpoint
    ours = store.get(cp.flow_id, cp.slot) if store is not None else None
    if ours is None:
        plan.cp = "write"
    elif (ours.confirmed_lsn, ours.position) == (cp.confirmed_lsn, cp.position):
        plan.cp = "unchanged"
    else:
        plan.cp = "conflict"
        plan.problems.append(f"wallaby's store has a checkpoint for flow {go.id!r} slot {cp.slot!r} already"
                             f" ({format_lsn(ours.confirmed_lsn)}, {ours.position}): kept (wallaby-admin checkpoint"
                             " reset -flow-id, then migrate again, to take the Go build's)")
    if plan.problems and plan.flow == "create":
        plan.flow = "refused"
    return plan


def apply_plan(plan: FlowPlan, store: Checkpoints) -> None:
    """Write one flow's plan (flow, state, checkpoint) in one transaction."""
    if not plan.ok or (plan.flow, plan.cp) == ("unchanged", "unchanged"):
        return
    flows = store.flow_store
    t = plan.translation
    with store.db.transaction():
        if plan.flow == "create":
            assert t.spec is not None and t.flow is not None
            flows.create(plan.go.id, t.flow.name, t.spec)
            for action in STATE_ACTIONS.get(plan.go.state, ()):
                flows.transition(plan.go.id, action, plan.reason)
        if plan.cp == "write" and plan.checkpoint is not None:
            store.put(plan.checkpoint)


# -- the command -----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Move the Go WALlaby's flows, their state and positions into"
                                                       " wallaby's store (the Go build's database is only read).")
    p.add_argument("what", choices=["go-wallaby"], help="what to migrate from")
    p.add_argument("-dsn", "--dsn", required=True, help="the Go build's Postgres (its WALLABY_POSTGRES_DSN)")
    p.add_argument("-dry-run", "--dry-run", dest="dry_run", action="store_true", help="print the plan, write nothing")
    p.add_argument("-flow-id", "--flow-id", dest="flow_ids", action="append", default=[],
                   help="only this flow (repeat for more)")
    p.add_argument("-drop-options", "--drop-options", dest="drop_options", default="",
                   help="comma-separated option names to leave out of every endpoint (reported)")
    for name in ("checkpoint-backend", "checkpoint-path", "checkpoint-dsn"):
        p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), default=None,
                       help=f"wallaby's store: overrides WALLABY_{name.replace('-', '_').upper()}")
    p.add_argument("-o", "-output", "--output", dest="output", choices=["table", "json"], default="table")
    p.add_argument("-json", "--json", dest="output", action="store_const", const="json")
    for name in ADMIN_FLAGS:  # wallaby-admin's global flags: accepted, not used (this talks to no API server)
        value = name not in ("tls", "insecure", "pretty")
        p.add_argument(f"-{name}", f"--{name}", dest=f"_ignored_{name}", help=argparse.SUPPRESS,
                       **({} if value else {"action": "store_true"}))
    return p


def is_migrate(argv: list[str]) -> bool:
    """Whether ``argv`` (wallaby-admin's arguments) names the migrate group."""
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token.startswith("-"):
            skip = "=" not in token and "-" + token.lstrip("-") in VALUE_FLAGS
            continue
        return token == "migrate"
    return False


def _store_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("checkpoint_backend", "checkpoint_path", "checkpoint_dsn"):
        value = getattr(args, key)
        if value is not None:
            env[f"WALLABY_{key.upper()}"] = value
    return env


def _store_place(env: dict[str, str]) -> tuple[str, str]:
    """(backend, where) of wallaby's store as :func:`wallaby.state.sqldb.open_database` chooses it."""
    backend = (env.get("WALLABY_CHECKPOINT_BACKEND") or "").strip().lower() or (
        "postgres" if env.get("WALLABY_POSTGRES_DSN") else "sqlite")
    dsn = (env.get("WALLABY_CHECKPOINT_DSN") or "").strip()
    if backend == "sqlite":
        return backend, dsn.removeprefix("sqlite://").removeprefix("sqlite:") if dsn else (
            env.get("WALLABY_CHECKPOINT_PATH") or "~/.wallaby/checkpoints.db")
    return backend, dsn or env.get("WALLABY_POSTGRES_DSN", "")


def _store_exists(env: dict[str, str]) -> bool:
    """Whether wallaby's store has its tables already (a dry run opens only such a store: opening makes them)."""
    backend, where = _store_place(env)
    if backend == "sqlite":
        return where.startswith("file:") or Path(where).expanduser().exists()
    if backend != "postgres" or not where:
        return True  # open_database names the problem
    import psycopg

    try:
        with psycopg.connect(where, application_name="wallaby-migrate") as conn:
            found = conn.execute("SELECT to_regclass('wallaby_flows') IS NOT NULL AND"
                                 " to_regclass('wallaby_checkpoints') IS NOT NULL").fetchone()
    except psycopg.Error:
        return True  # open_database reports it
    return bool(found and found[0])


def _open_store(env: dict[str, str], dry_run: bool) -> Checkpoints | None:
    """wallaby's store; for a dry run, None when it has no tables yet (a dry run makes nothing)."""
    if dry_run and not _store_exists(env):
        return None
    return Checkpoints(open_database(env, "wallaby-migrate"))


def _describe(store: Checkpoints | None, env: dict[str, str]) -> str:
    if store is not None:
        return store.db.describe() if hasattr(store.db, "describe") else type(store.db).__name__
    backend, where = _store_place(env)
    return f"{backend} {where} (no wallaby store there yet)"


def render(plans: list[FlowPlan], go_dsn: str, store_text: str, dry_run: bool, has_checkpoints: bool) -> str:
    lines = [f"Go WALlaby flow store: {redact_dsn(go_dsn)} ({len(plans)} flow{'s' if len(plans) != 1 else ''})",
             f"wallaby store: {redact_dsn(store_text)}"]
    if not has_checkpoints:
        lines.append("no checkpoints table in the Go build's database (a Go build with SQLite checkpoints): each"
                     " flow continues at its slot's confirmed position")
    if dry_run:
        lines.append("dry run: nothing is written")
    rows = [("FLOW", "GO STATE", "STATE", "IN WALLABY", "CHECKPOINT", "CONFIRMED", "RESUMES AFTER")]
    for p in plans:
        cp = p.checkpoint
        rows.append((p.go.id, p.go.state, p.state or "-", p.flow, p.cp, format_lsn(cp.confirmed_lsn) if cp else "-",
                     str(cp.position) if cp else "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines += ["", *("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)]
    for p in plans:
        details = [*(f"  changed {c}" for c in p.translation.changed),
                   *(f"  dropped {d}" for d in p.translation.dropped), *(f"  note: {n}" for n in p.notes),
                   *(f"  not migrated: {x}" for x in p.problems)]
        if details:
            lines += ["", f"flow {p.go.id}:", *details]
    done = sum(1 for p in plans if p.ok)
    verb = "would be migrated" if dry_run else "migrated"
    lines += ["", f"{done} of {len(plans)} flows {verb} (or were already);"
                  f" {len(plans) - done} not migrated" + (": see above" if done < len(plans) else "")]
    return "\n".join(redact_dsn(line) for line in lines)


def main(argv: list[str]) -> int:
    """``argv``: wallaby-admin's arguments (the ``migrate`` group in them)."""
    args_in = list(argv)
    args_in.remove("migrate")
    try:
        args = _parser().parse_args(args_in)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    drop = {x.strip() for x in args.drop_options.split(",") if x.strip()}
    env = _store_env(args)
    try:
        go_store: GoStore = read_go_store(args.dsn)
        store = _open_store(env, args.dry_run)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        flows = go_store.flows
        if args.flow_ids:
            missing = sorted(set(args.flow_ids) - {f.id for f in flows})
            if missing:
                print(f"{PROG}: -flow-id: no flow {', '.join(map(repr, missing))} in the Go build's flow store"
                      f" (it has: {', '.join(f.id for f in flows) or 'none'})", file=sys.stderr)
                return 2
            flows = [f for f in flows if f.id in set(args.flow_ids)]
        plans = [plan_flow(go, store, drop) for go in flows]
        if not args.dry_run and store is not None:
            for plan in plans:
                apply_plan(plan, store)
        if args.output == "json":
            print(json.dumps({"dry_run": args.dry_run, "flows": [p.as_dict() for p in plans]}, indent=2))
        else:
            print(render(plans, args.dsn, _describe(store, env), args.dry_run, go_store.has_checkpoints))
    finally:
        if store is not None:
            store.close()
    return 0 if all(p.ok for p in plans) else 1


__all__ = ["FlowPlan", "apply_plan", "is_migrate", "main", "plan_flow", "render"]
