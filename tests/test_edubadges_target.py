"""The Edubadges target against the simulator: bundles, confirmations, parking, adopting, desired hashes."""

from __future__ import annotations

import pytest

from mcsync.errors import ConfigError
from mcsync.record import ResultStatus
from mcsync.targets.base import DeliveryState, TargetContext
from mcsync.targets.edubadges import EdubadgesSettings, EdubadgesTarget

from .conftest import make_definition, make_record
from .edubadges_helpers import (
    BC,
    BC2,
    CLIENT_SECRET,
    TEMPLATE,
    Harness,
    adopted,
    create_calls,
    eppn,
    settings,
    simulator,
    simulator_create,
)


def test_one_bundle_per_badge_class_and_every_award_confirmed_with_its_direct_award_id(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    other = make_definition("MC-STAT01", edubadges={"badgeclass": BC2})
    records = [make_record(issuer, f"22104{i:02d}") for i in range(3)] + [
        make_record(issuer, "2210499", definition=other)]
    harness.plan(*records)
    harness.deliver()

    bodies = harness.transport.bodies("/directaward/create")
    assert sorted(b["badgeclass"] for b in bodies) == sorted([BC, BC2])
    first = next(b for b in bodies if b["badgeclass"] == BC)
    assert first == {"badgeclass": BC, "identifier_type": "eppn", "notify_recipients": True, "batch_mode": False,
                     "sis_user_id": "mcsync", "direct_awards": [
                         {"eppn": f"22104{i:02d}@student.hz.nl", "recipient_email": f"22104{i:02d}@student.hz.nl",
                          "first_name": "Sanne", "surname": "de Vries", "grade_achieved": "7.5"} for i in range(3)]}
    for record in records:
        row = harness.row(record)
        [da] = sim.direct_awards(eppn=eppn(record))
        assert row.state is DeliveryState.SYNCED and row.delivered_hash == row.desired_hash
        assert row.remote.remote_id == da.entity_id
        assert row.remote.correlation_id == da.bundle
        assert row.remote.data["status"] == "Unaccepted" and row.remote.data["kind"] == "direct_award"
    assert len(sim.bundles) == 2


def test_every_call_is_json_with_a_bearer_token_and_never_x_requested_with(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    harness.plan(make_record(issuer, "2210451"))
    harness.deliver()
    api = harness.transport.api()
    assert [(r.method, r.url.path) for r in api] == [
        ("GET", "/queries/badge-classes"), ("POST", "/directaward/create"),
        ("GET", f"/directaward/bundle/{next(iter(harness.sim.bundles))}")]
    for request in api:
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Accept"] == "application/json"
        assert request.headers["Authorization"].startswith("Bearer ")
        assert "X-Requested-With" not in request.headers
    [token_request] = [r for r in harness.transport.requests if r.url.path.endswith("/oidc/token")]
    assert token_request.headers["Authorization"].startswith("Basic ")
    assert token_request.content == b"grant_type=client_credentials&scope=edubadges.nl%2Fsis"


def test_a_rerun_with_nothing_pending_makes_no_call_and_a_grade_change_is_no_change(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    record = make_record(issuer, "2210451", grade="6.0")
    harness.plan(record)
    harness.deliver()
    calls = len(sim.calls)
    assert harness.plan(record) == 0
    assert harness.plan(make_record(issuer, "2210451", grade="9.5", given_name="Sanna")) == 0
    harness.deliver()
    assert len(sim.calls) == calls and create_calls(sim) == 1
    assert sim.awards_for(eppn(record), BC) == 1


def test_a_learner_without_email_or_with_a_bad_eppn_is_parked_and_the_others_delivered(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim, eppn_pattern=r"^\d{7}@student\.hz\.nl$")
    no_mail = make_record(issuer, "2210452", email=None)
    staff = make_record(issuer, "2210453", eppn="j.jansen@hz.nl")
    fine = make_record(issuer, "2210454")
    harness.plan(no_mail, staff, fine)
    harness.deliver()
    harness.close()

    assert harness.row(fine).state is DeliveryState.SYNCED
    failures = {f.record_id: f.reason for f in store.failures("edubadges")}
    assert "no e-mail address" in failures[str(no_mail.record_id)]
    assert "learners export" in failures[str(no_mail.record_id)]
    assert "'j.jansen@hz.nl' does not fit" in failures[str(staff.record_id)]
    [body] = harness.transport.bodies("/directaward/create")
    assert [a["eppn"] for a in body["direct_awards"]] == ["2210454@student.hz.nl"]


def test_no_eppn_and_no_template_is_parked_with_what_to_configure(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim, template=None)
    record = make_record(issuer, "2210452")
    harness.plan(record)
    harness.deliver()
    harness.close()
    [failure] = store.failures("edubadges")
    assert "eppn_template" in failure.reason and "eppn column" in failure.reason
    assert not sim.calls


def test_an_unknown_badge_class_parks_its_awards_and_the_other_bundle_goes_through(issuer, store):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    unknown = make_definition("MC-GONE", edubadges={"badgeclass": "NoSuchBadgeClass000000"})
    lost = [make_record(issuer, "2210461", definition=unknown), make_record(issuer, "2210462", definition=unknown)]
    fine = make_record(issuer, "2210463")
    harness.plan(*lost, fine)
    harness.deliver()
    assert harness.row(fine).state is DeliveryState.SYNCED
    failures = {f.record_id: f for f in store.failures("edubadges")}
    for record in lost:
        assert "Object with entity_id=NoSuchBadgeClass000000 does not exist." in failures[str(record.record_id)].reason
        assert failures[str(record.record_id)].code == "999"
        assert harness.row(record).state is DeliveryState.FAILED


def test_a_field_error_on_one_award_parks_it_and_the_rest_of_the_bundle_is_sent_again(store, issuer):
    sim = simulator(eppn_pattern=r"^\d{7}@student\.hz\.nl$")      # stricter than mcsync's own check
    harness = Harness(store, issuer, sim)
    odd = make_record(issuer, "2210471", eppn="sanne@student.hz.nl")
    rest = [make_record(issuer, "2210472"), make_record(issuer, "2210473")]
    harness.plan(odd, *rest)
    harness.deliver()
    harness.close()
    [failure] = store.failures("edubadges")
    assert failure.record_id == str(odd.record_id)
    assert "Edubadges refused the award: eppn: Incorrect eppn format (999)" in failure.reason
    assert all(harness.row(r).state is DeliveryState.SYNCED for r in rest)
    assert create_calls(sim) == 2 and len(sim.bundles) == 1


def test_refusals_of_the_badge_class_are_parked_with_edubadges_words(store, issuer):
    sim = simulator()
    sim.add_badgeclass("Disabled00000000000000", "Closed", direct_awarding_disabled=True)
    sim.add_badgeclass("NotMine000000000000000", "Other faculty", may_award=False)
    harness = Harness(store, issuer, sim)
    closed = make_record(issuer, "1", definition=make_definition(
        "MC-A", edubadges={"badgeclass": "Disabled00000000000000"}))
    foreign = make_record(issuer, "2", definition=make_definition(
        "MC-B", edubadges={"badgeclass": "NotMine000000000000000"}))
    harness.plan(closed, foreign)
    harness.deliver()
    harness.close()
    failures = {f.record_id: f for f in store.failures("edubadges")}
    assert "Direct awarding disabled for Closed" in failures[str(closed.record_id)].reason
    assert "You don't have the necessary permissions" in failures[str(foreign.record_id)].reason
    assert failures[str(foreign.record_id)].code == "100"
    assert not sim.direct_awards()


def test_already_offered_is_adopted_not_failed(store, issuer):
    """Someone awarded it in the Edubadges UI before mcsync ran: Edubadges says "already exists"."""
    sim = simulator()
    harness = Harness(store, issuer, sim)
    held, new = make_record(issuer, "2210481"), make_record(issuer, "2210482")
    earlier = simulator_create(sim, eppn(held))
    harness.plan(held, new)
    harness.deliver()
    row = harness.row(held)
    assert row.state is DeliveryState.SYNCED and row.remote.remote_id == earlier
    assert "took it over" in (row.note or "")
    assert harness.row(new).state is DeliveryState.SYNCED
    assert sim.awards_for(eppn(held), BC) == 1


def test_all_rejected_as_already_offered_is_adopted_too(store, issuer):
    sim, harness, record, earlier = adopted(store, issuer, "2210483")
    assert harness.row(record).remote.remote_id == earlier
    assert harness.row(record).state is DeliveryState.SYNCED
    assert len(sim.direct_awards()) == 1


def test_records_that_share_an_eppn_and_badge_class_share_one_award(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    first = make_record(issuer, "2210491", definition=make_definition("MC-DATA01"))
    second = make_record(issuer, "2210491", definition=make_definition("MC-DATA01-OLD"))
    harness.plan(first, second)
    harness.deliver()
    [da] = sim.direct_awards()
    assert harness.row(first).remote.remote_id == harness.row(second).remote.remote_id == da.entity_id
    [body] = harness.transport.bodies("/directaward/create")
    assert len(body["direct_awards"]) == 1


def test_bundles_respect_max_bundle_size_and_run_in_parallel(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim, max_bundle_size=3, concurrency=2)
    records = [make_record(issuer, f"30{i:05d}") for i in range(8)]
    harness.plan(*records)
    harness.deliver()
    harness.close()
    assert sorted(len(b["direct_awards"]) for b in harness.transport.bodies("/directaward/create")) == [2, 3, 3]
    assert all(harness.row(r).state is DeliveryState.SYNCED for r in records)
    assert sim.tokens_issued == 1


# desired() ------------------------------------------------------------------------------------------------
def test_desired_covers_badge_class_and_eppn_only(issuer):
    target = EdubadgesTarget(settings(), TargetContext(issuer=issuer, eppn_template=TEMPLATE))
    base = make_record(issuer, "2210451")
    assert target.desired(base) == target.desired(make_record(issuer, "2210451", grade="9.0", given_name="X"))
    assert target.desired(base) == target.desired(make_record(issuer, "2210451", eppn="2210451@Student.HZ.nl"))
    assert target.desired(base) != target.desired(make_record(issuer, "2210451", eppn="s.vries@student.hz.nl"))
    assert target.desired(base) != target.desired(make_record(issuer, "2210451", definition=make_definition(
        edubadges={"badgeclass": BC2})))
    assert target.desired(make_record(issuer, "2210451", status=ResultStatus.FAILED)) is None
    assert target.desired(make_record(issuer, "2210451", status=ResultStatus.FRAUD)) is None
    assert target.desired(make_record(issuer, "2210451", definition=make_definition(edubadges=None))) is None
    assert target.desired(make_definition()) is None


def test_settings_and_template_are_checked_up_front(issuer):
    with pytest.raises(ValueError, match="https"):
        settings(api_url="http://api.edubadges.nl")
    assert settings(api_url="http://127.0.0.1:8080/edubadges").api_url == "http://127.0.0.1:8080/edubadges"
    assert CLIENT_SECRET not in repr(settings()) and CLIENT_SECRET not in str(settings().model_dump())
    with pytest.raises(ConfigError, match="eppn_template"):
        EdubadgesTarget(settings(), TargetContext(issuer=issuer, eppn_template="{studentnummer}@hz.nl"))
    assert EdubadgesTarget.Settings is EdubadgesSettings



def test_an_attempts_data_names_every_field_so_that_begin_leaves_nothing_stale():
    from dataclasses import fields
    from datetime import UTC, datetime

    from mcsync.targets.edubadges.target import Attempt

    attempt = Attempt("create", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "BC1", "e@x.nl", "e@x.nl", "h", 0,
                      "bundle-1", None)
    data = attempt.as_data()["attempt"]
    assert list(data) == [f.name for f in fields(Attempt)]
    assert data["at"] == "2026-01-02T03:04:05+00:00" and data["bundle"] == "bundle-1" and data["rejected"] is None
