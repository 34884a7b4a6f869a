"""The SQLite state store (the embedded default).

Durability choices, and why:
- WAL journal, `synchronous=FULL`: `Ledger.begin()` marks items in_flight *before* a remote call;
  that mark must survive a power cut, or a crash right after the call could make us send again.
- Short transactions (`BEGIN IMMEDIATE` per batch), never one lock for the whole run, so a crash
  loses at most the batch in hand (and that batch is in_flight, so it is reconciled, not re-sent).
- Group commit where a crash cannot lose anything that matters (see "transactions" below): during
  delivery the ledger's steps after `begin()` wait in memory and are written together; planning
  commits every few seconds, with `synchronous=NORMAL` (WAL: a power cut loses the last commits, never
  consistency; the next durable commit of any connection writes them to disk first). Both are redone
  or looked up after a crash, never sent twice.
- The file and its directory are private (0600/0700): the store holds personal data.
- `temp_store=MEMORY`: SQLite needs no temp files outside the state directory (systemd sandboxes).
- a 64 MiB page cache: at 100,000 records the hot tables would not fit SQLite's default 8 MiB.
- the WAL is copied back into the database every 10,000 pages (~40 MB) instead of every 1,000: with
  frequent small commits (a delivery process writing meanwhile, mcsync.lanes) the same hot index
  pages were copied over and over; a full sync of 100,000 records took ~10% longer.
The schema is versioned; `schema.py` holds the migrations, applied in order on open.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import operator
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from ..errors import DeliveryError, Location, UnknownOutcome
from ..record import MicrocredentialDefinition, MicrocredentialRecord, definition_digest, result_rank
from ..targets.base import DeliveryState, RemoteRef
from .schema import migrate
from .store import DeliveryRow, Failure, Problem, RunInfo, StoredRecord

_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
#: `json.dumps(data, separators=(",", ":"))`, with the encoder made once (a ledger step writes one per item)
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_CHUNK = 500  # SQLite's parameter limit is 32766; keep IN (...) lists modest
_OPEN = (DeliveryState.PENDING, DeliveryState.IN_FLIGHT, DeliveryState.SUBMITTED)


def now_utc() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime | None) -> str | None:
    """`_TS` (UTC, microseconds, Z), written with isoformat: strftime costs ten times as much."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)   # ends in Z: aware, UTC


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class SqliteStateStore:
    """`StateStore` on one SQLite file. One instance per process; not shared across threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            _create_private(self.path)
        old_umask = os.umask(0o077)  # the -wal and -shm files are private too
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -65536")    # 64 MiB: the outbox and records stay in memory
        conn.execute("PRAGMA wal_autocheckpoint = 10000")   # see the module docstring
        conn.execute("PRAGMA foreign_keys = ON")
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self._depth = 0
        self._open_since: float | None = None    # a transaction is open (since, monotonic)
        self._must_commit = False                # ... and holds a durable block
        self._lazy_writes = 0                    # ... and this many non-durable blocks
        self._deferring = False                  # inside deferred_commits()
        self._all_lazy = False                   # ... with every block non-durable by default
        self._shared = False                     # ... with another process writing meanwhile
        self._max_age = self.LAZY_MAX_AGE        # ... committing at least this often (seconds)
        self._pending: list[tuple[str, tuple[Any, ...]]] = []   # buffered ledger steps, in order
        self._pending_since = 0.0                # ... the oldest one's (monotonic)
        self._pending_durable = False            # ... one of them is a begin()
        self._ledger_depth = 0                   # inside ledger_block()
        self._block_mark: int | None = None      # ... whose steps start here in _pending
        self._block_savepoint = False            # ... and were partly written under a savepoint
        self._stamp_at, self._stamp_text = 0.0, ""
        self._lock = threading.RLock()
        self._definitions: dict[str, MicrocredentialDefinition] = {}   # by digest: stored and parsed
        with self.transaction():
            migrate(self.db)

    # transactions -------------------------------------------------------------------------------
    # A block is `transaction()`; outside `deferred_commits()` each outermost block is one SQLite
    # transaction, committed when it ends. Inside that scope two things commit less often:
    #
    # - Ledger steps (`SqliteLedger`) are buffered in memory, in order, and written with one
    #   `executemany` per run of equal statements (`_apply_pending`): before anything reads the
    #   deliveries table, before any other block, and at a commit. They are committed with the next
    #   `begin()` (durable: committed before it returns, or before its ledger block ends), before a
    #   wait (`flush()`), at the end of the scope, or once the oldest is LAZY_MAX_AGE seconds old or
    #   LAZY_MAX_WRITES are waiting. A ledger block (`ledger_block()`) that raises drops its own steps
    #   (or rolls back to its savepoint when a read had them written meanwhile).
    # - Blocks that are not `durable` are left in an open SQLite transaction that the next durable
    #   block commits with its own writes (group commit), or the end of the scope, or LAZY_MAX_AGE
    #   seconds, whichever comes first. Such a block still rolls back alone on an exception (a savepoint).
    #
    # `deferred_commits(all_blocks=True)` (planning) makes every block non-durable unless it says
    # otherwise, and commits every PLAN_MAX_AGE seconds: what planning writes is recomputed from the
    # exports after a crash (their fingerprints are committed after it), so a crash loses nothing.
    #
    # `deferred_commits(shared=True)` (another process delivers into the same file meanwhile, see
    # mcsync.lanes): ledger steps are still buffered in memory, but whatever reaches the file is
    # committed before the call returns, so this process never holds SQLite's write lock between
    # calls, and never while it waits for a remote system.
    LAZY_MAX_AGE = 1.0
    PLAN_MAX_AGE = 5.0
    LAZY_MAX_WRITES = 20_000

    @contextlib.contextmanager
    def transaction(self, *, durable: bool | None = None) -> Iterator[None]:
        """A write transaction; nested calls join the outer one. Non-durable blocks may commit later
        (see above); a durable one commits before it returns, with whatever waited before it.
        `durable=None`: durable unless inside `deferred_commits(all_blocks=True)`."""
        if durable is None:
            durable = not self._all_lazy
        with self._lock:
            savepoint = False
            if self._depth == 0:
                self._apply_pending()           # buffered ledger steps come first, in their order
                if self._open_since is None:
                    self.conn.execute("BEGIN IMMEDIATE")
                    self._open_since = time.monotonic()
                else:
                    self.conn.execute("SAVEPOINT block")
                    savepoint = True
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    if savepoint:
                        self.conn.execute("ROLLBACK TO block")
                        self.conn.execute("RELEASE block")
                    else:
                        self.conn.execute("ROLLBACK")
                        self._open_since, self._must_commit, self._lazy_writes = None, False, 0
                raise
            self._depth -= 1
            if durable:
                self._must_commit = True
            else:
                self._lazy_writes += 1
            if self._depth == 0:
                if savepoint:
                    self.conn.execute("RELEASE block")
                if self._ledger_depth == 0 and (
                        self._must_commit or not self._deferring or self._shared
                        or self._lazy_writes >= self.LAZY_MAX_WRITES or self._age() > self._max_age):
                    self._commit()

    def _age(self) -> float:
        assert self._open_since is not None
        return time.monotonic() - self._open_since

    def _commit(self) -> None:
        self.conn.execute("COMMIT")
        self._open_since, self._must_commit, self._lazy_writes = None, False, 0

    @contextlib.contextmanager
    def deferred_commits(self, *, all_blocks: bool = False, shared: bool = False) -> Iterator[None]:
        """Within this scope ledger steps are buffered and non-durable blocks commit together (see
        above); all is committed at its end. `all_blocks`: every block counts as non-durable.
        `shared`: another process writes to the file meanwhile; never keep the write lock between calls."""
        with self._lock:
            outer = not self._deferring
            if outer:
                self._deferring, self._all_lazy, self._shared = True, all_blocks, shared
                self._max_age = self.PLAN_MAX_AGE if all_blocks else self.LAZY_MAX_AGE
                if all_blocks:       # nothing here must survive a power cut: commits need not wait for the disk
                    self.conn.execute("PRAGMA synchronous = NORMAL")
            try:
                yield
            finally:
                if outer:
                    self._deferring, self._all_lazy, self._shared = False, False, False
                    self._max_age = self.LAZY_MAX_AGE
                    self.flush()
                    if all_blocks:
                        self.conn.execute("PRAGMA synchronous = FULL")

    def share_writes(self) -> None:
        """Until the end of this `deferred_commits()` scope another process writes too: commit what is
        open, and from now on keep no write lock between calls (as `shared=True`)."""
        with self._lock:
            if self._deferring:
                self._shared = True
            self.flush()

    def flush(self) -> None:
        """Write and commit what buffered ledger steps and non-durable blocks left open."""
        with self._lock:
            if self._depth == 0 and self._ledger_depth == 0:
                self._apply_pending()
                if self._open_since is not None:
                    self._commit()

    # the ledger's buffer --------------------------------------------------------------------------
    def _ledger_write(self, sql: str, values: tuple[Any, ...], *, durable: bool = False) -> None:
        """One ledger step: buffered inside `deferred_commits()`, else written (and committed) now."""
        if not self._deferring or self._depth:     # outside the scope, or inside a block: join it now
            with self.transaction(durable=durable):
                self.conn.execute(sql, values)
            return
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append((sql, values))
        if durable:
            self._pending_durable = True
        if self._ledger_depth == 0:
            self._settle()

    def _settle(self) -> None:
        """Outside ledger blocks: commit the buffer now if it holds a begin(), or is old or large (or,
        `shared`, whatever a read inside the block wrote already)."""
        due = self._must_commit or (self._shared and self._open_since is not None)
        if self._pending:
            due = due or (self._pending_durable or len(self._pending) >= self.LAZY_MAX_WRITES
                          or time.monotonic() - self._pending_since > self._max_age)
        if due:
            self._apply_pending()
            if self._depth == 0 and self._open_since is not None:
                self._commit()

    def _apply_pending(self) -> None:
        """Write the buffered ledger steps into the open transaction (opening one if needed)."""
        if not self._pending:
            return
        if self._open_since is None and self._depth == 0:
            self.conn.execute("BEGIN IMMEDIATE")
            self._open_since = time.monotonic()
        pending, self._pending = self._pending, []
        mark = self._block_mark
        if mark is not None and not self._block_savepoint:   # a ledger block is open: it may still fail
            self._run(pending[:mark])
            self.conn.execute("SAVEPOINT ledger_block")
            self._block_savepoint = True
            self._run(pending[mark:])
        else:
            self._run(pending)
        if mark is not None:
            self._block_mark = 0
        if self._pending_durable:
            self._must_commit, self._pending_durable = True, False
        self._lazy_writes += 1

    def _run(self, steps: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        for sql, group in itertools.groupby(steps, key=operator.itemgetter(0)):
            self.conn.executemany(sql, [values for _, values in group])

    @contextlib.contextmanager
    def ledger_block(self) -> Iterator[None]:
        """`Ledger.transaction()`: the steps inside are kept or dropped together."""
        with self._lock:
            if not self._deferring or self._depth:
                with self.transaction(durable=False):
                    yield
                return
            outer = self._ledger_depth == 0
            if outer:
                self._block_mark, self._block_savepoint = len(self._pending), False
                durable_before = self._pending_durable
            self._ledger_depth += 1
            try:
                yield
            except BaseException:
                self._ledger_depth -= 1
                if outer:
                    assert self._block_mark is not None
                    del self._pending[self._block_mark:]
                    self._pending_durable = durable_before
                    if self._block_savepoint:
                        self.conn.execute("ROLLBACK TO ledger_block")
                        self.conn.execute("RELEASE ledger_block")
                    self._block_mark, self._block_savepoint = None, False
                raise
            self._ledger_depth -= 1
            if outer:
                if self._block_savepoint:
                    self.conn.execute("RELEASE ledger_block")
                self._block_mark, self._block_savepoint = None, False
                self._settle()

    def _written(self) -> None:
        """Before reading deliveries: the buffered ledger steps are written (not yet committed)."""
        if self._pending:
            with self._lock:
                self._apply_pending()
                if self._shared and self._depth == 0 and self._ledger_depth == 0:
                    self._commit()

    def stamp(self) -> str:
        """The time now as stored (`_TS`), formatted at most once per millisecond."""
        now = time.time()
        if now - self._stamp_at >= 0.001:
            self._stamp_at = now
            self._stamp_text = _ts(datetime.fromtimestamp(now, UTC))
        return self._stamp_text

    @contextlib.contextmanager
    def scratch(self) -> Iterator[None]:
        """Everything written inside is thrown away at the end (`sync --dry-run`)."""
        with self._lock:
            if self._depth:
                raise RuntimeError("scratch() cannot run inside a transaction")
            self.flush()
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0
                self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.flush()
        self.conn.close()

    # runs ----------------------------------------------------------------------------------------
    def start_run(self, kind: str) -> str:
        run_id = uuid.uuid4().hex
        with self.transaction():
            self.conn.execute("INSERT INTO runs(run_id, kind, started_at) VALUES (?, ?, ?)",
                              (run_id, kind, _ts(now_utc())))
        return run_id

    def finish_run(self, run_id: str, exit_code: int, summary: dict[str, Any]) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
                (_ts(now_utc()), exit_code, json.dumps(summary, sort_keys=True), run_id))

    def last_run(self) -> RunInfo | None:
        row = self.conn.execute(
            "SELECT run_id, kind, started_at, finished_at, exit_code, summary FROM runs "
            "WHERE kind != 'dry-run' ORDER BY started_at DESC LIMIT 1").fetchone()
        if row is None:
            return None
        started = _parse_ts(row[2])
        assert started is not None
        return RunInfo(row[0], row[1], started, _parse_ts(row[3]), row[4],
                       json.loads(row[5]) if row[5] else {})

    # input fingerprints -------------------------------------------------------------------------
    def input_fingerprint(self, name: str) -> str | None:
        row = self.conn.execute("SELECT fingerprint FROM inputs WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_input_fingerprint(self, name: str, fingerprint: str, run_id: str) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO inputs(name, fingerprint, run_id, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET fingerprint = excluded.fingerprint, run_id = excluded.run_id, "
                "updated_at = excluded.updated_at", (name, fingerprint, run_id, _ts(now_utc())))

    def forget_input_fingerprints(self) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM inputs")

    # learners --------------------------------------------------------------------------------------
    def put_learners(self, rows: Sequence[dict[str, Any]]) -> None:
        stamp = _ts(now_utc())
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO learners(student_number, data, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(student_number) DO UPDATE SET data = excluded.data, "
                "updated_at = excluded.updated_at WHERE data != excluded.data",
                [(r["student_number"], json.dumps(r, sort_keys=True, default=str), stamp) for r in rows])

    def learner_texts(self, student_numbers: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(student_numbers))
        found: dict[str, str] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(
                f"SELECT student_number, data FROM learners WHERE student_number IN ({marks})", chunk).fetchall())
        return found

    # records --------------------------------------------------------------------------------------
    def stored(self, record_ids: Sequence[str]) -> dict[str, StoredRecord]:
        found: dict[str, StoredRecord] = {}
        for chunk in _chunks(list(record_ids)):
            marks = ",".join("?" * len(chunk))
            for rid, chash, phash, hold, rank in self.conn.execute(
                    f"SELECT record_id, content_hash, plan_hash, hold, rank FROM records WHERE record_id IN ({marks})",
                    chunk):
                found[rid] = StoredRecord(rid, chash, phash, hold, rank)
        return found

    # what this run has read ------------------------------------------------------------------------
    def clear_seen(self) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM run_seen")

    def seen_ranks(self, record_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(list(record_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(
                f"SELECT record_id, rank FROM run_seen WHERE record_id IN ({marks})", chunk).fetchall())
        return found

    def mark_seen(self, ranks: dict[str, int]) -> None:
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO run_seen(record_id, rank) VALUES (?, ?) ON CONFLICT(record_id) DO UPDATE "
                "SET rank = max(rank, excluded.rank)", ranks.items())

    def unseen_count(self, source: str) -> tuple[int, int]:
        """(records of this source not read in this run, records of this source), held ones left out."""
        known, unseen = self.conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM run_seen s WHERE "
            "s.record_id = r.record_id)) FROM records r WHERE source = ? AND hold IS NULL", (source,)).fetchone()
        return int(unseen), int(known)

    def unseen_record_ids(self, source: str) -> list[str]:
        return [row[0] for row in self.conn.execute(
            "SELECT record_id FROM records r WHERE source = ? AND hold IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM run_seen s WHERE s.record_id = r.record_id)", (source,))]

    def set_hold(self, record_ids: Sequence[str], hold: str | None, reason: str | None = None) -> None:
        stamp = _ts(now_utc())
        with self.transaction():
            self.conn.executemany(
                "UPDATE records SET hold = ?, hold_reason = ?, plan_hash = '', updated_at = ? WHERE record_id = ?",
                [(hold, reason if hold else None, stamp, rid) for rid in record_ids])

    def holds(self, record_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        found: dict[str, tuple[str, str | None]] = {}
        for chunk in _chunks(list(record_ids)):
            marks = ",".join("?" * len(chunk))
            for rid, hold, reason in self.conn.execute(
                    f"SELECT record_id, hold, hold_reason FROM records WHERE hold IS NOT NULL "
                    f"AND record_id IN ({marks})", chunk):
                found[rid] = (hold, reason)
        return found

    def put_records(self, rows: Sequence[tuple[MicrocredentialRecord, str, str]], run_id: str) -> None:
        stamp = _ts(now_utc())
        params = []
        definitions: dict[str, MicrocredentialDefinition] = {}
        for rec, chash, phash in rows:
            digest = definition_digest(rec.microcredential)
            if digest not in self._definitions:
                definitions[digest] = rec.microcredential
            params.append((str(rec.record_id), rec.provenance.source, rec.learner.student_number,
                           rec.microcredential.code, rec.result.status.value, chash, phash, rec.to_state_parts(),
                           digest, rec.provenance.file, rec.provenance.line, run_id, run_id, stamp,
                           result_rank(rec.result.assessment_date, rec.result.status)))
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO definitions(digest, code, data) VALUES (?, ?, ?) ON CONFLICT(digest) DO NOTHING",
                [(digest, d.code, d.model_dump_json()) for digest, d in definitions.items()])
            self.conn.executemany(
                "INSERT INTO records(record_id, source, student_number, code, status, content_hash, "
                "plan_hash, data, definition, file, line, first_run, seen_run, updated_at, rank) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(record_id) DO UPDATE SET source = excluded.source, status = excluded.status, "
                "content_hash = excluded.content_hash, plan_hash = excluded.plan_hash, data = excluded.data, "
                "definition = excluded.definition, file = excluded.file, line = excluded.line, "
                "seen_run = excluded.seen_run, updated_at = excluded.updated_at, rank = excluded.rank", params)
        self._definitions.update(definitions)   # only once committed (a rollback would leave them unknown)

    def records(self, record_ids: Sequence[str]) -> dict[str, MicrocredentialRecord]:
        found: dict[str, MicrocredentialRecord] = {}
        for chunk in _chunks(list(record_ids)):
            marks = ",".join("?" * len(chunk))
            for rid, data, digest in self.conn.execute(
                    f"SELECT record_id, data, definition FROM records WHERE record_id IN ({marks})", chunk):
                if digest is None:                      # written before schema v5: the whole record
                    found[rid] = MicrocredentialRecord.from_state_json(data)
                else:
                    found[rid] = MicrocredentialRecord.from_state_parts(rid, data, self._definition(digest))
        return found

    def _definition(self, digest: str) -> MicrocredentialDefinition:
        """A stored definition, parsed once per store (definitions never change under their digest)."""
        definition = self._definitions.get(digest)
        if definition is None:
            row = self.conn.execute("SELECT data FROM definitions WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                raise LookupError(f"the state file lacks definition {digest} that a record refers to")
            definition = self._definitions[digest] = MicrocredentialDefinition.model_validate_json(row[0])
        return definition

    def record_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM records").fetchone()[0])

    def result_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, count(*) FROM records GROUP BY status").fetchall())

    # deliveries -------------------------------------------------------------------------------------
    def set_desired(self, target: str, wanted: Sequence[tuple[str, str | None]]) -> int:
        changed = 0
        stamp = _ts(now_utc())
        for chunk in _chunks(list(wanted)):
            keys = [key for key, _ in chunk]
            existing = {r.key: r for r in self._rows(target, keys)}
            inserts, updates = [], []
            for key, desired in chunk:
                row = existing.get(key)
                if row is None:
                    if desired is not None:
                        inserts.append((target, key, DeliveryState.PENDING.value, desired, stamp, stamp))
                    continue
                if row.desired_hash == desired:
                    continue
                if row.state in (DeliveryState.IN_FLIGHT, DeliveryState.SUBMITTED):
                    state = row.state  # settle what is under way first; confirm() re-queues
                elif row.state is DeliveryState.FAILED and row.unsettled:
                    state = row.state  # what the remote holds is unknown: a person decides, not the hashes
                elif desired == row.delivered_hash:
                    state = DeliveryState.SYNCED
                else:
                    state = DeliveryState.PENDING
                updates.append((desired, state.value, stamp, stamp, target, key))
            if inserts or updates:
                with self.transaction():
                    self.conn.executemany(
                        "INSERT INTO deliveries(target, key, state, desired_hash, since, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", inserts)
                    self.conn.executemany(
                        "UPDATE deliveries SET desired_hash = ?, state = ?, attempts = CASE WHEN state "
                        "IN ('in_flight', 'submitted') THEN attempts ELSE 0 END, error_code = NULL, "
                        "not_before = NULL, since = ?, updated_at = ? WHERE target = ? AND key = ?", updates)
                changed += len(inserts) + len(updates)
        return changed

    _ROW_COLUMNS = ("target, key, state, desired_hash, delivered_hash, attempts, remote_id, "
                    "correlation_id, remote_data, note, error_code, not_before, since, updated_at, unsettled")

    @staticmethod
    def _row(values: Sequence[Any]) -> DeliveryRow:
        since = _parse_ts(values[12])
        updated = _parse_ts(values[13])
        assert since is not None and updated is not None
        return DeliveryRow(
            target=values[0], key=values[1], state=DeliveryState(values[2]), desired_hash=values[3],
            delivered_hash=values[4], attempts=values[5],
            remote=RemoteRef(remote_id=values[6], correlation_id=values[7],
                             data=json.loads(values[8]) if values[8] else {}),
            note=values[9], error_code=values[10], not_before=_parse_ts(values[11]),
            since=since, updated_at=updated, unsettled=bool(values[14]))

    def _rows(self, target: str, keys: Sequence[str]) -> list[DeliveryRow]:
        self._written()
        marks = ",".join("?" * len(keys))
        cursor = self.conn.execute(
            f"SELECT {self._ROW_COLUMNS} FROM deliveries WHERE target = ? AND key IN ({marks})",
            [target, *keys])
        return [self._row(values) for values in cursor.fetchall()]

    def rows(self, target: str, keys: Sequence[str]) -> dict[str, DeliveryRow]:
        found: dict[str, DeliveryRow] = {}
        for chunk in _chunks(list(keys)):
            found.update((r.key, r) for r in self._rows(target, chunk))
        return found

    def work(self, target: str, now: datetime, *, page: int = 1000) -> Iterator[DeliveryRow]:
        """Due rows in the order they were planned: one keyset-paged stream per open state (each an
        index range on (target, state, rowid), so a target with nothing due costs nothing), merged.
        Planned order keeps the rows one delivery takes together next to each other on disk.

        Rows are read a page at a time, so the caller may deliver (change states) while it iterates:
        every page starts after the last row yielded (`cursor`), so a row that was yielded once and
        then moved to another open state (pending → submitted) is not yielded again in this pass."""
        cursor = [0]

        def yielded() -> Iterator[DeliveryRow]:
            for rowid, row in heapq.merge(*(self._work_in_state(target, state, now, page, cursor)
                                            for state in _OPEN), key=lambda pair: pair[0]):
                if rowid > cursor[0]:
                    cursor[0] = rowid
                    yield row

        return yielded()

    def _work_in_state(self, target: str, state: DeliveryState, now: datetime,
                       page: int, cursor: list[int]) -> Iterator[tuple[int, DeliveryRow]]:
        self._written()
        last = 0
        stamp = _ts(now)
        while True:
            rows = [(values[0], self._row(values[1:])) for values in self.conn.execute(
                f"SELECT rowid, {self._ROW_COLUMNS} FROM deliveries WHERE target = ? AND state = ? AND rowid > ? "
                "AND (not_before IS NULL OR not_before <= ?) ORDER BY rowid LIMIT ?",
                [target, state.value, max(last, cursor[0]), stamp, page]).fetchall()]
            yield from rows
            if len(rows) < page:
                return
            last = rows[-1][0]
            self._written()

    def count_due(self, target: str, now: datetime) -> int:
        """How many rows `work()` would yield now."""
        self._written()
        marks = ",".join("?" * len(_OPEN))
        return int(self.conn.execute(
            f"SELECT count(*) FROM deliveries WHERE target = ? AND state IN ({marks}) "
            "AND (not_before IS NULL OR not_before <= ?)",
            [target, *(state.value for state in _OPEN), _ts(now)]).fetchone()[0])

    def count_in_state(self, target: str, state: DeliveryState) -> int:
        self._written()
        return int(self.conn.execute("SELECT count(*) FROM deliveries WHERE target = ? AND state = ?",
                                     (target, state.value)).fetchone()[0])

    def counts(self) -> dict[str, dict[str, int]]:
        self._written()
        result: dict[str, dict[str, int]] = {}
        for target, state, has_delivered, n in self.conn.execute(
                "SELECT target, state, delivered_hash IS NOT NULL, count(*) FROM deliveries "
                "GROUP BY target, state, delivered_hash IS NOT NULL"):
            result.setdefault(target, {})
            label = state if state != DeliveryState.SYNCED else ("delivered" if has_delivered else "withdrawn")
            result[target][label] = result[target].get(label, 0) + n
        return result

    def ledger(self, target: str) -> SqliteLedger:
        return SqliteLedger(self, target)

    def retry(self, record_ids: Sequence[str] | None, target: str | None = None) -> int:
        sql = ("UPDATE deliveries SET state = 'pending', attempts = 0, error_code = NULL, unsettled = 0, "
               "not_before = NULL, note = 'queued again by mcsync retry', updated_at = ? WHERE state = 'failed'")
        base: list[Any] = [_ts(now_utc())]
        if target is not None:
            sql += " AND target = ?"
            base.append(target)
        total = 0
        with self.transaction():
            if record_ids is None:
                total = self.conn.execute(sql, base).rowcount
            else:
                for chunk in _chunks(list(record_ids)):
                    marks = ",".join("?" * len(chunk))
                    total += self.conn.execute(sql + f" AND key IN ({marks})", [*base, *chunk]).rowcount
        return total

    # problems and failures ---------------------------------------------------------------------------
    def replace_problems(self, source: str, problems: Sequence[Problem], run_id: str) -> None:
        stamp = _ts(now_utc())
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO problems(source, fingerprint, file, line, field, reason, record_id, since, seen_run) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(source, fingerprint) DO UPDATE SET "
                "line = excluded.line, seen_run = excluded.seen_run",
                [(source, _fingerprint(p), p.location.file, p.location.line, p.location.field, p.reason,
                  p.record_id, stamp, run_id) for p in problems])
            self.conn.execute("DELETE FROM problems WHERE source = ? AND seen_run != ?", (source, run_id))

    def failures(self, target: str | None = None) -> list[Failure]:
        self._written()
        found: list[Failure] = []
        sql = ("SELECT target, key, note, error_code, attempts, since FROM deliveries WHERE state = 'failed'")
        params: list[Any] = []
        if target is not None:
            sql += " AND target = ?"
            params.append(target)
        for tgt, key, note, code, attempts, since in self.conn.execute(sql + " ORDER BY since, key", params):
            moment = _parse_ts(since)
            assert moment is not None
            found.append(Failure(record_id=key, target=tgt, reason=note or "failed", attempts=attempts,
                                 since=moment, code=code))
        if target is None:
            for source, file, line, fld, reason, rid, since in self.conn.execute(
                    "SELECT source, file, line, field, reason, record_id, since FROM problems "
                    "ORDER BY source, file, line"):
                moment = _parse_ts(since)
                assert moment is not None
                found.append(Failure(record_id=rid, target=None, reason=reason, attempts=0, since=moment,
                                     location=Location(source, file, line, fld)))
        return found


def _fingerprint(problem: Problem) -> str:
    loc = problem.location
    return f"{loc.file}\x1f{loc.line}\x1f{loc.field}\x1f{problem.reason}"


class SqliteLedger:
    """The `Ledger` of one target over a `SqliteStateStore` (its steps go through the store's buffer)."""

    def __init__(self, store: SqliteStateStore, target: str) -> None:
        self.store = store
        self.target = target

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return self.store.ledger_block()

    def _update(self, key: str, assignments: str, params: Sequence[Any]) -> None:
        self.store._ledger_write(f"UPDATE deliveries SET {assignments}, updated_at = ? WHERE target = ? AND key = ?",
                                 (*params, self.store.stamp(), self.target, key))

    @staticmethod
    def _remote_params(remote: RemoteRef) -> list[Any]:
        return [remote.remote_id, remote.correlation_id, _COMPACT.encode(remote.data) if remote.data else "{}"]

    def begin(self, keys: Sequence[str], *, correlation_id: str | None = None,
              data: dict[str, Any] | None = None) -> None:
        stamp = self.store.stamp()
        assignments = "state = 'in_flight', attempts = attempts + 1, updated_at = ?"
        params: list[Any] = [stamp]
        if correlation_id is not None:
            assignments += ", correlation_id = ?"
            params.append(correlation_id)
        if data is not None:
            assignments += ", remote_data = json_patch(coalesce(remote_data, '{}'), ?)"
            params.append(json.dumps(data))
        sql = f"UPDATE deliveries SET {assignments} WHERE target = ? AND key = ?"
        with self.store.ledger_block():       # durable: committed before the remote call
            for key in keys:
                self.store._ledger_write(sql, (*params, self.target, key), durable=True)

    def submitted(self, key: str, *, remote: RemoteRef, note: str | None = None) -> None:
        self._update(key, "state = 'submitted', remote_id = ?, correlation_id = ?, remote_data = ?, note = ?",
                     [*self._remote_params(remote), note])

    def confirm(self, key: str, *, delivered_hash: str | None, remote: RemoteRef,
                note: str | None = None) -> None:
        self._update(
            key, "delivered_hash = ?, state = CASE WHEN desired_hash IS ? THEN 'synced' ELSE 'pending' END, "
            "remote_id = ?, correlation_id = ?, remote_data = ?, note = ?, error_code = NULL, not_before = NULL",
            [delivered_hash, delivered_hash, *self._remote_params(remote), note])

    def defer(self, key: str, *, reason: str, retry_after: float | None = None,
              remote: RemoteRef | None = None) -> None:
        not_before = _ts(now_utc() + timedelta(seconds=retry_after)) if retry_after else None
        assignments = "state = 'pending', note = ?, not_before = ?"
        params: list[Any] = [reason, not_before]
        if remote is not None:
            assignments += ", remote_id = ?, correlation_id = ?, remote_data = ?"
            params += self._remote_params(remote)
        self._update(key, assignments, params)

    def park(self, key: str, *, error: DeliveryError, remote: RemoteRef | None = None) -> None:
        assignments = "state = 'failed', note = ?, error_code = ?, since = ?, unsettled = ?"
        params: list[Any] = [str(error), error.code, self.store.stamp(),   # the message and what to do
                             int(isinstance(error, UnknownOutcome))]
        if remote is not None:
            assignments += ", remote_id = ?, correlation_id = ?, remote_data = ?"
            params += self._remote_params(remote)
        self._update(key, assignments, params)

    def note(self, key: str, *, remote: RemoteRef | None = None, note: str | None = None) -> None:
        assignments, params = "note = coalesce(?, note)", [note]
        if remote is not None:
            assignments += ", remote_id = ?, correlation_id = ?, remote_data = ?"
            params += self._remote_params(remote)
        self._update(key, assignments, params)

    def lookup(self, target: str, key: str) -> tuple[DeliveryState, str | None, RemoteRef] | None:
        rows = self.store._rows(target, [key])
        if not rows:
            return None
        return rows[0].state, rows[0].delivered_hash, rows[0].remote
