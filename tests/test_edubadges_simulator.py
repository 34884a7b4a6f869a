"""The Edubadges simulator behaves as edubadges-api.md documents the real service. Requests here are
written by hand from the reference (not with mcsync's client), so the simulator is checked against the
contract, not against the target."""

from __future__ import annotations

import ast
import base64
import uuid

import httpx
import pytest

from mcsync.sandbox.base import SimResponse

from .edubadges_helpers import BC, BC2, BC_NAME, JSON, Clock, auth, bundle_body, client, simulator, token


def award(eppn: str, email: str | None = None, **extra: str) -> dict[str, str]:
    return {"eppn": eppn, "recipient_email": email or f"mail.{eppn}", **extra}


def s(n: int) -> str:
    return f"s{n}@student.hz.nl"


def test_token_endpoint_issues_bearer_tokens_and_refuses_unknown_clients() -> None:
    sim = simulator(token_ttl=900)
    with client(sim) as http:
        good = token(http)
        assert good.status_code == 200
        assert good.json()["token_type"] == "Bearer" and good.json()["expires_in"] == 900
        assert good.json()["scope"] == "edubadges.nl/sis"
        bad = token(http, secret="wrong")
        assert bad.status_code == 401 and bad.json() == {"error": "invalid_client"}
        assert token(http, client_id="stranger").status_code == 401
    assert sim.tokens_issued == 1


def test_every_call_needs_a_live_token_and_x_requested_with_skips_oidc() -> None:
    clock = Clock()
    sim = simulator(clock=clock, token_ttl=3600)
    with client(sim) as http:
        headers = auth(http)
        assert http.get("/queries/badge-classes", headers=headers).status_code == 200
        refused = http.get("/queries/badge-classes", headers={**headers, "X-Requested-With": "client"})
        assert refused.status_code == 403
        assert refused.json() == {"detail": "Authentication credentials were not provided."}
        assert http.get("/queries/badge-classes", headers=JSON).status_code == 403
        clock.now += 3601
        expired = http.get("/queries/badge-classes", headers=headers)
        assert expired.status_code == 403 and expired.json()["detail"].startswith("Authentication credentials")


def test_create_then_bundle_status_has_the_reference_shape() -> None:
    sim = simulator()
    with client(sim) as http:
        headers = auth(http)
        created = http.post("/directaward/create", headers=headers, json=bundle_body(
            award(s(1), "Jan.Jansen@student.hz.nl", first_name="Jan", surname="Jansen", grade_achieved="8.5"),
            award(s(2), "p.pietersen@student.hz.nl")))
        assert created.status_code == 201
        assert created.headers["content-type"] == "application/json"
        assert created.json()["badgeclass"] == BC and len(created.json()["entity_id"]) == 22
        assert "un_successful_direct_award" not in created.json()
        bundle_id = created.json()["entity_id"]
        status = http.get(f"/directaward/bundle/{bundle_id}", headers=headers).json()
        assert set(status) == {"initial_total", "status", "badgeclass", "assertion_count", "direct_award_count",
                               "direct_award_rejected_count", "direct_award_scheduled_count",
                               "direct_award_deleted_count", "direct_award_revoked_count", "direct_awards",
                               "badge_assertions"}
        assert status["badgeclass"] == BC_NAME                    # the name, not the entity id
        assert status["initial_total"] == 2 and status["direct_award_count"] == 2
        assert {a["recipient_email"] for a in status["direct_awards"]} == {"jan.jansen@student.hz.nl",
                                                                            "p.pietersen@student.hz.nl"}
        assert {a["status"] for a in status["direct_awards"]} == {"Unaccepted"}
        first = next(a for a in status["direct_awards"] if a["eppn"] == s(1))
        assertion_id = sim.claim(first["entity_id"])
        status = http.get(f"/directaward/bundle/{bundle_id}", headers=headers).json()
        assert [a["eppn"] for a in status["direct_awards"]] == [s(2)]     # a claimed award leaves the list
        assert status["badge_assertions"] == [{"full_name": "Jan Jansen", "email": "jan.jansen@student.hz.nl",
                                               "public": False, "revoked": False, "entity_id": assertion_id,
                                               "eppn": s(1)}]
        assert status["assertion_count"] == 1 and status["direct_award_count"] == 1
        unknown = http.get("/directaward/bundle/NoSuchBundle0000000000", headers=headers)
        assert unknown.status_code == 404 and unknown.content == b""


def test_within_one_bundle_the_second_award_for_a_learner_is_refused_and_ids_are_uuid4s() -> None:
    sim = simulator()
    with client(sim) as http:
        headers = auth(http)
        made = http.post("/directaward/create", headers=headers, json=bundle_body(
            award(s(7)), award(s(8)), award(s(7), "other@student.hz.nl")))
        assert made.status_code == 201
        assert [r["eppn"] for r in made.json()["un_successful_direct_award"]] == [s(7)]
        by_email = http.post("/directaward/create", headers=headers, json=bundle_body(
            {"recipient_email": "a@x.nl"}, {"recipient_email": "A@x.nl"}, {"recipient_email": "b@x.nl"},
            identifier_type="email"))
        assert [r["email"] for r in by_email.json()["un_successful_direct_award"]] == ["a@x.nl"]
        for answer in (made, by_email):
            entity = answer.json()["entity_id"]
            as_uuid = uuid.UUID(bytes=base64.urlsafe_b64decode(entity + "=="))
            assert len(entity) == 22 and as_uuid.version == 4 and as_uuid.variant == uuid.RFC_4122
    assert len(sim.direct_awards()) == 4


def test_duplicate_rule_blocks_only_an_unaccepted_award_so_a_claimed_one_gets_a_second() -> None:
    sim = simulator()
    with client(sim) as http:
        headers = auth(http)
        first = http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1)), award(s(2))))
        assert first.status_code == 201
        again = http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1)), award(s(3))))
        assert again.status_code == 201
        [refusal] = again.json()["un_successful_direct_award"]
        assert refusal["eppn"] == s(1) and set(refusal) == {"error", "eppn", "email"}
        assert "status Unaccepted already exists for badgeclass " + BC_NAME in refusal["error"]
        all_dupes = http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1)), award(s(1))))
        assert all_dupes.status_code == 400
        text = all_dupes.json()["error"]
        assert text.startswith("No valid DirectAwards are created. All of them were rejected: [")
        assert len(ast.literal_eval(text[text.index("["):])) == 2
        # the learner claims: nothing blocks a new award any more, and Edubadges makes a second one
        [da] = sim.direct_awards(eppn=s(1), badgeclass=BC)
        sim.claim(da.entity_id)
        assert sim.awards_for(s(1), BC) == 1
        second = http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1))))
        assert second.status_code == 201 and "un_successful_direct_award" not in second.json()
        assert sim.awards_for(s(1), BC) == 2
        # another badge class is another award
        assert http.post("/directaward/create", headers=headers,
                         json=bundle_body(award(s(1)), badgeclass=BC2)).status_code == 201


def test_validation_errors_carry_the_reference_codes() -> None:
    sim = simulator(eppn_pattern=r"^s\d+@student\.hz\.nl$")
    with client(sim) as http:
        headers = auth(http)
        body = bundle_body(award(s(1)), award("teacher@hz.nl"), award(s(2), "not-an-address"))
        del body["notify_recipients"]
        answer = http.post("/directaward/create", headers=headers, json=body)
        assert answer.status_code == 400
        assert answer.json() == {"detail": "validation_error", "fields": {"error_code": 999, "error_message": {
            "notify_recipients": [{"error_code": 904, "error_message": "This field is required."}],
            "direct_awards": [{}, {"eppn": [{"error_code": 999, "error_message": "Incorrect eppn format"}]},
                              {"recipient_email": [{"error_code": 902, "error_message": "Enter a valid email address."}]}],
        }}}
        unknown = http.post("/directaward/create", headers=headers,
                            json=bundle_body(award(s(1)), badgeclass="NoSuchBadgeClass000000"))
        assert unknown.json()["fields"]["error_message"]["badgeclass"] == [
            {"error_code": 999, "error_message": "Object with entity_id=NoSuchBadgeClass000000 does not exist."}]
        body = bundle_body(award(s(1)))
        del body["badgeclass"]
        assert http.post("/directaward/create", headers=headers, json=body).json() == {"error": "'badgeclass'"}
        body = bundle_body({"eppn": s(1)})
        assert http.post("/directaward/create", headers=headers, json=body).json() == {"error": "'recipient_email'"}
    assert not sim.bundles and not sim.direct_awards()


def test_badge_class_flags_and_permissions_refuse_the_whole_bundle() -> None:
    sim = simulator()
    sim.add_badgeclass("Disabled00000000000000", "Closed", direct_awarding_disabled=True)
    sim.add_badgeclass("Draft0000000000000000a", "Concept", is_private=True)
    sim.add_badgeclass("NotMine000000000000000", "Other faculty", may_award=False)
    with client(sim) as http:
        headers = auth(http)

        def create(badgeclass: str) -> httpx.Response:
            return http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1)), badgeclass=badgeclass))

        assert create("Disabled00000000000000").json() == {"error": "Direct awarding disabled for Closed"}
        assert create("Draft0000000000000000a").json() == {
            "error": " Badgeclass Concept is not published. Direct awarding not allowed"}
        assert create("NotMine000000000000000").json() == {"detail": "validation_error", "fields": {
            "error_message": "You don't have the necessary permissions", "error_code": 100}}
    assert not sim.direct_awards()


def test_error_rendering_follows_the_request_content_type_and_accept_header() -> None:
    sim = simulator()
    with client(sim) as http:
        bearer = auth(http)["Authorization"]
        sim.fail_introspection(2)
        timeout = http.get("/queries/direct-awards", headers={**JSON, "Authorization": bearer})
        assert timeout.status_code == 400 and "Read timed out" in timeout.json()["error"]
        html = http.get("/queries/direct-awards", headers={"Authorization": bearer})
        assert html.status_code == 500 and html.headers["content-type"].startswith("text/html")
        ld = http.get("/queries/badge-classes", headers={"Authorization": bearer, "Content-Type": "application/json"})
        assert ld.headers["content-type"] == "application/ld+json"
        assert {b["entityId"] for b in ld.json()} == {BC, BC2}
        big = http.post("/directaward/create", headers={**JSON, "Authorization": bearer},
                        content=b'{"x": "' + b"a" * (5 * 1024 * 1024) + b'"}')
        assert big.status_code == 400


def test_delete_and_revoke_behave_like_edubadges() -> None:
    sim = simulator()
    with client(sim) as http:
        headers = auth(http)
        http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1)), award(s(2)), award(s(3))))
        ids = {a.eppn: a.entity_id for a in sim.direct_awards()}
        deleted = http.put("/directaward/delete-direct-awards", headers=headers, json={
            "revocation_reason": "Result corrected in SIS", "direct_awards": [{"entity_id": ids[s(1)]}]})
        assert deleted.json() == {"result": "ok", "un_successful_direct_awards": []}
        again = http.put("/directaward/delete-direct-awards", headers=headers, json={
            "revocation_reason": "again", "direct_awards": [{"entity_id": ids[s(1)]}]})
        assert again.status_code == 400
        assert "No valid DirectAwards are deleted" in again.json()["error"]
        assert "DirectAward has already been deleted" in again.json()["error"]
        listed = http.get("/queries/direct-awards", params={"status": "deleted"}, headers=headers).json()
        assert [(r["entityId"], r["eppn"], r["bc_entity_id"]) for r in listed] == [(ids[s(1)], s(1), BC)]
        unclaimed = http.get("/queries/direct-awards", params={"status": "unclaimed"}, headers=headers).json()
        assert {r["eppn"] for r in unclaimed} == {s(2), s(3)}
        a2, a3 = sim.claim(ids[s(2)]), sim.claim(ids[s(3)])
        missing = http.put("/directaward/delete-direct-awards", headers=headers, json={
            "revocation_reason": "x", "direct_awards": [{"entity_id": ids[s(2)]}]})
        assert "DirectAward matching query does not exist." in missing.json()["error"]
        no_reason = http.post("/issuer/revoke-assertions", headers=headers, json={"assertions": [{"entity_id": a2}]})
        assert no_reason.json()["fields"]["error_message"]["revocation_reason"][0]["error_code"] == 999
        ok = http.post("/issuer/revoke-assertions", headers=headers,
                       json={"revocation_reason": "fraud", "assertions": [{"entity_id": a2}]})
        assert ok.json() == {"result": "ok"}
        # not atomic: a3 before the failing (already revoked) a2 is revoked, and stays so
        partial = http.post("/issuer/revoke-assertions", headers=headers, json={
            "revocation_reason": "fraud", "assertions": [{"entity_id": a3}, {"entity_id": a2}]})
        assert partial.status_code == 400 and partial.json() == {"error": "['Assertion is already revoked']"}
        assert all(a.revoked for a in sim.assertions())
        unknown = http.post("/issuer/revoke-assertions", headers=headers, json={
            "revocation_reason": "fraud", "assertions": [{"entity_id": "NoSuchAssertion0000000"}]})
        assert unknown.json() == {"error": "BadgeInstance matching query does not exist."}


def test_scripted_failures_apply_or_not_as_asked() -> None:
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", SimResponse(503, b"", {"Retry-After": "7"}))
    sim.fail_next("POST", "/directaward/create", after_apply=True, drop=True)
    with client(sim) as http:
        headers = auth(http)
        busy = http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1))))
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"
        assert not sim.direct_awards()
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/directaward/create", headers=headers, json=bundle_body(award(s(1))))
        assert len(sim.direct_awards(eppn=s(1))) == 1          # applied, although the answer never came
        sim.expire(sim.direct_awards()[0].entity_id)
        assert sim.awards_for(s(1), BC) == 0
