"""Withdrawing awards: unclaimed ones are deleted, claimed ones revoked; changed awards are replaced."""

from __future__ import annotations

import json

import httpx
import pytest

from mcsync.errors import TargetUnavailable
from mcsync.record import ResultStatus
from mcsync.sandbox.base import mock_transport
from mcsync.targets.base import DeliveryState

from .conftest import make_definition, make_record
from .edubadges_helpers import (
    BC,
    BC2,
    Harness,
    Intercept,
    adopted,
    auth,
    client,
    create_calls,
    eppn,
    simulator,
)


def awarded(store, issuer, student_number: str, **options):
    """A simulator, a harness, and one record already offered in Edubadges."""
    sim = simulator()
    harness = Harness(store, issuer, sim, **options)
    record = make_record(issuer, student_number)
    harness.plan(record)
    harness.deliver()
    return sim, harness, record


def fraud(issuer, student_number: str):
    return make_record(issuer, student_number, status=ResultStatus.FRAUD)


def revoke_by_hand(sim, assertion_id: str) -> None:
    with client(sim) as http:
        answer = http.post("/issuer/revoke-assertions", headers=auth(http), json={
            "revocation_reason": "by staff", "assertions": [{"entity_id": assertion_id}]})
        assert answer.status_code == 200


def test_an_unclaimed_award_is_deleted_with_the_reason(store, issuer):
    sim, harness, record = awarded(store, issuer, "2210601", revocation_reason="Result corrected in SIS")
    harness.plan(fraud(issuer, "2210601"))
    harness.deliver()
    [body] = harness.transport.bodies("/directaward/delete-direct-awards")
    [da] = sim.direct_awards(eppn=eppn(record))
    assert body == {"revocation_reason": "Result corrected in SIS", "direct_awards": [{"entity_id": da.entity_id}]}
    assert da.status == "Deleted" and da.revocation_reason == "Result corrected in SIS"
    row = harness.row(record)
    assert row.state is DeliveryState.SYNCED and row.delivered_hash is None
    assert row.remote.data["status"] == "Deleted"
    assert sim.awards_for(eppn(record), BC) == 0


def test_a_claimed_award_is_revoked_not_deleted(store, issuer):
    sim, harness, record = awarded(store, issuer, "2210602", revocation_reason="Result corrected in SIS")
    assertion = sim.claim(harness.row(record).remote.remote_id)
    harness.plan(fraud(issuer, "2210602"))
    harness.deliver()
    assert not harness.transport.bodies("/directaward/delete-direct-awards")
    assert harness.transport.bodies("/issuer/revoke-assertions") == [
        {"revocation_reason": "Result corrected in SIS", "assertions": [{"entity_id": assertion}]}]
    [held] = sim.assertions(eppn=eppn(record))
    assert held.revoked
    row = harness.row(record)
    assert row.state is DeliveryState.SYNCED and row.delivered_hash is None and row.remote.remote_id == assertion


def test_revoke_stops_at_the_first_failure_so_the_rest_is_settled_one_by_one(store, issuer):
    sim = simulator()

    def staff_revoke_the_first(request: httpx.Request) -> None:      # while mcsync's bulk revoke is on its way
        listed = json.loads(request.content)["assertions"]
        if len(listed) > 1:
            revoke_by_hand(sim, listed[0]["entity_id"])

    harness = Harness(store, issuer, sim,
                      transport=Intercept(mock_transport(sim), "/revoke-assertions", staff_revoke_the_first))
    records = [make_record(issuer, f"22106{i}0") for i in range(3)]
    harness.plan(*records)
    harness.deliver()
    for record in records:
        sim.claim(harness.row(record).remote.remote_id)
    harness.plan(*(fraud(issuer, r.learner.student_number) for r in records))
    harness.deliver()
    harness.close()
    bodies = harness.transport.bodies("/issuer/revoke-assertions")
    assert [len(b["assertions"]) for b in bodies] == [3, 1, 1, 1]      # bulk refused at once, then one by one
    assert all(a.revoked for a in sim.assertions())
    assert all(harness.row(r).state is DeliveryState.SYNCED and harness.row(r).delivered_hash is None
               for r in records)


def test_withdrawals_that_are_done_already_count_as_done(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    deleted, declined = make_record(issuer, "2210611"), make_record(issuer, "2210612")
    harness.plan(deleted, declined)
    harness.deliver()
    with client(sim) as http:
        http.put("/directaward/delete-direct-awards", headers=auth(http), json={
            "revocation_reason": "staff", "direct_awards": [{"entity_id": harness.row(deleted).remote.remote_id}]})
    sim.reject(harness.row(declined).remote.remote_id)
    harness.plan(fraud(issuer, "2210611"), fraud(issuer, "2210612"))
    harness.deliver()
    assert not sim.write_calls()[2:]                              # the create and the staff delete only
    for record in (deleted, declined):
        assert harness.row(record).state is DeliveryState.SYNCED and harness.row(record).delivered_hash is None


def test_an_award_claimed_just_before_the_delete_is_revoked_instead(store, issuer):
    sim = simulator()

    def learner_accepts(request: httpx.Request) -> None:             # while mcsync's delete is on its way
        for award in sim.direct_awards():
            sim.claim(award.entity_id)

    harness = Harness(store, issuer, sim, transport=Intercept(mock_transport(sim), "/delete-direct-awards",
                                                              learner_accepts))
    record = make_record(issuer, "2210613")
    harness.plan(record)
    harness.deliver()
    harness.plan(fraud(issuer, "2210613"))
    harness.deliver()
    harness.close()
    [held] = sim.assertions(eppn=eppn(record))
    assert held.revoked
    assert harness.row(record).state is DeliveryState.SYNCED and harness.row(record).remote.remote_id == held.entity_id


def test_a_lost_answer_to_a_delete_is_settled_by_repeating_it(store, issuer):
    sim, harness, record = awarded(store, issuer, "2210614")
    sim.fail_next("PUT", "/directaward/delete-direct-awards", after_apply=True, drop=True)
    harness.plan(fraud(issuer, "2210614"))
    harness.deliver()
    assert len(harness.sleeps) == 1                             # repeated once: "already deleted" = done
    assert harness.row(record).state is DeliveryState.SYNCED and harness.row(record).delivered_hash is None
    assert [a.status for a in sim.direct_awards()] == ["Deleted"]


def test_a_withdrawal_cut_off_by_an_outage_is_checked_on_the_next_run(store, issuer):
    sim, harness, record = awarded(store, issuer, "2210615", max_attempts=2)
    sim.fail_next("PUT", "/directaward/delete-direct-awards", after_apply=True, drop=True, times=2)
    harness.plan(fraud(issuer, "2210615"))
    with pytest.raises(TargetUnavailable):
        harness.deliver()
    assert harness.row(record).state is DeliveryState.IN_FLIGHT
    harness.deliver()
    harness.close()
    assert harness.row(record).state is DeliveryState.SYNCED and harness.row(record).delivered_hash is None
    assert len(harness.transport.bodies("/directaward/delete-direct-awards")) == 2


def test_an_adopted_award_without_bundle_is_withdrawn_by_its_id(store, issuer):
    sim, harness, record, earlier = adopted(store, issuer, "2210616")
    assert harness.row(record).remote.correlation_id is None and harness.row(record).remote.remote_id == earlier
    harness.plan(fraud(issuer, "2210616"))
    harness.deliver()
    assert harness.row(record).state is DeliveryState.SYNCED and harness.row(record).delivered_hash is None
    assert [a.status for a in sim.direct_awards()] == ["Deleted"]


# replacing: another badge class or eppn -----------------------------------------------------------------------
def test_a_new_badge_class_replaces_an_unclaimed_award(store, issuer):
    sim, harness, record = awarded(store, issuer, "2210621")
    moved = make_record(issuer, "2210621", definition=make_definition(edubadges={"badgeclass": BC2}))
    harness.plan(moved)
    harness.deliver()
    [old] = sim.direct_awards(badgeclass=BC)
    [new] = sim.direct_awards(badgeclass=BC2)
    assert old.status == "Deleted" and new.status == "Unaccepted"
    row = harness.row(record)
    assert row.state is DeliveryState.SYNCED and row.remote.remote_id == new.entity_id
    assert row.delivered_hash == harness.target.desired(moved)


def test_a_claimed_award_is_kept_when_only_the_eppn_changed(store, issuer):
    sim, harness, record = awarded(store, issuer, "2210622")
    assertion = sim.claim(harness.row(record).remote.remote_id)
    renamed = make_record(issuer, "2210622", eppn="s.devries@student.hz.nl")
    harness.plan(renamed)
    harness.deliver()
    assert create_calls(sim) == 1 and not sim.assertions()[0].revoked
    row = harness.row(record)
    assert row.state is DeliveryState.SYNCED and row.remote.remote_id == assertion
    assert row.delivered_hash == harness.target.desired(renamed)


def test_a_claimed_award_of_another_badge_class_is_parked_for_a_person(issuer, store):
    sim, harness, record = awarded(store, issuer, "2210623")
    sim.claim(harness.row(record).remote.remote_id)
    harness.plan(make_record(issuer, "2210623", definition=make_definition(edubadges={"badgeclass": BC2})))
    harness.deliver()
    [failure] = store.failures("edubadges")
    assert "already claimed badge class" in failure.reason and "revoke the old badge" in failure.reason
    assert create_calls(sim) == 1 and not sim.assertions()[0].revoked
