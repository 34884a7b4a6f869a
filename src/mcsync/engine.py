"""The sync algorithm: read → map → plan → deliver → record.

One run, in order:

1. **Learner directory.** Each `[[learners]]` adapter is streamed into the store's learner table
   (batched). Results are joined to it by student number; the directory is authoritative for
   personal data (names, BSN, date of birth), the export fills the gaps.

2. **Read and map, source by source.** Each source's adapter streams raw rows; each row is mapped
   (`mcsync.mapping.to_record`) to a canonical record, an input problem, or nothing (no result yet).
   A source whose mapping or options are broken is reported as a problem and skipped; the other
   sources go on. Rows are handled in batches of `BATCH` so memory stays flat whatever the export size.
   *One learner, one microcredential, one record*: when two rows (files, sources) give the same
   record_id in one run, the latest result date wins; on the same date fraud beats passed beats the
   rest. Input problems of a source replace that source's previous ones (fixed rows disappear).

3. **Plan.** A record is compared with the store by two hashes: its content hash (the record
   without provenance) and its plan hash (content + the enabled targets' settings). Unchanged
   records are only marked seen: no target is asked anything, so an unchanged run makes no write
   calls. For a changed record each enabled target computes its desired payload hash
   (`Target.desired`), and the store's outbox row for (target, key) is updated (`set_desired`):
   a changed desired hash re-queues the row; a row that is under way keeps its state, and the
   target settles it first. Catalogue targets (RIO) plan per microcredential definition in the
   mapping files instead of per record, before the records (the definitions are known up front).

4. **Deliver.** Targets run side by side on one event loop; a target starts once the targets it
   depends on are done (the DUO register waits for RIO, whose unit codes it needs; Edubadges starts at
   once). With a large backlog, groups of targets that do not wait for each other are delivered in
   processes of their own, a CPU core each (`mcsync.lanes`; `[delivery]` settings); such a process may
   start during step 3 and deliver what is planned so far, and step 3 then waits while a process
   works off a backlog above `delivery.max_backlog` (back-pressure, `Engine._hold_back`). Ledger steps that need not be durable at
   once are committed in groups (see `StateStore.deferred_commits`). Each target gets its due work (pending, in_flight, submitted) in chunks with the
   latest records, and records every step through its ledger (see mcsync.targets.base for the
   crash-safety rule). A target that is down (`TargetUnavailable`) is stopped for this run with
   its work queued; an unexpected error in a target is logged and leaves its items as they are
   (in_flight ones are reconciled on the next run).

   A shutdown request (`stop`, set by the daemon's signal handler) is honoured between chunks and
   during every back-off wait: the delivery in hand finishes or stays in_flight, the rest stays queued.

5. **Report.** A summary (read, mapped, unchanged, problems, per-target outcomes) goes to the log
   and the runs table. Exit code: 1 when something needs a person (parked deliveries, input
   problems), else 75 when a target was unavailable, else 0.

`--dry-run` does steps 1–3 inside a transaction that is rolled back, and reports what step 4 would
send; no remote system is contacted and the state is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from . import inputs, lanes, plugins
from .adapter import Adapter, AdapterContext, LearnerRow, RawResult
from .config import Config, SourceSettings, plugin_settings
from .errors import ConfigError, DeliveryError, InputProblem, Location, ShutdownRequested, TargetUnavailable
from .mapping import Mapping, load_mapping, to_record
from .progress import NoProgress, Progress
from .record import (Learner, MicrocredentialDefinition, MicrocredentialRecord, definition_digest,
                     make_record_key, result_rank, stable_hash)
from .state.store import DeliveryRow, Problem, StateStore, StoredRecord
from .targets.base import DeliveryState, RemoteRef, Target, TargetContext, WorkItem, catalogue_key

log = logging.getLogger("mcsync.engine")

BATCH = 1000
DELIVERY_CHUNK = 2000
#: Back-pressure from delivery lanes during planning (`Engine._hold_back`): how often planning looks at
#: their backlogs, and how long a backlog may stay as it is before planning stops waiting for it.
BACKLOG_CHECK = 0.5
BACKLOG_PATIENCE = 5.0

EXIT_OK = 0
EXIT_NEEDS_PERSON = 1
EXIT_UNAVAILABLE = 75


@dataclass
class TargetReport:
    planned: int = 0          # outbox rows whose desired content changed in this run
    confirmed: int = 0
    withdrawn: int = 0
    submitted: int = 0
    deferred: int = 0
    parked: int = 0
    in_flight: int = 0        # items left with an unknown outcome (reconciled next run)
    unavailable: str | None = None
    error: str | None = None
    seconds: float = 0.0      # time spent delivering to this target


@dataclass
class RunReport:
    run_id: str = ""
    dry_run: bool = False
    read: int = 0             # rows the adapters yielded
    mapped: int = 0           # records made from them
    no_result: int = 0        # rows without a result yet, or of ignored courses
    superseded: int = 0       # duplicate rows that lost to a later result for the same record
    unchanged: int = 0
    changed: int = 0
    problems: int = 0
    learners: int = 0
    vanished: int = 0         # records no longer in their export, withdrawn in this run
    skipped: list[str] = field(default_factory=list)   # inputs whose files did not change: not read
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    targets: dict[str, TargetReport] = field(default_factory=dict)
    interrupted: str | None = None   # a shutdown stopped delivery; the rest is queued
    exit_code: int = EXIT_OK
    started_at: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "dry_run": self.dry_run, "read": self.read, "mapped": self.mapped,
            "no_result": self.no_result, "superseded": self.superseded, "unchanged": self.unchanged,
            "changed": self.changed, "problems": self.problems, "learners": self.learners,
            "vanished": self.vanished, "skipped": self.skipped, "sources": self.sources,
            "targets": {name: {k: v for k, v in vars(t).items() if v not in (None,)}
                        for name, t in self.targets.items()},
            "interrupted": self.interrupted, "exit_code": self.exit_code, "seconds": round(time.monotonic() - self.started_at, 3)}


TransportFactory = Callable[[str], httpx.AsyncBaseTransport | None]


class CountingLedger:
    """Wraps a target's ledger to count outcomes for the run report and the progress display.

    Progress counts each item once: when it is settled (confirmed, deferred, parked) or submitted
    (a later confirmation in the same run of an item submitted in it is not counted again)."""

    def __init__(self, inner: Any, report: TargetReport, progress: Progress | None = None,
                 phase: str = "") -> None:
        self._inner = inner
        self._report = report
        self._progress = progress or NoProgress()
        self._phase = phase
        self._submitted: set[str] = set()
        self.target = inner.target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def confirm(self, key: str, *, delivered_hash: str | None, remote: RemoteRef, note: str | None = None) -> None:
        self._inner.confirm(key, delivered_hash=delivered_hash, remote=remote, note=note)
        if delivered_hash is None:
            self._report.withdrawn += 1
        else:
            self._report.confirmed += 1
        if key not in self._submitted:
            self._progress.advance(self._phase)

    def submitted(self, key: str, *, remote: RemoteRef, note: str | None = None) -> None:
        self._inner.submitted(key, remote=remote, note=note)
        self._report.submitted += 1
        if key not in self._submitted:
            self._submitted.add(key)
            self._progress.advance(self._phase)

    def defer(self, key: str, *, reason: str, retry_after: float | None = None,
              remote: RemoteRef | None = None) -> None:
        self._inner.defer(key, reason=reason, retry_after=retry_after, remote=remote)
        self._report.deferred += 1
        self._progress.advance(self._phase)

    def park(self, key: str, *, error: DeliveryError, remote: RemoteRef | None = None) -> None:
        self._inner.park(key, error=error, remote=remote)
        self._report.parked += 1
        self._progress.advance(self._phase)
        log.warning("parked for a person", extra={"target": self.target, "record_id": key,
                                                  "event": "parked", "reason": error.message})


class Engine:
    """One institution's sync. Construct per run; `run()` does the whole algorithm above."""

    def __init__(self, config: Config, store: StateStore, *,
                 transports: TransportFactory | None = None, sleep: Any = None,
                 today: Callable[[], date] = date.today, stop: threading.Event | None = None,
                 progress: Progress | None = None) -> None:
        self.config = config
        self.progress: Progress = progress or NoProgress()
        self.store = store
        self.issuer = config.settings.institution.issuer()
        self.transports = transports or (lambda name: None)
        self.stop = stop or threading.Event()
        # targets wait through this sleep: it ends at once, with ShutdownRequested, when `stop` is set
        self.sleep = sleep or self._interruptible_sleep
        self.today = today
        self._targets: dict[str, Target] = {}
        self._mappings: dict[str, Mapping] = {}
        # remote systems or waits stood in for (tests): they cannot follow a delivery into another process
        self._stood_in = transports is not None or sleep is not None
        self._lane: set[str] | None = None          # in a lane process: only these targets
        self._given_definitions: dict[str, MicrocredentialDefinition] | None = None
        self._planned: threading.Event | None = None   # in a lane process started during planning
        self._lane_plan: tuple[list[list[str]], int] | None = None   # (groups, at most this many processes)
        self._lanes: list[lanes.LaneProcess] = []   # lane processes of the run in hand
        self._lanes_checked = 0.0
        self._backlog_checked = 0.0                         # back-pressure (_hold_back)
        self._not_waited_for: set[str] = set()              # ... targets whose backlog stopped shrinking
        self.lane_pids: list[int] = []              # delivery processes started by this engine

    # ------------------------------------------------------------------ targets
    def targets(self) -> dict[str, Target]:
        """The enabled targets, constructed, in dependency order."""
        if self._targets:
            return self._targets
        enabled = self.config.enabled_targets()
        built: dict[str, Target] = {}
        context = TargetContext(issuer=self.issuer,
                                eppn_template=self.config.settings.institution.eppn_template,
                                extra={"rio_enabled": "rio" in enabled})
        for name in enabled:
            if self._lane is not None and name not in self._lane:
                continue
            cls = plugins.load(plugins.TARGET_GROUP, name)
            table = dict(self.config.target_table(name) or {})
            settings = plugin_settings(cls.Settings, table, config=self.config, key=f"targets.{name}")
            kwargs: dict[str, Any] = {}
            transport = self.transports(name)
            if transport is not None:
                kwargs["transport"] = transport
            if self.sleep is not None:
                kwargs["sleep"] = self.sleep
            built[name] = cls(settings, context, **kwargs)
        self._targets = dict(_dependency_order(built))
        return self._targets

    def fingerprint(self) -> str:
        """What, besides a record's content, decides what the targets want: their settings."""
        tables = {name: {k: v for k, v in (self.config.target_table(name) or {}).items()
                         if "secret" not in k and "password" not in k and "token" not in k}
                  for name in self.config.enabled_targets()}
        return stable_hash({"targets": tables, "eppn": self.config.settings.institution.eppn_template,
                            "issuer": self.issuer.model_dump(mode="json")})

    # ------------------------------------------------------------------ run
    def run(self, *, dry_run: bool = False, sources: Sequence[str] = (), only_targets: Sequence[str] = (),
            since: date | None = None, until: date | None = None, kind: str = "sync", full: bool = False,
            allow_withdrawals: bool = False) -> RunReport:
        """One run (see the module docstring). `full` reads every export even if its files did not
        change; `allow_withdrawals` overrides the guard against a suddenly shrunken export."""
        self._allow_withdrawals = allow_withdrawals
        report = RunReport(dry_run=dry_run)
        targets = self.targets()
        unknown = [t for t in only_targets if t not in targets]
        if unknown:
            raise ConfigError(f"--target {', '.join(unknown)}: not an enabled target "
                              f"(enabled: {', '.join(targets) or 'none'})")
        report.targets = {name: TargetReport() for name in targets}
        with _fewer_collections():
            return self._run(report, dry_run=dry_run, sources=sources, only_targets=only_targets, since=since,
                             until=until, kind=kind, full=full)

    def _run(self, report: RunReport, *, dry_run: bool, sources: Sequence[str], only_targets: Sequence[str],
             since: date | None, until: date | None, kind: str, full: bool) -> RunReport:
        report.run_id = self.store.start_run("dry-run" if dry_run else kind)
        self._lanes, self._lanes_checked = [], 0.0
        self._backlog_checked, self._not_waited_for = 0.0, set()
        self._lane_plan = None if dry_run else self._plan_lanes(only_targets)
        try:
            if dry_run:
                with self.store.scratch():
                    self._read_and_plan(report, sources, since, until, full)
                    self._preview(report, only_targets)
            else:
                # what planning writes is recomputed after a crash: committed every few seconds
                with self.store.deferred_commits(all_blocks=True):
                    self._read_and_plan(report, sources, since, until, full)
                self._start_lanes(report, planning=False)
                definitions = self.definitions()
                for lane in self._lanes:
                    lane.planned(definitions)
        except BaseException:
            for lane in self._lanes:
                lane.close()
            asyncio.run(self._close_targets())
            raise
        # delivery and closing share one event loop: the targets' connection pools belong to it
        with self.store.deferred_commits(shared=bool(self._lanes)):
            asyncio.run(self._deliver_and_close(report, only_targets, deliver=not dry_run))
        report.exit_code = self._exit_code(report)
        self.store.finish_run(report.run_id, report.exit_code, report.as_dict())
        return report

    async def _deliver_and_close(self, report: RunReport, only_targets: Sequence[str], *, deliver: bool) -> None:
        try:
            if deliver:
                await self._deliver_all(report, only_targets)
        finally:
            await self._close_targets()

    def deliver_lane(self, run_id: str, names: Sequence[str], definitions: dict[str, MicrocredentialDefinition],
                     planned: threading.Event | None = None) -> tuple[dict[str, TargetReport], str | None]:
        """In a lane process (mcsync.lanes): step 4 for these targets of run `run_id`, which the main
        process plans. `planned` is set once planning is over (None: it is). Returns the targets'
        reports, and why delivery stopped early if it did."""
        self._lane = set(names)
        self._given_definitions = definitions        # kept: the final ones are added when planning ends
        self._planned = planned
        report = RunReport(run_id=run_id)
        report.targets = {name: TargetReport() for name in self.targets()}
        with _fewer_collections(), self.store.deferred_commits(shared=True):
            asyncio.run(self._deliver_and_close(report, list(names), deliver=True))
        return report.targets, report.interrupted

    async def _close_targets(self) -> None:
        for target in self._targets.values():
            await target.aclose()
        self._targets = {}

    def _exit_code(self, report: RunReport) -> int:
        if not report.dry_run and self.store.failures():
            return EXIT_NEEDS_PERSON
        if any(t.error for t in report.targets.values()):
            return EXIT_NEEDS_PERSON          # a target stopped by an unexpected error (a bug): see the log
        if report.dry_run and report.problems:
            return EXIT_NEEDS_PERSON
        if report.interrupted or any(t.unavailable for t in report.targets.values()):
            return EXIT_UNAVAILABLE
        return EXIT_OK

    # ------------------------------------------------------------------ 1. learners
    def _load_learners(self, report: RunReport) -> str:
        """Load the learner files that changed; returns the fingerprint of the whole directory."""
        parts: list[str] = []
        for entry in self.config.settings.learners:
            options = entry.all_options()
            key = f"learners:{entry.name}"
            fp = inputs.fingerprint(self.config.base_dir, entry.adapter, options)
            if fp is not None and self.store.input_fingerprint(key) == fp:
                report.skipped.append(key)          # the store holds exactly what this file says
                parts.append(fp)
                continue
            problems: list[Problem] = []
            batch: list[dict[str, Any]] = []
            complete = True
            try:
                adapter = self._adapter(entry.adapter, options, entry.name, expect="learners")
                for item in adapter.read():
                    if isinstance(item, InputProblem):
                        problems.append(Problem(item.location, item.reason))
                        continue
                    assert isinstance(item, LearnerRow)
                    learner = _directory_learner(item)
                    if isinstance(learner, InputProblem):
                        problems.append(Problem(learner.location, learner.reason))
                        continue
                    batch.append(learner)
                    if len(batch) >= BATCH:
                        self.store.put_learners(batch)
                        report.learners += len(batch)
                        batch = []
            except ConfigError as exc:
                complete = False
                problems.append(Problem(Location(entry.name, str(self.config.path), None, "learners"), str(exc)))
            if batch:
                self.store.put_learners(batch)
                report.learners += len(batch)
            self.store.replace_problems(entry.name, problems, report.run_id)
            report.problems += len(problems)
            if fp is not None and complete:
                self.store.set_input_fingerprint(key, fp, report.run_id)
            parts.append(fp if fp is not None and complete else report.run_id)
        return stable_hash(parts)

    # ------------------------------------------------------------------ 2 + 3. read, map, plan
    def _read_and_plan(self, report: RunReport, only_sources: Sequence[str],
                       since: date | None, until: date | None, full: bool) -> None:
        learners = self._load_learners(report)
        base = stable_hash([learners, self.fingerprint(), self.today().isoformat()])
        self.store.clear_seen()           # what this run reads, with each record's winning rank (`result_rank`)
        partial = since is not None or until is not None
        read_in_full: dict[str, str | None] = {}
        chosen = [source for source in self.config.settings.sources
                  if source.enabled and (not only_sources or source.name in only_sources)]
        for source in chosen:                 # the definitions, for catalogue targets: planned first, so
            self._mapping_or_none(source)     # that a lane with RIO can deliver while records are planned
        self._plan_catalogue(report)
        for source in chosen:
            key = f"source:{source.name}"
            fp = None if partial else self._source_fingerprint(source, base)
            if fp is not None and not full and self.store.input_fingerprint(key) == fp:
                report.skipped.append(source.name)
                log.info("source %s: no export file changed since it was last read; skipped", source.name,
                         extra={"source": source.name, "event": "source_unchanged"})
                self._mapping_or_none(source)     # its definitions still count for catalogue targets
                continue
            complete = self._read_source(source, report, base, since, until)
            if complete and not partial:
                read_in_full[source.name] = fp
        refused = self._withdraw_vanished(report, list(read_in_full))
        for name, fp in read_in_full.items():
            # a source the guard stopped is read again next time, so that a decision can still follow
            if fp is not None and name not in refused:
                self.store.set_input_fingerprint(f"source:{name}", fp, report.run_id)

    def _withdraw_vanished(self, report: RunReport, sources: list[str]) -> set[str]:
        """Records that were read from a source before but are in none of this run's exports are
        withdrawn everywhere, unless that looks like a broken export (the guard) rather than a decision.
        Returns the sources the guard stopped."""
        guard = self.config.settings.guard
        refused: set[str] = set()
        for source in sources:
            n_gone, n_known = self.store.unseen_count(source)
            if not n_gone:
                continue
            share = n_gone / n_known
            if not self._allow_withdrawals and (n_gone == n_known or
                                                (n_gone >= guard.min_count and share > guard.max_withdraw_share)):
                reason = (f"the export of source {source} lost {n_gone} of its {n_known} records since the "
                          f"last run; nothing was withdrawn, because an export that shrinks this much is more "
                          f"likely broken or truncated than right. If it is right, run `mcsync sync "
                          f"--allow-withdrawals` once")
                log.error(reason, extra={"source": source, "event": "withdrawal_guard"})
                where = Location(source, str(self.config.path), None, "export")
                self.store.replace_problems(f"{source}:guard", [Problem(where, reason)], report.run_id)
                report.problems += 1
                refused.add(source)
                continue
            self.store.replace_problems(f"{source}:guard", [], report.run_id)
            gone = self.store.unseen_record_ids(source)
            reason = "no longer in the institution's export"
            self.store.set_hold(gone, "vanished", reason)
            self._withdraw(gone)
            report.vanished += len(gone)
            log.warning("source %s: %d records are no longer in the export; withdrawing them", source, len(gone),
                        extra={"source": source, "event": "vanished"})
        return refused

    def _withdraw(self, record_ids: Sequence[str]) -> None:
        """Nothing of these records should be at any per-record target (no target is contacted here)."""
        for name in self.config.enabled_targets():
            if getattr(plugins.load(plugins.TARGET_GROUP, name), "unit", "record") == "record":
                self.store.set_desired(name, [(rid, None) for rid in record_ids])

    def revoke(self, record_ids: Sequence[str], reason: str) -> int:
        """`mcsync revoke`: withdraw these records everywhere and keep them withdrawn, whatever the exports say."""
        known = self.store.stored(record_ids)
        missing = [rid for rid in record_ids if rid not in known]
        if missing:
            raise ConfigError(f"unknown record id(s): {', '.join(missing)}", hint="see `mcsync status`")
        self.store.set_hold(record_ids, "revoked", reason)
        self._withdraw(record_ids)
        return len(record_ids)

    def _source_fingerprint(self, source: SourceSettings, base: str) -> str | None:
        try:
            mapping_text = self.config.resolve(source.mapping).read_bytes()
        except OSError:
            return None
        return inputs.fingerprint(self.config.base_dir, source.adapter, source.options, mapping_text, base)

    def _read_source(self, source: SourceSettings, report: RunReport, base: str,
                     since: date | None, until: date | None) -> bool:
        """Read one source to the end; False when it could not be read completely."""
        stats = report.sources.setdefault(source.name, {"read": 0, "mapped": 0, "problems": 0})
        problems: list[Problem] = []
        try:
            mapping = self._mapping(source)
            adapter = self._adapter(source.adapter, source.options, source.name, expect="results")
        except ConfigError as exc:
            where = Location(source.name, str(getattr(exc, "file", None) or self.config.path), None, "mapping")
            problems.append(Problem(where, exc.message))
            log.error("source %s skipped: %s", source.name, exc, extra={"source": source.name, "event": "source_skipped"})
            self.store.replace_problems(source.name, problems, report.run_id)
            report.problems += 1
            stats["problems"] += 1
            return False
        rows: list[RawResult] = []
        complete = True
        phase = f"read {source.name}"
        scanned = 0
        self.progress.start(phase, None)
        try:
            for item in adapter.read():
                scanned += 1
                if scanned >= BATCH:               # progress counts rows scanned, in range or not
                    self.progress.advance(phase, scanned)
                    scanned = 0
                if isinstance(item, InputProblem):
                    problems.append(Problem(item.location, item.reason))
                    continue
                if not isinstance(item, RawResult):
                    raise TypeError(f"adapter {source.adapter} yielded {type(item).__name__}, not RawResult")
                report.read += 1
                stats["read"] += 1
                if since and item.result_date and item.result_date < since:
                    continue
                if until and item.result_date and item.result_date > until:
                    continue
                rows.append(item)
                if len(rows) >= BATCH:
                    self._map_batch(rows, mapping, report, stats, problems, base)
                    rows = []
                    self._start_lanes(report, planning=True)
                    self._hold_back()
        except Exception as exc:  # an adapter bug or an unreadable export must not stop the other sources
            complete = False
            log.exception("source %s stopped while reading", source.name, extra={"source": source.name})
            problems.append(Problem(Location(source.name, str(source.options.get("path", "")), None, None),
                                    f"reading stopped: {exc}"))
        if rows:
            self._map_batch(rows, mapping, report, stats, problems, base)
        self.progress.advance(phase, scanned)
        self.progress.finish(phase)
        self.store.replace_problems(source.name, problems, report.run_id)
        report.problems += len(problems)
        stats["problems"] += len(problems)
        return complete

    def _map_batch(self, rows: list[RawResult], mapping: Mapping, report: RunReport, stats: dict[str, int],
                   problems: list[Problem], base: str) -> None:
        """Map a batch of rows. A row whose inputs (row, learner, definition, settings) hash to the plan
        hash stored for its record is unchanged: it is counted and nothing else is done with it."""
        # each learner's directory entry as the store keeps it (canonical JSON): hashed as it is,
        # decoded only for the rows that need a record built
        directory = self.store.learner_texts(r.student_number.strip() for r in rows if r.student_number)
        grading = stable_hash([base, mapping.grading.model_dump(mode="json")])
        keyed: list[tuple[RawResult, str | None, str | None]] = []
        for raw in rows:
            has_result = raw.grade is not None or raw.status_hint is not None
            definition = (mapping.definition_for(raw.course_code)
                          if raw.course_code and raw.student_number and has_result else None)
            if definition is None:
                keyed.append((raw, None, None))
                continue
            number = raw.student_number.strip()  # type: ignore[union-attr]
            keyed.append((raw, make_record_key(self.issuer.brin, number, definition.code),
                          _row_hash(raw, directory.get(number), definition_digest(definition), grading)))
        rids = [rid for _, rid, _ in keyed if rid is not None]
        stored = self.store.stored(rids)
        earlier = self.store.seen_ranks(rids)        # read before in this run (another row, file or source)
        winners: dict[str, int] = {}                  # this batch's winners, ranked
        records: dict[str, tuple[MicrocredentialRecord, str]] = {}
        today = self.today()
        for raw, rid, row_hash in keyed:
            before = stored.get(rid) if rid is not None else None
            if (before is not None and before.plan_hash == row_hash and rid not in winners and rid not in earlier
                    and not before.hold):
                # the row that made the stored record had these very inputs, so it has its rank
                rank = before.rank if before.rank is not None else _quick_rank(raw, mapping)
                if rank is not None:
                    winners[rid] = rank          # type: ignore[index]
                    report.mapped += 1
                    report.unchanged += 1
                    stats["mapped"] += 1
                    continue
            known = directory.get(raw.student_number.strip()) if raw.student_number else None
            outcome = to_record(raw, mapping, self.issuer, json.loads(known) if known else None, today=today,
                                record_id=uuid.UUID(rid) if rid else None)
            if outcome is None:
                report.no_result += 1
                continue
            if isinstance(outcome, InputProblem):
                problems.append(Problem(outcome.location, outcome.reason))
                continue
            rid = rid or str(outcome.record_id)
            rank = result_rank(outcome.result.assessment_date, outcome.result.status)
            best = winners.get(rid, earlier.get(rid))
            if best is not None and best >= rank:
                report.superseded += 1
                continue
            if best is None:
                report.mapped += 1
                stats["mapped"] += 1
            winners[rid] = rank
            records[rid] = (outcome, row_hash or "")
        if winners:
            self.store.mark_seen(winners)
        if records:
            self._plan_records(list(records.values()), stored, report)

    def _plan_records(self, records: list[tuple[MicrocredentialRecord, str]],
                      stored: dict[str, StoredRecord], report: RunReport) -> None:
        ids = [str(r.record_id) for r, _ in records]
        missing = [rid for rid in ids if rid not in stored]
        if missing:
            stored = {**stored, **self.store.stored(missing)}
        changed: list[tuple[MicrocredentialRecord, str, str]] = []
        changed_ids: list[str] = []
        for rid, (record, row_hash) in zip(ids, records):
            before = stored.get(rid)
            if before is not None and before.plan_hash == row_hash and not before.hold:
                report.unchanged += 1
            else:
                changed.append((record, record.content_hash(), row_hash))
                changed_ids.append(rid)
        report.changed += len(changed)
        if not changed:
            return
        held = {rid: hold for rid in changed_ids if (hold := stored.get(rid)) is not None and hold.hold}
        back = [rid for rid, s in held.items() if s.hold == "vanished"]
        revoked = {rid for rid, s in held.items() if s.hold == "revoked"}
        # what each target wants, worked out before the write lock is taken (a lane process may be waiting)
        wanted = {name: [(rid, None if rid in revoked else target.desired(rec))
                         for rid, (rec, _, _) in zip(changed_ids, changed)]
                  for name, target in self.targets().items() if target.unit == "record"}
        with self.store.transaction():
            if back:                              # in the export again: planned like any other record
                self.store.set_hold(back, None)
            self.store.put_records(changed, report.run_id)
            for name, rows in wanted.items():
                report.targets[name].planned += self.store.set_desired(name, rows)

    def _plan_catalogue(self, report: RunReport) -> None:
        """Catalogue targets plan per microcredential definition of the mappings read in this run."""
        definitions = self.definitions()
        for name, target in self.targets().items():
            if target.unit != "microcredential":
                continue
            wanted = [(catalogue_key(code), target.desired(d)) for code, d in sorted(definitions.items())]
            report.targets[name].planned += self.store.set_desired(name, wanted)

    def definitions(self) -> dict[str, MicrocredentialDefinition]:
        """All microcredential definitions of the mappings loaded so far, by code."""
        if self._given_definitions is not None:
            return dict(self._given_definitions)
        found: dict[str, MicrocredentialDefinition] = {}
        for mapping in self._mappings.values():
            for definition in mapping.definitions.values():
                found.setdefault(definition.code, definition)
        return found

    # ------------------------------------------------------------------ 4. deliver
    async def _interruptible_sleep(self, seconds: float) -> None:
        self.store.flush()           # what the ledger holds back is committed before a wait, not after it
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.is_set():
                raise ShutdownRequested("stopping: a shutdown was requested during a wait")
            await asyncio.sleep(min(left, 0.1))
        if self.stop.is_set():
            raise ShutdownRequested("stopping: a shutdown was requested during a wait")

    async def _deliver_all(self, report: RunReport, only_targets: Sequence[str]) -> None:
        """Each target starts as soon as the targets it depends on are done; the others run side by side.
        The targets of the run's lane processes are theirs (mcsync.lanes): this waits for them.

        Safe on one store: every ledger call runs on this event loop's thread, and no target awaits
        inside a ledger transaction, so two targets' writes never interleave within a block.
        """
        elsewhere = {name for lane in self._lanes for name in lane.targets}
        chosen = {name: target for name, target in self.targets().items()
                  if (not only_targets or name in only_targets) and name not in elsewhere}
        done: dict[str, asyncio.Event] = {name: asyncio.Event() for name in chosen}

        async def deliver(name: str, target: Target) -> None:
            try:
                for dependency in target.depends_on:
                    if dependency in done:
                        await done[dependency].wait()
                if not report.interrupted:
                    await self._deliver_target(name, target, report)
            finally:
                done[name].set()

        await asyncio.gather(*(deliver(name, target) for name, target in chosen.items()),
                             *(self._await_lane(lane, report) for lane in self._lanes))

    def _plan_lanes(self, only_targets: Sequence[str]) -> tuple[list[list[str]], int] | None:
        """The lanes of this run's targets and how many processes may deliver them; None if all stays
        in this process (a store other than a SQLite file, remote systems stood in for, one core or
        `delivery.processes = 1`, one lane)."""
        from .state.sqlite import SqliteStateStore

        settings = self.config.settings.delivery
        if self._stood_in or not isinstance(self.store, SqliteStateStore) or str(self.store.path) == ":memory:":
            return None
        chosen = {name: target for name, target in self.targets().items()
                  if not only_targets or name in only_targets}
        groups = lanes.split({name: list(target.depends_on) for name, target in chosen.items()})
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        limit = min(len(groups), cores if settings.processes == "auto" else settings.processes)
        return (groups, limit) if limit > 1 else None

    def _start_lanes(self, report: RunReport, *, planning: bool) -> None:
        """Start a process for each lane with at least `delivery.min_backlog` items due, as many as
        allowed. While `planning` (checked at most once a second) any lane may start: this process is
        busy planning. After planning the first lane not started stays here."""
        if self._lane_plan is None:
            return
        if self.stop.is_set():                  # a shutdown while planning goes on: the lanes stop now
            for lane in self._lanes:
                lane.request_stop()
            return
        groups, limit = self._lane_plan
        if len(self._lanes) >= limit:
            return
        if planning:
            if not self.config.settings.delivery.during_planning or time.monotonic() - self._lanes_checked < 1.0:
                return
            self._lanes_checked = time.monotonic()
        started = {name for lane in self._lanes for name in lane.targets}
        waiting = [group for group in groups if group[0] not in started]
        if not planning:
            waiting, limit = waiting[1:], limit - 1
        now = datetime.now(UTC)
        for group in waiting:
            if len(self._lanes) >= limit:
                break
            if sum(self.store.count_due(name, now) for name in group) < self.config.settings.delivery.min_backlog:
                continue
            if planning:
                self.store.share_writes()     # from now on the lane writes too: no lock kept between calls
            job = lanes.LaneJob(config=self.config, state_path=Path(self.store.path),   # type: ignore[attr-defined]
                                run_id=report.run_id, targets=group, definitions=self.definitions(),
                                log_levels={name: logging.getLogger(name or None).level
                                            for name in ("", "httpx", "zeep")},
                                parent_pid=os.getpid(), planning=planning)
            lane = lanes.LaneProcess.start(job, self.progress)
            self._lanes.append(lane)
            self.lane_pids.append(lane.pid)
            log.info("delivering to %s in process %d%s", ", ".join(group), lane.pid,
                     " while planning goes on" if planning else "", extra={"event": "lane_started"})

    def _hold_back(self) -> None:
        """Back-pressure from the lanes started during planning (checked at most every BACKLOG_CHECK
        seconds): while a lane has more than `delivery.max_backlog` items pending for one of its
        targets and keeps working them off, planning waits. The two share the CPU cores, so a lane
        that falls behind would otherwise be left with a long tail once planning is over, with a core
        idle. A lane whose backlog does not shrink for BACKLOG_PATIENCE seconds (its remote is slow or
        refuses, it waits for a retry, it ended) is not waited for again in this run."""
        bound = self.config.settings.delivery.max_backlog
        if not bound or not self._lanes or time.monotonic() - self._backlog_checked < BACKLOG_CHECK:
            return
        for lane in self._lanes:
            for name in lane.targets:
                if name not in self._not_waited_for:
                    self._wait_for_backlog(lane, name, bound)
        self._backlog_checked = time.monotonic()

    def _wait_for_backlog(self, lane: lanes.LaneProcess, name: str, bound: int) -> None:
        """Until `lane` has at most `bound` items pending for target `name` (see `_hold_back`)."""
        started = time.monotonic()
        least, since = None, started            # the smallest backlog seen, and when it was first seen
        while not self.stop.is_set() and lane.running:
            pending = self.store.count_in_state(name, DeliveryState.PENDING)
            if pending <= bound:
                if least is not None:                    # it had to shrink first: say how long we waited
                    log.debug("planning waited %.2f s for %s (back-pressure)", time.monotonic() - started, name,
                              extra={"target": name, "event": "backlog"})
                return
            if least is None or pending < least:
                least, since = pending, time.monotonic()
            elif time.monotonic() - since > BACKLOG_PATIENCE:
                self._not_waited_for.add(name)
                log.info("planning no longer waits for %s: %d items pending, none taken in %.1f s",
                         name, pending, time.monotonic() - since, extra={"target": name, "event": "backlog"})
                return
            time.sleep(0.05)

    async def _await_lane(self, process: lanes.LaneProcess, report: RunReport) -> None:
        lane = process.targets
        outcome = await process.wait(self.stop)
        if outcome is None:
            for name in lane:
                treport = report.targets[name]
                treport.error = (f"its delivery process (pid {process.pid}) ended with exit code "
                                 f"{process.returncode} before it reported; its in_flight items are "
                                 f"reconciled on the next run")
                treport.in_flight = self.store.count_in_state(name, DeliveryState.IN_FLIGHT)
                log.error("target %s: %s", name, treport.error, extra={"target": name, "event": "target_error"})
            return
        for name, fields in outcome.targets.items():
            treport = report.targets[name]
            for key, value in fields.items():
                if key != "planned":            # planning happened here
                    setattr(treport, key, value)
        if outcome.interrupted and not report.interrupted:
            report.interrupted = outcome.interrupted

    async def _deliver_target(self, name: str, target: Target, report: RunReport) -> None:
        treport = report.targets[name]
        phase = f"deliver {name}"
        planned = self._planned          # set: planning is over (a lane started during planning, see mcsync.lanes)
        # a catalogue target's work was planned before any record: one pass
        early = planned is not None and not planned.is_set() and target.unit == "record"
        self.progress.start(phase, None if early else self.store.count_due(name, datetime.now(UTC)))
        ledger = CountingLedger(self.store.ledger(name), treport, self.progress, phase)
        started = time.monotonic()
        handled: set[tuple[str, str | None]] = set()    # (key, desired hash) handled in an earlier pass
        try:
            while True:
                last = not early or planned.is_set()    # type: ignore[union-attr]   (early: planned is set up)
                rows: Iterable[DeliveryRow] = self.store.work(name, datetime.now(UTC))
                if early:
                    if last:                # now the total is known
                        resize = getattr(self.progress, "resize", None)
                        if resize is not None:
                            resize(phase, len(handled) + self.store.count_due(name, datetime.now(UTC)))
                    rows = _once_per_run(rows, handled)
                # due work is streamed a chunk at a time (memory stays flat, whatever the backlog)
                for chunk in self._work_chunks(rows, target):
                    if self.stop.is_set():
                        raise ShutdownRequested("stopping between deliveries: a shutdown was requested")
                    await target.deliver(chunk, ledger)
                if last:
                    break
                await self._planning_pause(planned)    # type: ignore[arg-type]
            finish = getattr(target, "finish", None)     # optional: e.g. read the reports of what was sent
            if finish is not None:
                await finish(ledger)
        except ShutdownRequested as exc:
            report.interrupted = exc.message
            log.warning("%s; %s keeps its remaining work queued", exc.message, name,
                        extra={"target": name, "event": "shutdown"})
        except TargetUnavailable as exc:
            treport.unavailable = exc.message
            log.error("target %s unavailable, its work stays queued: %s", name, exc.message,
                      extra={"target": name, "event": "target_unavailable"})
        except Exception as exc:
            treport.error = f"{type(exc).__name__}: {exc}"
            log.exception("target %s stopped by an unexpected error; its items stay as they are",
                          name, extra={"target": name, "event": "target_error"})
        finally:
            treport.seconds = round(time.monotonic() - started, 3)
            self.progress.finish(phase)
        treport.in_flight = self.store.count_in_state(name, DeliveryState.IN_FLIGHT)

    async def _planning_pause(self, planned: threading.Event, seconds: float = 0.5) -> None:
        """Between passes of a lane started during planning: until more is planned, or planning is over."""
        self.store.flush()
        deadline = time.monotonic() + seconds
        while not planned.is_set() and time.monotonic() < deadline:
            if self.stop.is_set():
                raise ShutdownRequested("stopping: a shutdown was requested while planning went on")
            await asyncio.sleep(0.05)

    def _work_chunks(self, rows: Iterable[DeliveryRow], target: Target) -> Iterator[list[WorkItem]]:
        """Due work in chunks, with the latest records or definitions attached."""
        definitions = self.definitions()
        size = int(getattr(target, "chunk_size", DELIVERY_CHUNK))   # a target may want larger batches
        stream = iter(rows)
        while chunk := list(itertools.islice(stream, size)):
            records = self.store.records([r.key for r in chunk]) if target.unit == "record" else {}
            holds = (self.store.holds([r.key for r in chunk if r.desired_hash is None])
                     if target.unit == "record" else {})
            items = []
            for row in chunk:
                item = WorkItem(key=row.key, state=row.state, desired_hash=row.desired_hash,
                                delivered_hash=row.delivered_hash, attempts=row.attempts, remote=row.remote,
                                note=row.note)
                if target.unit == "record":
                    item.record = records.get(row.key)
                    item.withdraw_reason = holds.get(row.key, (None, None))[1]
                else:
                    item.definition = definitions.get(row.key.removeprefix("mc:"))
                items.append(item)
            yield items

    def _preview(self, report: RunReport, only_targets: Sequence[str]) -> None:
        for name in self.targets():
            if only_targets and name not in only_targets:
                continue
            treport = report.targets[name]
            for row in self.store.work(name, datetime.now(UTC)):
                if row.desired_hash is None:
                    treport.withdrawn += 1
                else:
                    treport.confirmed += 1

    # ------------------------------------------------------------------ plumbing
    def _mapping_or_none(self, source: SourceSettings) -> Mapping | None:
        try:
            return self._mapping(source)
        except ConfigError:
            return None

    def _mapping(self, source: SourceSettings) -> Mapping:
        if source.name not in self._mappings:
            self._mappings[source.name] = load_mapping(self.config.resolve(source.mapping))
        return self._mappings[source.name]

    def _adapter(self, name: str, options: dict[str, Any], source: str, *, expect: str) -> Adapter:
        cls = plugins.load(plugins.ADAPTER_GROUP, name)
        if getattr(cls, "kind", "results") != expect:
            raise ConfigError(f"adapter {name!r} reads {cls.kind}, not {expect}", key=f"{source}.adapter")
        opts = plugin_settings(cls.Options, options, config=self.config, key=f"sources.{source}.options")
        adapter: Adapter = cls(opts, AdapterContext(source=source, base_dir=self.config.base_dir))
        return adapter


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """A run makes millions of short-lived objects and holds a few hundred thousand for a while (a
    chunk of work items with their records, the reports a register delivery waits for). At its
    default thresholds CPython's cycle collector then walks every live object again and again: at
    100,000 records, some fifty full collections took a fifth of the run (measured in bench/).
    mcsync's objects are freed by reference counting; the collector only finds cycles, which are
    rare here. So during a run it runs about seventy times less often; the thresholds are restored
    after (the daemon keeps the interpreter's own between runs)."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _once_per_run(rows: Iterable[DeliveryRow], handled: set[tuple[str, str | None]]) -> Iterator[DeliveryRow]:
    """The rows not handled in an earlier pass of this run with the same desired content."""
    for row in rows:
        mark = (row.key, row.desired_hash)
        if mark not in handled:
            handled.add(mark)
            yield row


def _dependency_order(targets: dict[str, Target]) -> Iterable[tuple[str, Target]]:
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name not in targets:
            return
        if name in path:
            raise ConfigError(f"targets depend on each other in a circle: {' → '.join((*path, name))}")
        for dependency in targets[name].depends_on:
            visit(dependency, (*path, name))
        done.append(name)

    for name in targets:
        visit(name, ())
    return [(name, targets[name]) for name in done]


def _row_hash(raw: RawResult, learner: str | None, definition: str, base: str) -> str:
    """What decides a row's record: the row (not where it stands), its learner (the directory entry's
    canonical JSON), its definition and the settings. Equal hashes mean the record and every
    target's wish are unchanged."""
    values = (raw.student_number, raw.course_code, raw.grade, raw.scale, raw.status_hint, raw.result_date,
              raw.given_name, raw.family_name_prefix, raw.family_name, raw.email, raw.eppn)
    text = repr((values, learner, definition, base))
    return hashlib.sha256(text.encode()).hexdigest()


def _quick_rank(raw: RawResult, mapping: Mapping) -> int | None:
    """The rank of an unchanged row (for duplicate detection) without building its record."""
    if raw.result_date is None:
        return None
    try:
        status, _ = mapping.grading.judge(raw.grade or "", raw.scale, raw.status_hint)
    except ValueError:
        return None
    return result_rank(raw.result_date, status)


def _directory_learner(row: LearnerRow) -> dict[str, Any] | InputProblem:
    """A learner directory row as stored: validated, personal numbers kept (the store is private)."""
    try:
        learner = Learner(student_number=row.student_number.strip(), given_name=row.given_name,
                          family_name_prefix=row.family_name_prefix, family_name=row.family_name,
                          email=row.email or None, eppn=row.eppn or None, date_of_birth=row.date_of_birth,
                          bsn=row.bsn or None, onderwijsnummer=row.onderwijsnummer or None)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = str(first["loc"][0])
        return InputProblem(f"learner {field_name} {first['msg'].removeprefix('Value error, ')}",
                            Location(row.location.source, row.location.file, row.location.line, field_name))
    data = learner.model_dump(mode="json", exclude_none=True)
    for secret in ("bsn", "onderwijsnummer"):
        value = getattr(learner, secret)
        if value is not None:
            data[secret] = value.get_secret_value()
    return data

