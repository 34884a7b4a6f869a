"""Unknown outcomes: a create whose answer was lost is looked up, never re-sent blindly; exactly one award."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mcsync.errors import TargetUnavailable
from mcsync.record import ResultStatus
from mcsync.sandbox.base import SandboxServer, SimResponse, mock_transport
from mcsync.targets.base import DeliveryState
from mcsync.targets.edubadges.target import AWARD_NOT_FOUND, OUTCOME_UNKNOWN

from .conftest import make_record
from .edubadges_helpers import BC, Harness, Intercept, adopted, create_calls, eppn, lose, simulator, simulator_create


def test_a_dropped_connection_after_edubadges_applied_the_create_is_reconciled_to_one_award(store, issuer):
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", after_apply=True, drop=True)   # applied, then the line is cut
    harness = Harness(store, issuer, sim)
    records = [make_record(issuer, "2210501"), make_record(issuer, "2210502")]
    harness.plan(*records)
    harness.deliver()
    for record in records:
        row = harness.row(record)
        assert row.state is DeliveryState.IN_FLIGHT
        assert "outcome unknown" in (row.note or "")
    assert create_calls(sim) == 1                                         # never retried blindly
    harness.deliver()
    harness.close()
    assert create_calls(sim) == 1
    for record in records:
        row = harness.row(record)
        [da] = sim.direct_awards(eppn=eppn(record))
        assert row.state is DeliveryState.SYNCED and row.remote.remote_id == da.entity_id
        assert sim.awards_for(eppn(record), BC) == 1


def test_a_gateway_error_after_the_create_is_an_unknown_outcome_too(store, issuer):
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", SimResponse(502, b"<html>Bad Gateway</html>"), after_apply=True)
    harness = Harness(store, issuer, sim)
    record = make_record(issuer, "2210503")
    harness.plan(record)
    harness.deliver()
    assert harness.row(record).state is DeliveryState.IN_FLIGHT and not harness.sleeps
    harness.deliver()
    harness.close()
    assert harness.row(record).state is DeliveryState.SYNCED
    assert create_calls(sim) == 1 and sim.awards_for(eppn(record), BC) == 1


def never_arrived(store, issuer, student_number: str):
    """A create lost on the way: begin() was committed, Edubadges saw nothing."""
    sim = simulator()
    harness = Harness(store, issuer, sim, transport=Intercept(mock_transport(sim), "/directaward/create", lose(1)))
    record = make_record(issuer, student_number)
    harness.plan(record)
    harness.deliver()
    assert harness.row(record).state is DeliveryState.IN_FLIGHT and create_calls(sim) == 0
    return sim, harness, record


def test_a_create_that_never_arrived_is_sent_again_after_the_lookup_finds_nothing(store, issuer):
    sim, harness, record = never_arrived(store, issuer, "2210504")
    harness.deliver()
    harness.close()
    lookups = [c for c in sim.calls if c.path == "/queries/direct-awards"]
    assert lookups and lookups[0].query == {"status": ["unclaimed"]}
    assert harness.row(record).state is DeliveryState.SYNCED
    assert create_calls(sim) == 1 and sim.awards_for(eppn(record), BC) == 1


def lost_and_claimed(store, issuer, student_number: str):
    """A create Edubadges applied but whose answer was lost; the learner claimed it before the next run."""
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", after_apply=True, drop=True)
    harness = Harness(store, issuer, sim)
    record = make_record(issuer, student_number)
    harness.plan(record)
    harness.deliver()
    [da] = sim.direct_awards(eppn=eppn(record))
    sim.claim(da.entity_id)                                               # quick learner, before the next run
    return sim, harness, record


def test_a_lost_create_the_learner_claimed_before_the_lookup_is_parked_not_sent_twice(store, issuer):
    """The residual window, on the safe side: the award left no listed trace, but the claim count grew."""
    sim, harness, record = lost_and_claimed(store, issuer, "2210505")
    harness.deliver()
    harness.close()
    [failure] = store.failures("edubadges")
    assert "1 awards of that badge class were claimed since" in failure.reason
    assert "mcsync retry" in failure.reason
    assert create_calls(sim) == 1 and sim.awards_for(eppn(record), BC) == 1


def test_a_lost_create_is_not_sent_again_while_another_claim_of_the_badge_class_happened(store, issuer):
    """A claim by anyone of that badge class might have been this one: a person decides."""
    sim = simulator()
    someone = make_record(issuer, "2210599")
    harness = Harness(store, issuer, sim, transport=Intercept(mock_transport(sim), "/directaward/create", lose(1)))
    record = make_record(issuer, "2210506")
    harness.plan(record)
    harness.deliver()                                                     # lost on the way: nothing made
    assert create_calls(sim) == 0
    sim.claim(simulator_create(sim, eppn(someone)))                       # another learner claims meanwhile
    harness.deliver()
    harness.close()
    assert harness.row(record).state is DeliveryState.FAILED
    assert sim.awards_for(eppn(record), BC) == 0


def test_a_run_that_ended_after_the_201_reads_the_bundle_and_sees_claims(store, issuer):
    sim = simulator()
    sim.fail_next("GET", "/directaward/bundle/*", SimResponse(503, b""), times=5)
    harness = Harness(store, issuer, sim)
    claimed, waiting = make_record(issuer, "2210506"), make_record(issuer, "2210507")
    harness.plan(claimed, waiting)
    with pytest.raises(TargetUnavailable):
        harness.deliver()
    row = harness.row(claimed)
    assert row.state is DeliveryState.IN_FLIGHT and row.remote.correlation_id in sim.bundles
    [da] = sim.direct_awards(eppn=eppn(claimed))
    assertion = sim.claim(da.entity_id)                                   # the learner was quick
    harness.deliver()
    harness.close()
    assert harness.row(claimed).remote.remote_id == assertion
    assert harness.row(claimed).remote.data["kind"] == "assertion"
    assert harness.row(waiting).remote.data["status"] == "Unaccepted"
    assert all(harness.row(r).state is DeliveryState.SYNCED for r in (claimed, waiting))
    assert create_calls(sim) == 1


def test_a_read_timeout_over_real_http_leaves_the_create_in_flight_and_the_next_run_finds_it(store, issuer):
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", after_apply=True, delay=0.8)   # applied, then answers too late
    records = [make_record(issuer, "2210509"), make_record(issuer, "2210510")]
    with SandboxServer({"/edubadges": sim}) as server:
        harness = Harness(store, issuer, sim, transport=httpx.AsyncHTTPTransport(),
                          api_url=f"{server.url}/edubadges", token_url=f"{server.url}/edubadges/oidc/token",
                          timeout=0.3)
        harness.plan(*records)

        async def two_runs() -> None:
            await harness.deliver_async()
            assert all(harness.row(r).state is DeliveryState.IN_FLIGHT for r in records)
            await asyncio.sleep(0.8)                                      # the server finishes the create
            await harness.deliver_async()
            await harness.target.aclose()

        asyncio.run(two_runs())
    assert create_calls(sim) == 1
    for record in records:
        assert harness.row(record).state is DeliveryState.SYNCED
        assert sim.awards_for(eppn(record), BC) == 1


# found by the exactly-once proofs (tests/test_exactly_once_stateful.py) -----------------------------------------
def test_a_lost_create_whose_result_was_corrected_meanwhile_is_not_sent_at_all(store, issuer):
    """The create never arrived, then the grade was corrected to a fail: nothing may be awarded."""
    sim, harness, record = never_arrived(store, issuer, "2210511")
    harness.plan(make_record(issuer, "2210511", grade="4.0", status=ResultStatus.FAILED))
    assert harness.row(record).state is DeliveryState.IN_FLIGHT         # settled by the target, not the planner
    harness.deliver()
    harness.close()
    row = harness.row(record)
    assert row.state is DeliveryState.SYNCED and row.delivered_hash is None
    assert create_calls(sim) == 0 and sim.awards_for(eppn(record), BC) == 0


def test_a_lost_create_claimed_and_then_corrected_is_parked_with_what_to_revoke(store, issuer):
    """Applied, answer lost, claimed, then corrected: mcsync cannot find the badge, so a person revokes it."""
    sim, harness, record = lost_and_claimed(store, issuer, "2210512")
    harness.plan(make_record(issuer, "2210512", grade="4.0", status=ResultStatus.FAILED))
    harness.deliver()
    harness.close()
    [failure] = store.failures("edubadges")
    assert failure.code == OUTCOME_UNKNOWN and "no longer leads to an award" in failure.reason
    assert "If it no longer passes: revoke the badge" in failure.reason
    assert create_calls(sim) == 1 and sim.awards_for(eppn(record), BC) == 1


def test_a_withdrawal_of_an_award_known_only_from_the_unclaimed_list_says_why_it_is_gone(store, issuer):
    sim, harness, record, earlier = adopted(store, issuer, "2210513")      # no bundle id: found by listing
    sim.claim(earlier)
    harness.plan(make_record(issuer, "2210513", status=ResultStatus.FRAUD))
    harness.deliver()
    harness.close()
    [failure] = store.failures("edubadges")
    assert failure.code == AWARD_NOT_FOUND
    assert "knows it only from the list of unclaimed awards" in failure.reason and "revoke" in failure.reason


def test_a_correction_does_not_settle_a_parked_unknown_outcome_by_itself(store, issuer):
    """Parked because the learner may hold a lost award; then corrected to a fail. Nothing shows what the learner
    holds, so the item must stay with the person, not become 'synced' with the badge still out there."""
    sim, harness, record = lost_and_claimed(store, issuer, "2210514")
    harness.deliver()                                                  # parked: outcome unknown
    assert harness.row(record).state is DeliveryState.FAILED
    harness.plan(make_record(issuer, "2210514", grade="4.0", status=ResultStatus.FAILED))
    harness.close()
    assert harness.row(record).state is DeliveryState.FAILED           # not settled by the hashes
    assert sim.awards_for(eppn(record), BC) == 1
