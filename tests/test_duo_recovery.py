"""Nothing lost, nothing twice: the DUO target dies at every step of a delivery, restarts, and the
register ends up holding each record from exactly one delivery."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from mcsync.record import MicrocredentialRecord
from mcsync.sandbox.base import SandboxServer
from mcsync.sandbox.duo import MOUNT, DuoRegisterSimulator
from mcsync.state import SqliteStateStore
from mcsync.targets.base import DeliveryState, RemoteRef
from mcsync.targets.duo.target import Sent

from .conftest import REPO, make_record
from .duo_helpers import UNIT_CODE, Harness, asynctest, bsns, keys

BSN = bsns(10, start=300000000)
WRITES = ("begin", "submitted", "confirm", "defer", "park", "note")


class Crash(BaseException):
    """The process dies here (a BaseException: nothing in the target may swallow it)."""


class CrashingLedger:
    """The real ledger, except that the process 'dies' just before its `at`-th write call."""

    def __init__(self, inner: Any, at: int) -> None:
        self.inner = inner
        self.at = at
        self.calls = 0
        self.target = inner.target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.at:
                raise Crash(f"killed before {name} #{self.calls}")
            return attr(*args, **kwargs)
        return write


class DieOnPost(httpx.AsyncBaseTransport):
    """The process dies while posting: after the ledger's begin(), before the register sees anything."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise Crash("killed during the POST")
        return await self.inner.handle_async_request(request)


def passed(issuer, n: int) -> list[MicrocredentialRecord]:
    return [make_record(issuer, str(3310450 + i), bsn=SecretStr(BSN[i])) for i in range(n)]


async def die_during_the_post(h: Harness, records: list[MicrocredentialRecord]) -> Harness:
    """Plan `records` and run a delivery that dies after begin(), before the register sees the POST."""
    h.confirm_rio()
    h.plan(*records)
    await h.aclose()
    h.transport = DieOnPost(h.transport)
    h.target = h.new_target()
    with pytest.raises(Crash):
        await h.deliver()
    await h.aclose()
    return h


async def registered(h: Harness, records: list[MicrocredentialRecord]) -> list[MicrocredentialRecord]:
    h.confirm_rio()
    h.plan(*records)
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    return records


def sent(levering_id: str, holder: str, sent_hash: str | None) -> dict[str, Any]:
    """Ledger data of a delivery under way whose body is not stored (as `Sent` holds it)."""
    return {"levering_id": levering_id, "body_sha256": "0" * 64, "holder": holder, "kind": "resultaat",
            "sent_hash": sent_hash}


def restart(h: Harness) -> Harness:
    """A new process: the state file reopened, a new target; the register (sim) lives on."""
    path = h.store.path
    h.store.close()
    again = Harness(SqliteStateStore(path), h.issuer, sim=h.sim, clock=h.clock)
    again.records = dict(h.records)
    return again


def assert_once_each(h: Harness, records: list[MicrocredentialRecord]) -> None:
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    for rid in keys(records):
        assert len(h.sim.deliveries_with(rid)) == 1
        assert [status for _, status, _ in h.sim.processed(rid)] == ["geaccepteerd"]
        assert h.sim.registered(rid).status == "geregistreerd"


async def _first_run_write_count(store_path, issuer) -> int:
    h = Harness(SqliteStateStore(store_path), issuer)
    h.confirm_rio()
    h.plan(*passed(issuer, 3))
    counter = CrashingLedger(h.store.ledger("duo"), at=0)
    await h.deliver(ledger=counter)
    await h.aclose()
    h.store.close()
    return counter.calls


@asynctest
async def test_the_crash_points_cover_every_write_of_a_delivery(tmp_path, issuer) -> None:
    # begin x3, submitted x3, confirm x3: the parametrised test below dies before each of them
    assert await _first_run_write_count(tmp_path / "count.db", issuer) == 9


@pytest.mark.parametrize("at", range(1, 10))
@asynctest
async def test_dying_before_any_ledger_write_never_sends_a_record_twice(store, issuer, at) -> None:
    h = Harness(store, issuer)
    h.confirm_rio()
    records = passed(issuer, 3)
    h.plan(*records)
    with pytest.raises(Crash):
        await h.deliver(ledger=CrashingLedger(store.ledger("duo"), at))
    await h.aclose()

    h = restart(h)
    await h.deliver()
    await h.deliver()
    assert_once_each(h, records)
    assert len(h.sim.deliveries_received) == 1
    await h.aclose()
    h.store.close()


@asynctest
async def test_dying_during_the_post_re_posts_the_stored_body_under_the_same_leveringid(store, issuer) -> None:
    h = Harness(store, issuer)
    records = passed(issuer, 3)
    h = await die_during_the_post(h, records)
    rows = [h.row(r) for r in records]
    assert {r.state for r in rows} == {DeliveryState.IN_FLIGHT}
    [levering_id] = {r.correlation_id for r in (row.remote for row in rows)}
    stored = {Sent.model_validate(r.remote.data).body_sha256 for r in rows}
    assert h.sim.posts == 0

    h = restart(h)
    await h.deliver()
    assert h.sim.deliveries_received == [levering_id]
    assert {hashlib.sha256(h.sim.delivery_body(levering_id)).hexdigest()} == stored
    assert_once_each(h, records)
    await h.aclose()
    h.store.close()


@asynctest
async def test_recovery_works_when_the_engine_hands_a_delivery_over_in_chunks(store, issuer) -> None:
    records = passed(issuer, 4)
    h = restart(await die_during_the_post(Harness(store, issuer), records))
    items = h.work()
    holder = Sent.model_validate(items[0].remote.data).holder
    # the chunk without the row that keeps the body goes first: the body is fetched from the ledger
    later, first = [i for i in items if i.key == holder], [i for i in items if i.key != holder]
    await h.target.deliver(first, h.store.ledger("duo"))
    await h.target.deliver(later, h.store.ledger("duo"))
    await h.target.finish(h.store.ledger("duo"))
    assert_once_each(h, records)
    assert len(h.sim.deliveries_received) == 1 and h.sim.posts == 1
    await h.aclose()
    h.store.close()


@asynctest
async def test_a_body_that_is_no_longer_stored_is_settled_by_looking_each_record_up(store, issuer) -> None:
    h = Harness(store, issuer)
    records = await registered(h, passed(issuer, 2))
    # A later version of one record is under way when the body is lost (another install, a restore).
    lost = "9d7c1c1e-2c61-4b8e-9d4f-5f8a7e6b1c2d"
    h.plan(*[make_record(issuer, r.learner.student_number, bsn=r.learner.bsn, grade="9") for r in records[:1]])
    for record in records:
        row = h.row(record)
        store.ledger("duo").begin([row.key], correlation_id=lost, data=sent(lost, keys(records)[0], row.desired_hash))
    await h.deliver()
    unchanged, changed = records[1], records[0]
    assert h.state(unchanged) is DeliveryState.SYNCED                       # the register holds it: done
    assert "the register holds this content" in h.row(unchanged).note
    row = h.row(changed)
    assert row.state is DeliveryState.PENDING and "goes again in a new delivery" in row.note
    await h.deliver()
    assert h.state(changed) is DeliveryState.SYNCED
    assert h.sim.registered(str(changed.record_id)).text("resultaat") == "9"
    assert len(h.sim.deliveries_received) == 2
    await h.aclose()


@asynctest
async def test_a_delivery_the_register_forgot_is_reconciled_per_record(store, issuer) -> None:
    h = Harness(store, issuer)
    records = await registered(h, passed(issuer, 2))
    forgotten = "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b"
    h.plan(*[make_record(issuer, r.learner.student_number, bsn=r.learner.bsn, grade="6") for r in records])
    for record in records:
        row = h.row(record)
        store.ledger("duo").submitted(row.key, remote=RemoteRef(
            remote_id=row.key, correlation_id=forgotten, data=sent(forgotten, row.key, row.desired_hash)))
    await h.deliver()
    for record in records:
        row = h.row(record)
        assert row.state is DeliveryState.PENDING and f"no longer knows delivery {forgotten}" in row.note
    await h.deliver()
    assert {h.sim.registered(k).text("resultaat") for k in keys(records)} == {"6"}
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    await h.aclose()


CHILD = textwrap.dedent("""
    import asyncio, json, os, signal, sys
    from pydantic import SecretStr
    sys.path.insert(0, {repo!r})
    from mcsync.record import Issuer
    from mcsync.state import SqliteStateStore
    from mcsync.targets.base import TargetContext
    from mcsync.targets.duo import DuoRegisterTarget, DuoSettings
    from tests.conftest import make_record

    spec = json.loads(sys.argv[1])
    issuer = Issuer(**spec["issuer"])
    records = [make_record(issuer, number, bsn=SecretStr(bsn)) for number, bsn in spec["learners"]]
    store = SqliteStateStore(spec["state"])
    target = DuoRegisterTarget(DuoSettings(api_url=spec["api_url"]), TargetContext(issuer=issuer))

    class KillOnSubmitted:
        def __init__(self, inner):
            self.inner, self.target = inner, inner.target
        def __getattr__(self, name):
            return getattr(self.inner, name)
        def submitted(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)   # the register answered 202; nothing is recorded

    async def main():
        from datetime import UTC, datetime
        from mcsync.targets.base import WorkItem
        by_id = {{str(r.record_id): r for r in records}}
        items = [WorkItem(key=row.key, state=row.state, desired_hash=row.desired_hash,
                          delivered_hash=row.delivered_hash, attempts=row.attempts, remote=row.remote,
                          record=by_id[row.key]) for row in store.work("duo", datetime.now(UTC))]
        await target.deliver(items, KillOnSubmitted(store.ledger("duo")))

    asyncio.run(main())
    print("not killed")
""")


@asynctest
async def test_a_process_killed_between_the_post_and_the_report_is_read_back_not_sent_twice(
        tmp_path, issuer) -> None:
    sim = DuoRegisterSimulator(processing_delay=0.2, known_unit_codes={UNIT_CODE})
    with SandboxServer({MOUNT: sim}) as server:
        state = tmp_path / "state" / "mcsync.db"
        h = Harness(SqliteStateStore(state), issuer, sim=sim, api_url=server.url + MOUNT,
                    network=True, sleep=asyncio.sleep)
        h.confirm_rio()
        records = passed(issuer, 3)
        h.plan(*records)
        spec = {"issuer": issuer.model_dump(), "state": str(state), "api_url": server.url + MOUNT,
                "learners": [[r.learner.student_number, r.learner.bsn.get_secret_value()] for r in records]}
        child = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", CHILD.format(repo=str(REPO)), json.dumps(spec)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert len(sim.deliveries_received) == 1 and sim.posts == 1        # the POST arrived
        assert {h.state(r) for r in records} == {DeliveryState.IN_FLIGHT}

        await h.deliver()                                                  # the restarted run
        assert sim.posts == 1                                              # read back, not posted again
        assert_once_each(h, records)
        await h.aclose()
        h.store.close()
