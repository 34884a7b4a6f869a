"""The outbox state machine and the store's durability promises."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from mcsync.errors import ConfigError, PermanentError
from mcsync.state import Problem, SqliteStateStore
from mcsync.state.schema import SCHEMA_VERSION
from mcsync.errors import Location
from mcsync.targets.base import DeliveryState, RemoteRef

from .conftest import make_record

NOW = datetime.now(UTC) + timedelta(seconds=1)


def states(store, target="edubadges"):
    return {r.key: r.state for r in store.rows(target, ["a", "b", "c"]).values()}


def test_state_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "deep" / "state.db"
    s = SqliteStateStore(path)
    s.start_run("sync")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    for extra in (path.with_name("state.db-wal"), path.with_name("state.db-shm")):
        if extra.exists():
            assert stat.S_IMODE(os.stat(extra).st_mode) & 0o077 == 0
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_existing_world_readable_file_is_made_private(tmp_path):
    path = tmp_path / "state.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    SqliteStateStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_schema_is_versioned_and_newer_files_are_refused(tmp_path):
    path = tmp_path / "s.db"
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="schema version 999"):
        SqliteStateStore(path)


def test_desired_change_queues_and_unchanged_does_not(store):
    assert store.set_desired("edubadges", [("a", "h1"), ("b", None)]) == 1   # None without a row: nothing
    assert states(store) == {"a": DeliveryState.PENDING}
    assert store.set_desired("edubadges", [("a", "h1")]) == 0
    ledger = store.ledger("edubadges")
    ledger.begin(["a"])
    ledger.confirm("a", delivered_hash="h1", remote=RemoteRef(remote_id="DA1"))
    assert states(store) == {"a": DeliveryState.SYNCED}
    assert list(store.work("edubadges", NOW)) == []
    assert store.set_desired("edubadges", [("a", "h1")]) == 0
    assert store.set_desired("edubadges", [("a", None)]) == 1            # withdrawal
    row = store.rows("edubadges", ["a"])["a"]
    assert row.state is DeliveryState.PENDING and row.desired_hash is None and row.delivered_hash == "h1"
    assert row.remote.remote_id == "DA1"
    assert store.set_desired("edubadges", [("a", "h1")]) == 1            # back to what is there: in sync
    assert states(store) == {"a": DeliveryState.SYNCED}


def test_in_flight_survives_a_crash_and_keeps_its_state_when_desire_changes(tmp_path):
    path = tmp_path / "s.db"
    s = SqliteStateStore(path)
    s.set_desired("duo", [("a", "h1"), ("b", "h1")])
    s.ledger("duo").begin(["a", "b"], correlation_id="lev-1", data={"body_sha256": "x"})
    s.conn.close()  # the process dies right after the remote call was made
    s = SqliteStateStore(path)
    rows = s.rows("duo", ["a", "b"])
    assert {r.state for r in rows.values()} == {DeliveryState.IN_FLIGHT}
    assert rows["a"].attempts == 1 and rows["a"].remote.correlation_id == "lev-1"
    assert rows["a"].remote.data == {"body_sha256": "x"}
    s.set_desired("duo", [("a", "h2")])
    assert s.rows("duo", ["a"])["a"].state is DeliveryState.IN_FLIGHT   # settle first, then re-send
    s.ledger("duo").confirm("a", delivered_hash="h1", remote=RemoteRef(correlation_id="lev-1"))
    assert s.rows("duo", ["a"])["a"].state is DeliveryState.PENDING
    assert [r.key for r in s.work("duo", NOW)] == ["a", "b"]
    s.close()


def test_submitted_defer_park_and_retry(store):
    store.set_desired("duo", [("a", "h"), ("b", "h"), ("c", "h")])
    ledger = store.ledger("duo")
    ledger.begin(["a", "b", "c"], correlation_id="L1")
    ledger.submitted("a", remote=RemoteRef(correlation_id="L1"))
    ledger.defer("b", reason="R900 temporary failure", retry_after=3600)
    ledger.park("c", error=PermanentError("R201 studielast outside 3–30", code="R201"))
    assert states(store, "duo") == {"a": DeliveryState.SUBMITTED, "b": DeliveryState.PENDING,
                                    "c": DeliveryState.FAILED}
    assert [r.key for r in store.work("duo", NOW)] == ["a"]              # b waits for its not_before
    assert [r.key for r in store.work("duo", NOW + timedelta(hours=2))] == ["a", "b"]
    [failure] = store.failures("duo")
    assert failure.record_id == "c" and failure.code == "R201" and "studielast" in failure.reason
    assert failure.as_json()["target"] == "duo" and failure.as_json()["attempts"] == 1
    assert store.retry(["c"]) == 1
    row = store.rows("duo", ["c"])["c"]
    assert row.state is DeliveryState.PENDING and row.attempts == 0 and store.failures() == []


def test_counts_split_delivered_and_withdrawn(store):
    store.set_desired("edubadges", [("a", "h"), ("b", "h"), ("c", "h")])
    ledger = store.ledger("edubadges")
    ledger.confirm("a", delivered_hash="h", remote=RemoteRef())
    ledger.confirm("b", delivered_hash="h", remote=RemoteRef())
    store.set_desired("edubadges", [("b", None)])
    ledger.confirm("b", delivered_hash=None, remote=RemoteRef())
    assert store.counts() == {"edubadges": {"delivered": 1, "withdrawn": 1, "pending": 1}}


def test_ledger_transaction_groups_and_rolls_back(store):
    store.set_desired("edubadges", [("a", "h"), ("b", "h")])
    ledger = store.ledger("edubadges")
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.confirm("a", delivered_hash="h", remote=RemoteRef())
            raise RuntimeError("boom")
    assert states(store)["a"] is DeliveryState.PENDING


def _committed(path, target="duo"):
    """What another process would see: the committed rows, read through a second connection."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, state FROM deliveries WHERE target = ?", (target,)).fetchall())
    finally:
        conn.close()


def test_deferred_ledger_steps_are_read_back_at_once_and_committed_with_the_next_begin(tmp_path):
    path = tmp_path / "s.db"
    s = SqliteStateStore(path)
    s.set_desired("duo", [("a", "h"), ("b", "h"), ("c", "h")])
    ledger = s.ledger("duo")
    with s.deferred_commits():
        ledger.begin(["a"])
        ledger.confirm("a", delivered_hash="h", remote=RemoteRef(remote_id="r-a"))
        ledger.defer("b", reason="later")
        # this process reads its own steps at once (work, rows, counts), committed or not
        assert states(s, "duo")["a"] is DeliveryState.SYNCED
        assert [r.key for r in s.work("duo", NOW)] == ["b", "c"]
        assert s.counts()["duo"] == {"delivered": 1, "pending": 2}
        ledger.confirm("b", delivered_hash="h", remote=RemoteRef())
        assert _committed(path)["b"] == "pending"          # not committed yet: a crash would undo it
        ledger.begin(["c"], data={"attempt": 1})
        # begin() is durable when it returns, and everything before it is committed with it, in order
        assert _committed(path) == {"a": "synced", "b": "synced", "c": "in_flight"}
        ledger.note("c", note="looked up")
    assert s.rows("duo", ["c"])["c"].note == "looked up"
    assert _committed(path)["c"] == "in_flight"
    s.close()
    s = SqliteStateStore(path)
    assert s.rows("duo", ["c"])["c"].note == "looked up"   # the end of the scope committed the rest
    assert s.rows("duo", ["c"])["c"].remote.data == {"attempt": 1}
    s.close()


def test_a_crash_inside_deferred_commits_undoes_only_steps_after_the_last_begin(tmp_path):
    path = tmp_path / "s.db"
    s = SqliteStateStore(path)
    s.set_desired("duo", [("a", "h"), ("b", "h")])
    s.close()
    child = textwrap.dedent(f"""
        import os
        from mcsync.state import SqliteStateStore
        from mcsync.targets.base import RemoteRef
        s = SqliteStateStore({str(path)!r})
        ledger = s.ledger("duo")
        with s.deferred_commits():
            ledger.begin(["a", "b"])
            ledger.confirm("a", delivered_hash="h", remote=RemoteRef())
            os._exit(3)                                   # the process dies here
    """)
    assert subprocess.run([sys.executable, "-c", child], timeout=60).returncode == 3
    s = SqliteStateStore(path)
    rows = s.rows("duo", ["a", "b"])
    assert {r.state for r in rows.values()} == {DeliveryState.IN_FLIGHT}   # looked up next run, not resent
    assert rows["a"].attempts == 1
    s.close()


@pytest.mark.parametrize("read_inside", [False, True])
def test_a_deferred_ledger_block_that_fails_leaves_nothing_of_itself(store, read_inside):
    store.set_desired("duo", [("a", "h"), ("b", "h")])
    ledger = store.ledger("duo")
    with store.deferred_commits():
        ledger.defer("a", reason="kept: before the block")
        with pytest.raises(RuntimeError):
            with ledger.transaction():
                ledger.begin(["b"])
                ledger.confirm("b", delivered_hash="h", remote=RemoteRef())
                if read_inside:                           # a read writes the buffer under a savepoint
                    assert states(store, "duo")["b"] is DeliveryState.SYNCED
                raise RuntimeError("boom")
        rows = store.rows("duo", ["a", "b"])
        assert rows["b"].state is DeliveryState.PENDING and rows["b"].attempts == 0
        assert rows["a"].note == "kept: before the block"
        with ledger.transaction():
            ledger.confirm("b", delivered_hash="h", remote=RemoteRef())
    assert states(store, "duo")["b"] is DeliveryState.SYNCED


def test_scratch_leaves_no_trace(store, issuer):
    record = make_record(issuer)
    with store.scratch():
        store.put_records([(record, "c", "p")], "run")
        store.set_desired("edubadges", [(str(record.record_id), "h")])
        assert store.record_count() == 1
    assert store.record_count() == 0 and store.counts() == {}


def test_records_round_trip_and_work_pages(store, issuer):
    records = [make_record(issuer, str(1000000 + i)) for i in range(2500)]
    store.put_records([(r, "c", "p") for r in records], "run1")
    store.set_desired("edubadges", [(str(r.record_id), "h") for r in records])
    keys = [row.key for row in store.work("edubadges", NOW)]
    assert keys == [str(r.record_id) for r in records]      # the order they were planned in (not key order)
    ledger = store.ledger("edubadges")
    ledger.begin(keys[1000:1003])
    ledger.submitted(keys[5], remote=RemoteRef(correlation_id="x"))
    again = [row.key for row in store.work("edubadges", NOW)]
    assert again == keys and {r.key: r.state for r in store.work("edubadges", NOW)}[keys[5]] is DeliveryState.SUBMITTED
    back = store.records(keys[:3])
    assert set(back) == set(keys[:3]) and all(r.learner.email for r in back.values())
    assert store.stored([keys[0]])[keys[0]].plan_hash == "p"


def test_work_streams_while_delivering_and_yields_each_row_once(store, issuer):
    records = [make_record(issuer, str(2000000 + i)) for i in range(2500)]
    store.put_records([(r, "c", "p") for r in records], "run1")
    store.set_desired("duo", [(str(r.record_id), "h") for r in records])
    assert store.count_due("duo", NOW) == 2500
    ledger = store.ledger("duo")
    for record in records[::10]:                       # submitted in an earlier run: polled now
        ledger.begin([str(record.record_id)])
        ledger.submitted(str(record.record_id), remote=RemoteRef(correlation_id="L0"))
    seen: list[str] = []
    with store.deferred_commits():
        for row in store.work("duo", NOW, page=100):
            seen.append(row.key)
            # delivered as we go, the way a target moves its chunk on: pages read later must not
            # hand back a row that moved from pending to submitted (or in_flight) meanwhile
            if row.state is DeliveryState.PENDING:
                ledger.begin([row.key])
                ledger.submitted(row.key, remote=RemoteRef(correlation_id="L"))
    assert seen == [str(r.record_id) for r in records]
    assert store.count_due("duo", NOW) == 2500          # all still open: in_flight or submitted
    ledger.defer(seen[0], reason="later", retry_after=3600)
    assert store.count_due("duo", NOW) == 2499 and seen[0] not in {r.key for r in store.work("duo", NOW)}


def test_problems_are_replaced_per_source(store):
    p1 = Problem(Location("osiris", "r.csv", 3, "grade"), "grade 'x' is neither a number")
    p2 = Problem(Location("osiris", "r.csv", 9, "student_number"), "no student number")
    store.replace_problems("osiris", [p1, p2], "run1")
    store.replace_problems("canvas", [Problem(Location("canvas", "c.csv", 2, None), "bad")], "run1")
    store.replace_problems("osiris", [p2], "run2")           # p1 was fixed
    found = store.failures()
    assert [(f.location.source, f.location.line) for f in found] == [("canvas", 2), ("osiris", 9)]
    data = found[1].as_json()
    assert data["file"] == "r.csv" and data["line"] == 9 and data["field"] == "student_number"
    assert data["target"] is None


def test_a_park_with_unknown_outcome_is_not_settled_by_a_correction(store):
    from mcsync.errors import UnknownOutcome

    store.set_desired("edubadges", [("a", "h"), ("b", "h")])
    ledger = store.ledger("edubadges")
    ledger.park("a", error=UnknownOutcome("create unanswered; the learner may hold it", code="outcome_unknown"))
    ledger.park("b", error=PermanentError("no e-mail address"))
    store.set_desired("edubadges", [("a", None), ("b", None)])     # both corrected to a fail
    rows = store.rows("edubadges", ["a", "b"])
    assert rows["a"].state is DeliveryState.FAILED and rows["a"].unsettled    # a person decides
    assert rows["b"].state is DeliveryState.SYNCED                             # nothing was ever out there
    assert store.retry(["a"]) == 1
    row = store.rows("edubadges", ["a"])["a"]
    assert row.state is DeliveryState.PENDING and not row.unsettled
