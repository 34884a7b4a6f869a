"""The DUO register target against the sandbox register: deliveries, reports, signals, identity,
the RIO dependency, withdrawals and the transport rules of duo-register.md."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from mcsync.errors import PermanentError, TargetUnavailable
from mcsync.record import MicrocredentialRecord, ResultStatus
from mcsync.sandbox.base import mock_transport
from mcsync.sandbox.duo import MOUNT, DuoRegisterSimulator
from mcsync.targets.base import DeliveryState, RemoteRef, TargetContext, catalogue_key
from mcsync.targets.duo import DuoRegisterTarget

from .conftest import make_record
from .duo_helpers import (UNIT_CODE, Clock, Harness, assert_valid, asynctest, bsns, failing_elfproef, keys,
                          with_learner)

NS = "{urn:mcsync:duo-register:v1}"
BSN = bsns(40, start=200000000)


def passed(issuer, n: int = 3, *, first: int = 0, **kw) -> list[MicrocredentialRecord]:
    return [make_record(issuer, str(2210450 + i), bsn=SecretStr(BSN[i]), **kw) for i in range(first, first + n)]


@pytest.fixture
def h(store, issuer):
    harness = Harness(store, issuer)
    harness.confirm_rio()
    yield harness
    asyncio.run(harness.aclose())


def registered_ids(h: Harness) -> set[str]:
    return {rid for rid, reg in h.sim.registrations.items() if reg.status == "geregistreerd"}


# the main path ------------------------------------------------------------------------------------

@asynctest
async def test_passed_records_are_registered_once_and_a_rerun_sends_nothing(h, issuer) -> None:
    records = passed(issuer, 3)
    h.plan(*records)
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert registered_ids(h) == set(keys(records))
    for record in records:
        registration = h.sim.registered(str(record.record_id))
        assert registration.text("opleidingseenheidcode") == UNIT_CODE
        assert registration.text("bsn") == record.learner.bsn.get_secret_value()
        assert h.sim.deliveries_with(str(record.record_id)) == h.sim.deliveries_received
    assert len(h.sim.deliveries_received) == 1
    [body] = h.bodies()
    assert_valid(body)
    assert h.clock.waits == [2.0]                        # the register's Retry-After while processing
    row = h.row(records[0])
    assert row.delivered_hash == row.desired_hash
    assert row.remote.correlation_id == h.sim.deliveries_received[0] and "body" not in row.remote.data

    h.plan(*records)                                     # the next run: nothing changed
    assert await h.deliver() == []
    assert h.sim.posts == 1


@asynctest
async def test_a_grade_change_replaces_the_registration_under_the_same_record_id(h, issuer) -> None:
    [record] = passed(issuer, 1)
    h.plan(record)
    await h.deliver()
    h.plan(make_record(issuer, record.learner.student_number, bsn=record.learner.bsn, grade="8,5"))
    await h.deliver()
    assert h.state(record) is DeliveryState.SYNCED
    assert h.sim.registered(str(record.record_id)).text("resultaat") == "8,5"
    assert len(h.sim.registrations) == 1 and len(h.sim.deliveries_received) == 2


# the RIO dependency -------------------------------------------------------------------------------

@asynctest
async def test_records_wait_for_rio_and_then_go_by_themselves(store, issuer) -> None:
    h = Harness(store, issuer)
    records = passed(issuer, 2)
    h.plan(*records)
    await h.deliver()
    reason = "waiting for RIO to confirm unit MC-DATA01 (opleidingseenheidcode)"
    assert {(r.state, r.note) for r in (h.row(x) for x in records)} == {
        (DeliveryState.PENDING, reason + "; RIO has no entry for it yet")}
    store.set_desired("rio", [(catalogue_key("MC-DATA01"), "rio-hash")])     # RIO is on it, no code yet
    await h.deliver()
    assert h.row(records[0]).note == reason
    store.ledger("rio").park(catalogue_key("MC-DATA01"), error=PermanentError("A01161 ..."))
    await h.deliver()
    assert h.row(records[0]).note == reason + "; RIO has parked it: see `mcsync failures --target rio`"
    assert h.sim.posts == 0

    store.retry(None, "rio")
    h.confirm_rio(unit_code="1234O5678")
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert {h.sim.registered(k).text("opleidingseenheidcode") for k in keys(records)} == {"1234O5678"}
    await h.aclose()


@asynctest
async def test_with_rio_disabled_the_own_key_goes_and_r102_is_reported_as_such(store, issuer) -> None:
    h = Harness(store, issuer, rio_enabled=False)
    [record] = passed(issuer, 1)
    h.plan(record)
    await h.deliver()
    row = h.row(record)
    assert row.state is DeliveryState.FAILED and row.error_code == "R102"
    assert row.note.startswith("R102 ") and "RIO is disabled in this configuration" in row.note
    assert "unit MC-DATA01" in row.note and "enable [targets.rio]" in row.note
    [body] = h.bodies()
    sent = assert_valid(body)[0]
    assert sent.find(f"{NS}eigenOpleidingseenheidSleutel").text == record.microcredential.rio_eigen_sleutel("30GB")
    assert sent.find(f"{NS}opleidingseenheidcode") is None
    [failure] = store.failures("duo")
    assert failure.code == "R102" and failure.record_id == str(record.record_id)
    await h.aclose()


# identity ---------------------------------------------------------------------------------------

@asynctest
async def test_no_identity_is_parked_and_directory_data_later_delivers_it(h, issuer) -> None:
    record = make_record(issuer, "2210451")
    h.plan(record)
    await h.deliver()
    row = h.row(record)
    assert row.state is DeliveryState.FAILED and row.error_code == "no-identity"
    assert "student 2210451" in row.note and "learners directory" in row.note
    assert h.sim.posts == 0

    h.plan(with_learner(record, date_of_birth=date(2001, 4, 5)))    # the SIS export now has it
    assert h.state(record) is DeliveryState.PENDING
    await h.deliver()
    assert h.state(record) is DeliveryState.SYNCED
    person = assert_valid(h.bodies()[0])[0].find(f"{NS}deelnemer")
    assert [(c.tag.removeprefix(NS), c.text) for c in person][:2] == [
        ("eigenDeelnemerSleutel", "2210451"), ("geboortedatum", "2001-04-05")]


@asynctest
async def test_a_bsn_failing_the_elfproef_is_parked_without_a_call_and_never_shown(h, issuer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    bad = failing_elfproef(BSN[0])
    record = make_record(issuer, "2210451", bsn=SecretStr(bad))
    h.plan(record)
    await h.deliver()
    row = h.row(record)
    assert row.state is DeliveryState.FAILED and row.error_code == "bsn-elfproef"
    assert row.note.startswith("the BSN of student 2210451 fails the elfproef")
    assert h.sim.posts == 0

    h.plan(with_learner(record, bsn=SecretStr(BSN[0])))             # corrected in the directory
    await h.deliver()
    assert h.state(record) is DeliveryState.SYNCED
    texts = [caplog.text, *(f.reason for f in h.store.failures()), *(str(h.row(record)),)]
    for text in texts:
        assert bad not in text and BSN[0] not in text


@pytest.mark.parametrize("case", ["R001", "R101", "R201", "R202"])
@asynctest
async def test_rejections_are_parked_with_code_text_and_what_to_do(store, issuer, caplog, case) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=1, clock=clock, known_unit_codes={UNIT_CODE},
                               unknown_bsns={BSN[0]} if case == "R001" else ())
    h = Harness(store, issuer, sim=sim, clock=clock)
    h.confirm_rio(unit_code="9999O9999" if case == "R101" else UNIT_CODE)
    [record] = passed(issuer, 1)
    if case == "R201":   # stricter than mcsync's own check: the register decides
        record = record.model_copy(update={"microcredential": record.microcredential.model_copy(
            update={"ects": Decimal(2)})})
    if case == "R202":
        record = record.model_copy(update={"result": record.result.model_copy(
            update={"assessment_date": clock.now.date() + timedelta(days=3)})})
    h.plan(record)
    await h.deliver()
    row = h.row(record)
    assert row.state is DeliveryState.FAILED and row.error_code == case
    texts = {"R001": "Deelnemer onbekend", "R101": "onbekend in RIO", "R201": "3 tot 30", "R202": "toekomst"}
    hints = {"R001": "learners directory", "R101": "check the unit in RIO", "R201": "mapping file",
             "R202": "source export"}
    assert row.note.startswith(case) and texts[case] in row.note and hints[case] in row.note
    [failure] = store.failures("duo")
    assert failure.code == case and failure.reason == row.note
    assert BSN[0] not in caplog.text and BSN[0] not in row.note
    h.plan(record)
    assert await h.deliver() == []                       # permanent: not sent again by itself
    await h.aclose()


@asynctest
async def test_r900_is_retried_in_a_new_delivery_and_then_accepted(h, issuer) -> None:
    [record] = passed(issuer, 1)
    rid = str(record.record_id)
    h.sim.fail_next(rid)
    h.plan(record)
    await h.deliver()
    row = h.row(record)
    assert row.state is DeliveryState.PENDING and row.note.startswith("R900 ")
    assert row.not_before is not None
    assert h.work() == []                                # not before r900_retry_after
    await h.deliver(later=61)
    assert h.state(record) is DeliveryState.SYNCED
    assert [codes for _, _, codes in h.sim.processed(rid)] == [("R900",), ("R000",)]
    assert len(h.sim.deliveries_with(rid)) == 2


@asynctest
async def test_r900_every_time_is_parked_after_the_attempts(store, issuer) -> None:
    h = Harness(store, issuer, r900_max_attempts=2)
    h.confirm_rio()
    [record] = passed(issuer, 1)
    h.sim.fail_next(str(record.record_id), 5)
    h.plan(record)
    await h.deliver()
    await h.deliver(later=61)
    row = h.row(record)
    assert row.state is DeliveryState.FAILED and row.error_code == "R900" and "2 deliveries in a row" in row.note
    await h.aclose()


# withdrawals ------------------------------------------------------------------------------------

@asynctest
async def test_a_grade_corrected_to_a_fail_sends_one_intrekking(h, issuer) -> None:
    [record] = passed(issuer, 1)
    rid = str(record.record_id)
    h.plan(record)
    await h.deliver()
    failed = make_record(issuer, record.learner.student_number, bsn=record.learner.bsn, grade="4,0",
                         status=ResultStatus.FAILED)
    h.plan(failed)
    row = h.row(rid)
    assert row.state is DeliveryState.PENDING and row.desired_hash is None and row.delivered_hash
    await h.deliver()
    row = h.row(rid)
    assert row.state is DeliveryState.SYNCED and row.delivered_hash is None
    assert h.sim.registered(rid).status == "ingetrokken"
    withdrawal = assert_valid(h.bodies()[-1])[0]
    assert withdrawal.tag == f"{NS}intrekking" and withdrawal.get("recordId") == rid
    assert withdrawal.get("reden") == "Resultaat gecorrigeerd: niet behaald"
    h.plan(failed)
    assert await h.deliver() == [] and len(h.sim.deliveries_received) == 2


@asynctest
async def test_withdrawing_what_the_register_does_not_hold_is_done(h, issuer) -> None:
    record = make_record(issuer, "2210451", status=ResultStatus.FRAUD, grade="FR")
    rid = str(record.record_id)
    h.store.set_desired("duo", [(rid, "accepted-long-ago")])           # accepted once, by an older install
    h.store.ledger("duo").confirm(rid, delivered_hash="accepted-long-ago", remote=RemoteRef(remote_id=rid))
    h.plan(record)
    await h.deliver()
    row = h.row(rid)
    assert row.state is DeliveryState.SYNCED and row.delivered_hash is None and row.note.startswith("R401")
    assert "Fraude" in assert_valid(h.bodies()[0])[0].get("reden")


# transport ------------------------------------------------------------------------------------

@asynctest
async def test_409_is_reported_loudly_parked_and_not_sent_again(h, issuer, caplog, monkeypatch) -> None:
    import mcsync.targets.duo.target as target_module
    fixed = uuid.uuid4()
    monkeypatch.setattr(target_module, "uuid4", lambda: fixed)        # every leveringId is now `fixed`
    h.plan(make_record(issuer, "9999999", bsn=SecretStr(BSN[9])))      # the first use of it is fine
    await h.deliver()
    assert h.sim.deliveries_received == [str(fixed)]

    records = passed(issuer, 2)
    h.plan(*records)
    caplog.set_level(logging.INFO)
    await h.deliver()
    for record in records:
        row = h.row(record)
        assert row.state is DeliveryState.FAILED and row.error_code == "LEV409"
        assert "report this as a bug" in row.note
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "BUG SIGNAL" in errors[0].getMessage() and str(fixed) in errors[0].getMessage()
    assert h.sim.posts == 2                              # one answer of 409, no blind retry
    assert h.sim.deliveries_received == [str(fixed)]


@asynctest
async def test_413_splits_the_delivery_until_it_fits(store, issuer) -> None:
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=1, clock=clock, max_body_bytes=1800)
    h = Harness(store, issuer, sim=sim, clock=clock)
    h.confirm_rio()
    records = passed(issuer, 6)
    h.plan(*records)
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert len(h.sim.deliveries_received) > 1
    assert all(len(body) <= 1800 for body in h.bodies())
    assert all(len(h.sim.deliveries_with(k)) == 1 for k in keys(records))

    sim.max_body_bytes = 200                             # not even one record fits: park it
    [lone] = passed(issuer, 1, first=10)
    h.plan(lone)
    await h.deliver()
    row = h.row(lone)
    assert row.state is DeliveryState.FAILED and row.error_code == "LEV413"
    await h.aclose()


@asynctest
async def test_xsd002_from_the_register_splits_too(store, issuer) -> None:
    clock = Clock()
    h = Harness(store, issuer, clock=clock, sim=DuoRegisterSimulator(processing_delay=1, clock=clock, max_records=2))
    h.confirm_rio()
    records = passed(issuer, 5)
    h.plan(*records)
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert all(len(assert_valid(b)) <= 2 for b in h.bodies())
    await h.aclose()


@asynctest
async def test_batches_respect_batch_size_and_body_size(store, issuer) -> None:
    h = Harness(store, issuer, batch_size=2)
    h.confirm_rio()
    h.plan(*passed(issuer, 5))
    await h.deliver()
    assert [len(assert_valid(b)) for b in h.bodies()] == [2, 2, 1]
    await h.aclose()

    h = Harness(store, issuer, max_body_bytes=64 * 1024)
    records = [make_record(issuer, f"s{i:04d}", date_of_birth=date(2000, 1, 1) + timedelta(days=i),
                           given_name="Anna Maria Johanna " * 8) for i in range(400)]
    h.plan(*records)
    await h.deliver()
    sizes = [len(b) for b in h.bodies()]
    assert len(sizes) > 1 and max(sizes) <= 64 * 1024
    assert sum(len(assert_valid(b)) for b in h.bodies()) == 400
    assert all(s is DeliveryState.SYNCED for s in h.states().values())
    await h.aclose()


@asynctest
async def test_429_backs_off_as_long_as_retry_after_says(h, issuer) -> None:
    h.sim.refuse_next(2, status=429, retry_after="7")
    records = passed(issuer, 2)
    h.plan(*records)
    await h.deliver()
    assert h.clock.waits[:2] == [7.0, 7.0]
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert h.sim.posts == 3 and len(h.sim.deliveries_received) == 1


@asynctest
async def test_a_busy_register_after_all_attempts_queues_the_work_and_stops_the_target(store, issuer) -> None:
    h = Harness(store, issuer, retry_attempts=3)
    h.confirm_rio()
    h.sim.refuse_next(3, status=503, retry_after="30")
    records = passed(issuer, 2)
    h.plan(*records)
    with pytest.raises(TargetUnavailable, match="cannot take deliveries now"):
        await h.deliver()
    assert h.clock.waits == [30.0, 30.0]
    for record in records:
        row = h.row(record)
        assert row.state is DeliveryState.PENDING and "HTTP 503" in row.note and row.not_before is not None
        assert "body" not in row.remote.data                      # nothing was stored: the kept body goes
    assert h.sim.deliveries_received == []
    await h.deliver(later=31)
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    await h.aclose()


@asynctest
async def test_a_lost_answer_is_posted_again_byte_for_byte(h, issuer) -> None:
    h.sim.drop_next_response()
    records = passed(issuer, 3)
    h.plan(*records)
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert h.sim.posts == 2 and len(h.sim.deliveries_received) == 1     # the repeat was the same delivery


class NoAnswer(httpx.AsyncBaseTransport):
    """The register receives every POST but the answer never arrives (a timeout after sending)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            raise httpx.ReadTimeout("timed out", request=request)
        return response


@asynctest
async def test_no_answer_at_all_leaves_the_delivery_in_flight_and_the_next_run_reads_it_back(store, issuer) -> None:
    h = Harness(store, issuer, retry_attempts=2)
    h.confirm_rio()
    healthy = h.transport
    h.transport = NoAnswer(healthy)
    await h.aclose()
    h.target = h.new_target()
    records = passed(issuer, 2)
    h.plan(*records)
    with pytest.raises(TargetUnavailable, match="did not answer"):
        await h.deliver()
    assert {h.state(r) for r in records} == {DeliveryState.IN_FLIGHT}
    assert "looked up before anything is sent again" in h.row(records[0]).note
    assert h.sim.posts == 2 and len(h.sim.deliveries_received) == 1
    await h.aclose()

    h.transport = healthy                                # the next run
    h.target = h.new_target()
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert h.sim.posts == 2 and len(h.sim.deliveries_received) == 1
    await h.aclose()


@asynctest
async def test_reports_are_polled_within_the_budget_and_read_back_next_run(store, issuer) -> None:
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=30, clock=clock)
    h = Harness(store, issuer, sim=sim, clock=clock, poll_budget=10)
    h.confirm_rio()
    records = passed(issuer, 2)
    h.plan(*records)
    await h.deliver()
    assert {h.state(r) for r in records} == {DeliveryState.SUBMITTED}
    assert clock.waits == []                             # 30 s asked, 10 s allowed: leave it for later
    assert h.row(records[0]).note.startswith("in delivery ")
    await h.aclose()

    clock.advance(30)
    h.target = h.new_target()                            # the next run
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert sim.posts == 1
    await h.aclose()

    h = Harness(store, issuer, sim=sim, clock=clock, poll_budget=100)
    more = passed(issuer, 1, first=5)
    h.plan(*more)
    await h.deliver()
    assert clock.waits == [30.0] and h.state(more[0]) is DeliveryState.SYNCED
    await h.aclose()


@asynctest
async def test_deliveries_still_in_processing_are_waited_for_once_after_the_last_chunk(store, issuer) -> None:
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=30, clock=clock)
    h = Harness(store, issuer, sim=sim, clock=clock, poll_budget=40, batch_size=1)
    h.confirm_rio()
    h.plan(*passed(issuer, 3))
    await h.deliver(chunk=1)
    assert sim.posts == 3 and clock.waits == [30.0]      # one wait for all three, not one per chunk
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    await h.aclose()


class ReportAsks(httpx.AsyncBaseTransport):
    """Passes requests to the simulator and counts the report requests per leveringId."""

    def __init__(self, sim: DuoRegisterSimulator) -> None:
        self.inner = mock_transport(sim, prefix=MOUNT)
        self.asked: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/leveringen/" in request.url.path:
            self.asked[request.url.path.rsplit("/", 1)[1]] += 1
        return await self.inner.handle_async_request(request)


@asynctest
async def test_a_processed_report_is_read_at_the_next_chunk_and_one_in_processing_after_its_retry_after(
        store, issuer) -> None:
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=30, clock=clock)
    asks = ReportAsks(sim)
    h = Harness(store, issuer, sim=sim, clock=clock, transport=asks, batch_size=1)
    h.confirm_rio()
    records = passed(issuer, 3)
    h.plan(*records)
    items = sorted(h.work(), key=lambda item: item.key)
    first, second, third = (item.key for item in items)
    ledger = store.ledger("duo")

    await h.target.deliver(items[:1], ledger)
    assert h.state(first) is DeliveryState.SUBMITTED and not asks.asked
    clock.advance(30)                                     # the register has processed the first delivery
    await h.target.deliver(items[1:2], ledger)
    assert h.state(first) is DeliveryState.SYNCED         # read at the start of this chunk, without waiting
    assert h.state(second) is DeliveryState.SUBMITTED and clock.waits == []
    await h.target.deliver(items[2:], ledger)             # the second is asked: still in processing (30 s)
    await h.target.deliver([], ledger)                    # ... and not asked again before its Retry-After
    levering = {key: h.row(key).remote.correlation_id for key in (first, second, third)}
    assert asks.asked[levering[first]] == 1 and asks.asked[levering[second]] == 1
    assert asks.asked[levering[third]] == 1               # posted in the last chunk: asked at this one
    assert h.state(second) is DeliveryState.SUBMITTED and h.state(third) is DeliveryState.SUBMITTED

    await h.target.finish(ledger)                         # the rest: waited for once
    assert clock.waits == [30.0]
    assert set(h.states().values()) == {DeliveryState.SYNCED} and sim.posts == 3
    assert asks.asked[levering[first]] == 1               # an applied report is not asked for again
    await h.aclose()


@asynctest
async def test_the_poll_budget_spans_the_whole_run(store, issuer) -> None:
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=30, clock=clock)
    h = Harness(store, issuer, sim=sim, clock=clock, poll_budget=20, batch_size=1)
    h.confirm_rio()
    h.plan(*passed(issuer, 3))
    await h.deliver(chunk=1)
    assert clock.waits == []                              # 30 s asked, 20 s allowed: read back next run
    assert set(h.states().values()) == {DeliveryState.SUBMITTED}
    await h.aclose()


@asynctest
async def test_a_dry_run_contacts_nothing(store, issuer) -> None:
    h = Harness(store, issuer)
    h.plan(*passed(issuer, 1))
    target = DuoRegisterTarget(h.settings, TargetContext(issuer=issuer, dry_run=True), transport=h.transport)
    await target.deliver(h.work(), store.ledger("duo"))
    await target.aclose()
    assert h.sim.posts == 0 and set(h.states().values()) == {DeliveryState.PENDING}
    await h.aclose()


@asynctest
async def test_a_record_that_does_not_fit_the_schema_is_parked_and_the_rest_goes(h, issuer) -> None:
    good = passed(issuer, 2)
    odd = make_record(issuer, "2210499", bsn=SecretStr(BSN[20]))
    # a studielast the register's type cannot hold (two decimals), past mcsync's own checks
    odd = odd.model_copy(update={"microcredential": odd.microcredential.model_copy(update={"ects": Decimal("5.25")})})
    h.plan(*good, odd)
    await h.deliver()
    row = h.row(odd)
    assert row.state is DeliveryState.FAILED and row.error_code == "XSD001" and "studielast" in row.note
    assert {h.state(r) for r in good} == {DeliveryState.SYNCED}
    assert len(h.sim.deliveries_received) == 1


@asynctest
async def test_a_grade_xml_cannot_carry_is_parked_and_the_rest_goes(h, issuer) -> None:
    good = passed(issuer, 2)
    bad = make_record(issuer, "2210498", bsn=SecretStr(BSN[21]), grade="7\x01")
    h.plan(*good, bad)
    await h.deliver()
    row = h.row(bad)
    assert row.state is DeliveryState.FAILED and row.error_code == "invalid-data" and "grade" in row.note
    assert {h.state(r) for r in good} == {DeliveryState.SYNCED}
    h.plan(make_record(issuer, "2210498", bsn=SecretStr(BSN[21]), grade="7"))     # corrected at the source
    await h.deliver()
    assert h.state(bad) is DeliveryState.SYNCED


@asynctest
async def test_reports_are_asked_for_concurrency_at_a_time_and_all_applied(store, issuer) -> None:
    clock = Clock()
    sim = DuoRegisterSimulator(processing_delay=5, clock=clock)
    inner = mock_transport(sim, prefix=MOUNT)
    in_flight: list[int] = [0]
    most: list[int] = [0]

    class Counting(httpx.AsyncBaseTransport):
        """Counts report requests that are on their way at the same time."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            report = request.method == "GET" and "/leveringen/" in request.url.path
            if report:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            try:
                await asyncio.sleep(0.01)            # the network: others may start meanwhile
                return await inner.handle_async_request(request)
            finally:
                if report:
                    in_flight[0] -= 1

    h = Harness(store, issuer, sim=sim, clock=clock, transport=Counting(), batch_size=1, concurrency=3)
    h.confirm_rio()
    h.plan(*passed(issuer, 7))
    await h.deliver()
    assert sim.posts == 7 and set(h.states().values()) == {DeliveryState.SYNCED}
    assert most[0] == 3                                  # never more than `concurrency`, and used
    assert clock.waits == [5.0]                          # one wait for all seven reports
    await h.aclose()
