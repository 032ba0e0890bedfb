"""Where a flow starts, decided before anything is created: every stored position judged against the source.

:func:`prepare_start` reads the source's identity (:mod:`sources.postgres.identity`),
judges the checkpoint store's row and every destination's stored high-water
against it (:class:`wallaby.core.identity.SourceCheck`), and only then lets
:func:`sources.postgres.setup.prepare_source` create the publication, slot and state
row. What it decided travels with the flow: the source step resumes from the
vetted checkpoint, and every writer judges (and stores) its own high-water with
the same :class:`~wallaby.core.identity.SourceCheck`.

The checkpoint of the flow's slot:

- the slot does not exist (it is created now): no older position can be valid
  for it; logged, and streaming starts at the new slot's consistent point;
- the slot was dropped and created again since the checkpoint (another
  ``slot_id``): the same, logged with the gap;
- another cluster or database, ahead of the server's WAL, on a timeline the
  server's history left earlier: refused (:class:`~wallaby.core.identity.PositionMismatchError`);
- behind the slot's ``confirmed_flush_lsn``: refused: the checkpoint is written
  before the slot is confirmed, so a slot confirmed further was read by another
  consumer (another flow, ``pg_recvlogical``, ``pg_replication_slot_advance``)
  and the changes in between never reached this flow.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from sources.postgres.connection import connect, server_name
from sources.postgres.identity import SourceFacts, read_source
from sources.postgres.setup import SourcePlan, prepare_source, split_table
from sources.postgres.source_state import owner_problem
from wallaby.core import registry
from wallaby.core.changes import format_lsn
from wallaby.core.errors import LocalStoreError, TerminalSourceError
from wallaby.core.identity import DISCARD, RESET_HINT, PositionMismatchError, SourceCheck, SourceIdentity, part_name
from wallaby.state.checkpoints import ALL, Checkpoint, Checkpoints

log = logging.getLogger("wallaby.positions")

# A destination's plugin (wallaby.core.registry) may have stored_position(name, flow_id, options) ->
# (Position, SourceIdentity | None, where) | None: its high-water, read without creating anything; and
# discard_position(name, flow_id, options), which forgets it (a reset).


@dataclass
class Start:
    """What :func:`prepare_start` decided and did."""

    check: SourceCheck  # current.slot_id is the slot's identity after the set-up
    plan: SourcePlan
    checkpoint: Checkpoint | None  # resume here when there is no recovery state (None: the slot's position)
    facts: SourceFacts
    keep_recovery: bool = True  # False: the recovery store is emptied before the flow runs
    opts: object = None  # the slot's source options (one of PostgresSourceOptions.slot_views())
    index: int | None = None  # the slot's index when the flow has several (source option slots), else None


def read_check(spec, reset: frozenset[str] = frozenset(), opts=None) -> tuple[SourceCheck, SourceFacts]:
    """The source as it is now (nothing created), as a :class:`SourceCheck` with ``reset``; ``opts``: one slot's
    source options (:meth:`~wallaby.core.options.PostgresSourceOptions.slot_views`), by default the flow's."""
    opts = opts or spec.source_options()
    facts = read_source(opts, spec.id)
    return SourceCheck(spec.id, facts.identity, facts.wal_end, facts.switches, reset), facts


def prepare_starts(spec, checkpoints: Checkpoints | None, *, reset_all: bool = False,
                   start_lsn: int | None = None, recovery_dir: Path | None = None) -> list[Start]:
    """:func:`prepare_start` for each slot of the flow (source option ``slots``), in slot order. A flow whose
    stored positions are of other slots (``slots`` or ``slot_tables`` changed since: tables would move to slots
    created now, and their changes in between be lost) is refused before anything is created."""
    views = spec.source_options().slot_views()
    if checkpoints is not None and not reset_all:
        names, base = {v.slot for v in views}, spec.source_options().slot
        layout = re.compile(re.escape(base) + r"_\d+" + ("|" + re.escape(base) if len(views) > 1 else ""))
        stray = sorted(cp.slot for cp in checkpoints.list(spec.id) if cp.slot not in names
                       and layout.fullmatch(cp.slot))
        if stray:
            raise TerminalSourceError(
                f"flow {spec.id!r} has stored positions for replication slot(s) {', '.join(stray)}, not in its"
                f" slot layout now ({', '.join(sorted(names))}): its source options slots / slot_tables changed, and"
                f" a table moved to a new slot would lose the changes made before that slot exists. Put the options"
                f" back, or start over: wallaby-worker -flow-id {spec.id} -reset-position, then backfill",
                server=server_name(views[0].dsn))
    if len(views) > 1 or (checkpoints is not None and checkpoints.list(spec.id)):
        moved = moved_tables(views, spec.source_options())
        if moved:
            raise TerminalSourceError(
                f"flow {spec.id!r}: its slot layout (source options slots / slot_tables) places "
                + "; ".join(f"{t} in {now} while publication {pub} of an earlier layout publishes it"
                            for t, pub, now in moved)
                + ": a table moved to another slot would be read twice, or lose the changes between the slots' "
                  "positions. Put the options back, or start over (drop the flow's slots and publications, then "
                  "backfill)", server=server_name(views[0].dsn))
    starts = [prepare_start(spec, checkpoints, reset_all=reset_all, start_lsn=start_lsn,
                            recovery_dir=recovery_dir, opts=v) for v in views]
    return starts


def moved_tables(views: list, opts) -> list[tuple[str, str, str]]:
    """(table, the publication of this flow's layout that publishes it, the publication it belongs to now) for each
    table an existing publication of another slot of the flow (``<publication>`` or ``<publication>_<i>``)
    publishes."""
    if len(views) == 1 and opts.slots == 1 and not views[0].publication_tables:
        return []
    home = {".".join(split_table(t)): v.publication for v in views for t in v.publication_tables}
    base = opts.publication
    with connect(opts.dsn, application_name="wallaby-setup") as conn:
        rows = conn.execute("SELECT pubname, schemaname || '.' || tablename FROM pg_publication_tables"
                            " WHERE pubname = %s OR pubname ~ %s", (base, f"^{re.escape(base)}_[0-9]+$")).fetchall()
    return sorted((t, pub, home[t]) for pub, t in rows if t in home and home[t] != pub)


def prepare_start(spec, checkpoints: Checkpoints | None, *, reset_all: bool = False,
                  start_lsn: int | None = None, recovery_dir: Path | None = None, export: bool = False,
                  opts=None) -> Start:
    """Judge every stored position of ``spec``'s flow against its source, then prepare the source (``export``: a
    slot created now comes with its exported snapshot, ``start.plan.snapshot``: a backfill reads in it).
    ``opts``: one slot's source options (:func:`prepare_starts`), by default the flow's (one slot)."""
    opts = opts or spec.source_options()
    slots = spec.source_options().slots
    index = int(opts.slot.rpartition("_")[2]) if slots > 1 else None
    reset = (checkpoints.resets(spec.id) if checkpoints is not None else frozenset()) | (
        frozenset({ALL}) if reset_all else frozenset())
    if reset:
        log.warning("flow %s: resetting stored positions: %s", spec.id,
                    "all" if ALL in reset else ", ".join(sorted(reset)), extra={"flow": spec.id})
    check, facts = read_check(spec, reset, opts)
    if problem := owner_problem(facts.slot_rows, opts.flow_id or spec.id, opts):
        raise TerminalSourceError(problem, server=server_name(opts.dsn))
    checkpoint = None
    if checkpoints is not None and start_lsn is None:
        checkpoint = vet_checkpoint(checkpoints.get(spec.id, opts.slot), check, facts, checkpoints.db.describe())
    keep_recovery = vet_recovery(recovery_dir, check, facts) if recovery_dir is not None else True
    check_destinations(spec, check, index)
    plan = prepare_source(opts, spec.id, check.current.system_id, export=export)
    check.current = replace(check.current, slot_id=plan.slot_id)
    return Start(check=check, plan=plan, checkpoint=checkpoint, facts=facts, keep_recovery=keep_recovery,
                 opts=opts, index=index)


def vet_checkpoint(cp: Checkpoint | None, check: SourceCheck, facts: SourceFacts, store: str) -> Checkpoint | None:
    """The checkpoint to resume from (None: start at the slot's own position); raises on a mismatch."""
    if cp is None:
        return None
    where = f"the checkpoint store ({store}), flow {cp.flow_id!r} slot {cp.slot!r}"
    slot = check.current.slot
    if check.resets(ALL):
        log.warning("flow %s: discarding the checkpoint %s in %s (reset asked for)", check.flow_id,
                    format_lsn(cp.confirmed_lsn), where, extra={"flow": check.flow_id})
        return None
    if not facts.slot_exists:
        log.warning("flow %s: replication slot %r does not exist and is created now; the checkpoint %s in %s"
                    " belonged to an earlier slot (%s) and cannot be resumed: streaming starts at the new slot's"
                    " consistent point (changes made before it are not streamed: backfill them if needed)",
                    check.flow_id, slot, format_lsn(cp.confirmed_lsn), where,
                    cp.source.describe() if cp.source else "no recorded source", extra={"flow": check.flow_id})
        return None
    verdict = check.judge(cp.source, cp.confirmed_lsn, where)
    then, now = cp.source.slot_id if cp.source else None, check.current.slot_id
    if then and now and then != now:
        log.warning("flow %s: replication slot %r was dropped and created again since the checkpoint %s (slot %s,"
                    " now %s): streaming starts at the slot's position %s; changes between them were not streamed"
                    " (backfill them if needed)", check.flow_id, slot, format_lsn(cp.confirmed_lsn), then, now,
                    format_lsn(facts.slot_confirmed or 0), extra={"flow": check.flow_id})
        return None
    confirmed = facts.slot_confirmed
    if verdict != DISCARD and cp.source is not None and confirmed is not None and cp.confirmed_lsn < confirmed:
        raise PositionMismatchError(
            f"flow {check.flow_id!r}: replication slot {slot!r} was confirmed to {format_lsn(confirmed)}, past this"
            f" flow's checkpoint {format_lsn(cp.confirmed_lsn)} in {where}: something else read the slot (another"
            " flow or client on the same slot, pg_replication_slot_advance) or it was dropped and created again"
            " outside wallaby, and the changes in between never reached this flow's destinations. "
            + RESET_HINT.format(flow=check.flow_id) + " Then backfill what was missed.", where)
    return cp


def check_destinations(spec, check: SourceCheck, index: int | None = None) -> None:
    """Every destination's stored high-water judged against the source (raises on the first mismatch); ``index``:
    the slot's, whose writers keep their high-water under the part name (:func:`wallaby.core.identity.part_name`)."""
    for i, dest in enumerate(spec.destinations):
        plugin = registry.plugin(dest.type)
        reader = plugin.stored_position if plugin is not None else None
        if reader is None:
            continue
        name = part_name(dest.name, index)
        try:
            found = reader(name, spec.id, spec.destination_options(i))
        except Exception as exc:  # unreachable now: the writer reads (and judges) it again when it opens
            log.info("flow %s: destination %r: stored position not read before start (%s); checked at open",
                     spec.id, dest.name, type(exc).__name__, extra={"flow": spec.id})
            continue
        if found is not None:
            position, identity, where = found
            where = f"{where} (destination {name!r})"
            if check.judge(identity, position.lsn, where, reset_as=dest.name) == DISCARD:
                # now, not when the writer opens: bytewax builds a sink only once something reaches it
                plugin.discard_position(name, spec.id, spec.destination_options(i))
                log.warning("flow %s: discarded the stored position in %s", spec.id, where, extra={"flow": spec.id})


RECOVERY_SOURCE_FILE = "wallaby-source.json"
# Below this much free space on the recovery store's filesystem, a failed run is taken as "the disk is full" (bytewax
# reports SQLite's SQLITE_FULL only as a panic message; an epoch's snapshot is a few KB without the TOAST cache).
RECOVERY_MIN_FREE = 1 << 20


def vet_recovery(rdir: Path, check: SourceCheck, facts: SourceFacts) -> bool:
    """Whether the bytewax recovery store in ``rdir`` may be resumed (False: empty it first). It records its
    source in ``wallaby-source.json``; one of another source is refused. When the slot is created now, or a reset
    was asked for, it is emptied: nothing in it can apply to the new slot."""
    if not rdir.exists() or not any(p for p in rdir.iterdir() if p.name != RECOVERY_SOURCE_FILE):
        return True
    where = f"the bytewax recovery store {rdir}"
    if check.resets(ALL):
        log.warning("flow %s: emptying %s (reset asked for)", check.flow_id, where, extra={"flow": check.flow_id})
        return False
    if not facts.slot_exists:
        # its positions are of an earlier slot (or another source), and may lie past where the new slot starts
        # (a failover to a standby that lagged): resuming them would skip the new slot's changes
        log.warning("flow %s: replication slot %r is created now; %s belonged to an earlier slot and is emptied",
                    check.flow_id, check.current.slot, where, extra={"flow": check.flow_id})
        return False
    sidecar = rdir / RECOVERY_SOURCE_FILE
    stored = SourceIdentity.from_json(sidecar.read_text()) if sidecar.exists() else None
    if stored is not None and check.problem(stored, 0) is not None:
        check.judge(stored, 0, where)  # raises, naming both sources
    return True  # its positions are judged again against the server when the source resumes from them


def open_recovery(rdir: Path, check: SourceCheck, keep: bool) -> None:
    """Make ``rdir`` a bytewax recovery store of this source (emptied first unless ``keep``)."""
    from bytewax.recovery import init_db_dir

    try:
        if not keep and rdir.exists():
            shutil.rmtree(rdir)
        if not rdir.exists() or not any(p for p in rdir.iterdir() if p.name != RECOVERY_SOURCE_FILE):
            rdir.mkdir(parents=True, exist_ok=True)
            init_db_dir(rdir, 1)
        tmp = rdir / (RECOVERY_SOURCE_FILE + ".tmp")
        tmp.write_text(check.current.to_json())
        tmp.replace(rdir / RECOVERY_SOURCE_FILE)
    except OSError as exc:
        raise recovery_store_error(rdir, exc) from None


def recovery_store_error(rdir: Path, exc: OSError | None = None) -> LocalStoreError:
    """The error of a recovery store that cannot be written: transient when its disk is full (free space and
    restart: nothing is lost), else permanent."""
    free = shutil.disk_usage(rdir if rdir.exists() else rdir.parent).free
    full = (exc is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or free < RECOVERY_MIN_FREE
    what = f"{free} bytes free on its filesystem: free space or move it (-recovery-dir, WALLABY_RECOVERY_DIR) and" \
           " restart; nothing is lost" if full else (exc.strerror if exc is not None else "write failed")
    return LocalStoreError(f"cannot write the bytewax recovery store {rdir}: {what}", str(rdir), transient=full)


def lock_recovery(rdir: Path, flow_id: str) -> object:
    """Hold the flow's recovery store for this process (a lock file beside it): a second worker of the same flow
    waits here until the first one exits, instead of writing the same store. The returned file must stay open."""
    import fcntl
    import time

    rdir.parent.mkdir(parents=True, exist_ok=True)
    handle = open(rdir.parent / f".{rdir.name}.lock", "w")  # noqa: SIM115 - held until the process exits
    waited = 0.0
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if waited % 30 == 0:
                log.warning("flow %s: another worker of this flow holds its recovery store %s; waiting for it to"
                            " exit", flow_id, rdir, extra={"flow": flow_id})
            time.sleep(0.5)
            waited += 0.5
