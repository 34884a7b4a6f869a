"""Delivery lanes (mcsync.lanes): independent target groups delivered by processes of their own, against
the sandbox on loopback. What must hold: each award and register entry exactly once, whatever the
lane process does (finish, stop, die); its logs, progress and requests reach the main process."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from mcsync import engine as engine_module
from mcsync import http
from mcsync.config import Config, DeliverySettings
from mcsync.engine import EXIT_NEEDS_PERSON, EXIT_OK, EXIT_UNAVAILABLE, Engine, _once_per_run
from mcsync.lanes import LaneProcess, _ForwardingHandler, split
from mcsync.log import JsonFormatter, register_secret
from mcsync.state import SqliteStateStore
from mcsync.state.store import DeliveryRow
from mcsync.targets.base import DeliveryState, RemoteRef

from .e2e_helpers import institution

PASSED = 11


def with_delivery(config: Config, **settings: object) -> Config:
    delivery = DeliverySettings.model_validate({"min_backlog": 1, "processes": 2, **settings})
    return Config(settings=config.settings.model_copy(update={"delivery": delivery}), path=config.path,
                  base_dir=config.base_dir)


class Recorder:
    """A progress display that remembers what it was told, and can act on a phase's start."""

    def __init__(self, on_start=None) -> None:
        self.events: list[tuple[str, str, int | None]] = []
        self.on_start = on_start

    def start(self, phase: str, total: int | None) -> None:
        self.events.append(("start", phase, total))
        if self.on_start:
            self.on_start(phase)

    def advance(self, phase: str, n: int = 1) -> None:
        self.events.append(("advance", phase, n))

    def finish(self, phase: str) -> None:
        self.events.append(("finish", phase, None))


@pytest.fixture
def inst(tmp_path):
    with institution(tmp_path) as inst:
        inst.config = with_delivery(inst.config)
        yield inst


def run(inst, *, setup=None, **engine_options):
    """One run on a fresh store connection; `setup(engine)` first, if given."""
    store = SqliteStateStore(inst.config.state_path)
    try:
        engine = Engine(inst.config, store, **engine_options)
        if setup is not None:
            setup(engine)
        return engine, engine.run()
    finally:
        store.close()


def awards_once(inst) -> None:
    """Every passed record is an award once and a register entry once; nothing else was made."""
    edubadges = inst.sandbox.edubadges
    per_learner = Counter((a.eppn, a.badgeclass) for a in edubadges.direct_awards())
    assert len(per_learner) == PASSED and set(per_learner.values()) == {1}
    assert len(inst.sandbox.duo.registrations) == PASSED


def test_split_keeps_each_target_with_what_it_waits_for() -> None:
    assert split({"rio": [], "edubadges": [], "duo": ["rio"]}) == [["rio", "duo"], ["edubadges"]]
    assert split({"a": [], "b": ["a"], "c": ["b"], "d": []}) == [["a", "b", "c"], ["d"]]
    assert split({"duo": ["rio"], "edubadges": []}) == [["duo"], ["edubadges"]]      # rio not chosen
    assert split({}) == []


def test_a_pass_skips_what_an_earlier_pass_handled_unless_it_was_planned_again_with_new_content() -> None:
    def row(key: str, desired: str | None) -> DeliveryRow:
        moment = datetime(2026, 1, 1, tzinfo=UTC)
        return DeliveryRow("edubadges", key, DeliveryState.PENDING, desired, None, 0, RemoteRef(), None, None,
                           None, moment, moment)

    handled: set[tuple[str, str | None]] = set()
    first = [r.key for r in _once_per_run([row("a", "h1"), row("b", "h1")], handled)]
    second = [r.key for r in _once_per_run([row("a", "h1"), row("b", "h2"), row("c", None)], handled)]
    third = [r.key for r in _once_per_run([row("a", "h1"), row("b", "h2"), row("c", None)], handled)]
    assert (first, second, third) == (["a", "b"], ["b", "c"], [])


def test_a_lane_process_delivers_its_targets_and_its_logs_progress_and_requests_reach_the_main_process(
        inst, caplog) -> None:
    seen: list[str] = []
    undo = http.observe_requests(lambda request, response, seconds: seen.append(str(request.url)))
    progress = Recorder()
    try:
        with caplog.at_level(logging.INFO):
            engine, report = run(inst, progress=progress)
    finally:
        undo()
    assert report.exit_code == EXIT_OK
    assert len(engine.lane_pids) == 1
    lane = engine.lane_pids[0]
    assert lane != os.getpid()
    assert report.targets["edubadges"].confirmed == PASSED           # reported by the lane
    assert report.targets["edubadges"].planned == PASSED             # planned here, not overwritten
    assert report.targets["duo"].confirmed == PASSED and report.targets["rio"].confirmed == 3
    awards_once(inst)
    # the lane's log lines were written here, with its process id
    lane_lines = [r for r in caplog.records if r.process == lane]
    assert any("edubadges: bundle" in r.getMessage() for r in lane_lines)
    assert all(r.process == os.getpid() for r in caplog.records if "RIO" in r.getMessage())
    # its progress: one phase, started with the backlog, advanced to it, finished
    phase = [e for e in progress.events if e[1] == "deliver edubadges"]
    assert phase[0] == ("start", "deliver edubadges", PASSED) and phase[-1][0] == "finish"
    assert sum(n for kind, _, n in phase if kind == "advance") == PASSED
    # its requests were observed here (metrics, watchdog)
    edubadges_url = inst.config.target_table("edubadges")["api_url"]
    assert any(url.startswith(edubadges_url) for url in seen)

    writes = inst.sandbox.write_requests()
    engine, again = run(inst)
    assert again.exit_code == EXIT_OK and engine.lane_pids == []    # nothing due: no process started
    assert inst.sandbox.write_requests() == writes


def test_a_run_with_a_lane_process_leaves_no_pipe_open(inst) -> None:
    def pipes() -> int:
        return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:") for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))

    before = pipes()
    engine, report = run(inst)
    assert report.exit_code == EXIT_OK and len(engine.lane_pids) == 1
    assert pipes() == before          # a daemon runs for years: each run's pipes are closed when it ends


def test_lanes_start_while_planning_goes_on_and_deliver_what_is_planned_later_too(inst, monkeypatch, caplog) -> None:
    monkeypatch.setattr(engine_module, "BATCH", 2)       # planning in many small batches, lanes checked between
    monkeypatch.setattr(engine_module.Engine, "_read_source", _slowed(engine_module.Engine._read_source))
    progress = Recorder()
    with caplog.at_level(logging.INFO):
        engine, report = run(inst, progress=progress)
    assert report.exit_code == EXIT_OK
    early = [r for r in caplog.records if getattr(r, "event", None) == "lane_started"]
    assert len(early) == 2 and all("while planning goes on" in r.getMessage() for r in early)
    assert len(engine.lane_pids) == 2
    assert report.targets["edubadges"].confirmed == PASSED and report.targets["duo"].confirmed == PASSED
    assert report.targets["rio"].confirmed == 3
    awards_once(inst)
    # the lane learnt its total when planning ended, and counted each item once
    phase = [e for e in progress.events if e[1] == "deliver edubadges"]
    assert phase[0] == ("start", "deliver edubadges", None)
    assert sum(n for kind, _, n in phase if kind == "advance") == PASSED
    engine, again = run(inst)
    assert again.exit_code == EXIT_OK and again.changed == 0 and engine.lane_pids == []


def test_with_during_planning_off_the_lanes_start_after_planning(inst, monkeypatch, caplog) -> None:
    inst.config = with_delivery(inst.config, during_planning=False)
    monkeypatch.setattr(engine_module, "BATCH", 2)
    with caplog.at_level(logging.INFO):
        engine, report = run(inst)
    assert report.exit_code == EXIT_OK
    started = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "lane_started"]
    assert len(started) == 1 and "while planning" not in started[0]      # one process, the other lane here
    awards_once(inst)


def test_planning_waits_while_a_lane_works_off_a_backlog_above_max_backlog(inst, monkeypatch, caplog) -> None:
    inst.config = with_delivery(inst.config, max_backlog=1)
    monkeypatch.setattr(engine_module, "BATCH", 2)
    monkeypatch.setattr(engine_module, "BACKLOG_CHECK", 0.0)      # look after every batch
    with caplog.at_level(logging.DEBUG, logger="mcsync.engine"):
        engine, report = run(inst)
    assert report.exit_code == EXIT_OK and len(engine.lane_pids) == 2
    waits = [r for r in caplog.records if getattr(r, "event", None) == "backlog"
             and r.getMessage().startswith("planning waited")]
    assert waits and {r.target for r in waits} <= {"edubadges", "rio", "duo"}
    awards_once(inst)


def test_planning_stops_waiting_for_a_lane_whose_backlog_does_not_shrink(inst, monkeypatch, caplog) -> None:
    inst.config = with_delivery(inst.config, max_backlog=1)
    monkeypatch.setattr(engine_module, "BATCH", 2)
    monkeypatch.setattr(engine_module, "BACKLOG_CHECK", 0.0)
    monkeypatch.setattr(engine_module, "BACKLOG_PATIENCE", 0.05)  # less than a lane process takes to start
    with caplog.at_level(logging.DEBUG, logger="mcsync.engine"):
        engine, report = run(inst)
    assert report.exit_code == EXIT_OK
    events = [(r.target, r.getMessage()) for r in caplog.records if getattr(r, "event", None) == "backlog"]
    given_up = [target for target, message in events if message.startswith("planning no longer waits")]
    assert given_up and len(given_up) == len(set(given_up))        # once per target
    for target in given_up:                                         # ... and not waited for after that
        gave_up_at = next(i for i, (t, m) in enumerate(events) if t == target and "no longer" in m)
        assert all(t != target for t, _ in events[gave_up_at:][1:])
    awards_once(inst)


def _slowed(read_source):
    """Reading takes a while (as a large export does), so that the lanes deliver in several passes."""
    def slow(self, *args, **kwargs):
        time.sleep(0.3)
        return read_source(self, *args, **kwargs)
    return slow


def test_one_process_when_the_setting_says_so_or_the_backlog_is_small(tmp_path) -> None:
    with institution(tmp_path / "one") as inst:
        inst.config = with_delivery(inst.config, processes=1)
        engine, report = run(inst)
        assert report.exit_code == EXIT_OK and engine.lane_pids == []
        awards_once(inst)
    with institution(tmp_path / "small") as inst:
        inst.config = with_delivery(inst.config, min_backlog=PASSED + 1)
        engine, report = run(inst)
        assert report.exit_code == EXIT_OK and engine.lane_pids == []
        awards_once(inst)


def test_a_stop_reaches_the_lane_process_and_the_next_run_delivers_the_rest_once(inst, monkeypatch) -> None:
    boxes: list[Engine] = []
    start = LaneProcess.start

    def start_then_stop(job, progress):
        lane = start(job, progress)
        boxes[0].stop.set()      # as the daemon's signal handler does, while the lane is starting up
        return lane

    monkeypatch.setattr(LaneProcess, "start", staticmethod(start_then_stop))
    engine, report = run(inst, setup=boxes.append)
    assert len(engine.lane_pids) == 1
    assert report.interrupted and report.exit_code == EXIT_UNAVAILABLE
    assert report.targets["edubadges"].confirmed == 0
    assert inst.sandbox.edubadges.direct_awards() == []
    monkeypatch.undo()
    engine, stopped = run(inst, setup=lambda engine: engine.stop.set())   # before delivery: no process at all
    assert stopped.interrupted and engine.lane_pids == [] and inst.sandbox.edubadges.direct_awards() == []
    engine, again = run(inst)
    assert again.exit_code == EXIT_OK and again.targets["edubadges"].confirmed == PASSED
    awards_once(inst)


def test_a_lane_process_that_dies_mid_delivery_leaves_its_items_to_the_next_run(inst) -> None:
    killed: list[int] = []
    engine_box: list[Engine] = []

    def kill_after_the_bundle(request: httpx.Request, response: httpx.Response, seconds: float) -> None:
        # runs here when the lane's answered POST is forwarded: the lane is between POST and confirm, or past it
        if request.method == "POST" and "/directaward/" in str(request.url) and not killed:
            pid = engine_box[0].lane_pids[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    undo = http.observe_requests(kill_after_the_bundle)
    try:
        engine, report = run(inst, setup=engine_box.append)
    finally:
        undo()
    assert killed, "the lane posted no bundle"
    assert report.exit_code == EXIT_NEEDS_PERSON
    assert "exit code -9" in (report.targets["edubadges"].error or "")
    assert report.targets["duo"].confirmed == PASSED          # the other lane was not disturbed
    engine, again = run(inst)
    assert again.exit_code == EXIT_OK
    awards_once(inst)                 # reconciled: found at Edubadges, not sent again
    store = SqliteStateStore(inst.config.state_path)
    try:
        assert store.count_due("edubadges", datetime.now(UTC)) == 0
    finally:
        store.close()


def test_shared_deferred_commits_never_keep_the_write_lock_between_calls(tmp_path) -> None:
    path = tmp_path / "state.db"
    for shared in (False, True):
        store = SqliteStateStore(path)
        with store.transaction():
            store.set_desired("t", [(f"k{shared}", "h")])
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with store.deferred_commits(shared=shared):
                ledger = store.ledger("t")
                ledger.defer(f"k{shared}", reason="later")     # buffered
                store.count_due("t", datetime.now(UTC))         # a read writes the buffer first
                if shared:
                    other.execute("BEGIN IMMEDIATE")            # the write lock is free
                    other.execute("ROLLBACK")
                else:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        other.execute("BEGIN IMMEDIATE")
            row = other.execute("SELECT note FROM deliveries WHERE key = ?", (f"k{shared}",)).fetchone()
            assert row == ("later",)                     # committed when the scope ended, either way
        finally:
            other.close()
            store.close()


def test_a_forwarded_log_record_keeps_its_traceback_and_stays_redacted() -> None:
    register_secret("s3cr3t-value-for-lanes")
    sent: list[object] = []

    class Outbox:
        def send(self, message: object) -> None:
            sent.append(message)

    logger = logging.getLogger("mcsync.test.lanes")
    handler = _ForwardingHandler(Outbox())  # type: ignore[arg-type]
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("token s3cr3t-value-for-lanes refused")
        except ValueError:
            logger.error("target %s failed", "edubadges", exc_info=True, extra={"target": "edubadges"})
    finally:
        logger.removeHandler(handler)
    kind, record = sent[0]
    assert kind == "log" and record.exc_info is None
    line = json.loads(JsonFormatter().format(pickle.loads(pickle.dumps(record))))
    assert line["message"] == "target edubadges failed" and line["target"] == "edubadges"
    assert "ValueError" in line["exception"] and "s3cr3t-value-for-lanes" not in line["exception"]
