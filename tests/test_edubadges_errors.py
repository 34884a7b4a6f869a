"""How the Edubadges target reads failures: the classification table, the token, Retry-After, outages."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from mcsync.errors import AuthError, PermanentError, RetriableError, TargetUnavailable, UnknownOutcome
from mcsync.sandbox.base import Faults, SimResponse, mock_transport
from mcsync.targets.base import DeliveryState
from mcsync.targets.edubadges.errors import EdubadgesRejection, Meaning, classify, parse_rejections

from .conftest import make_record
from .edubadges_helpers import BC, CLIENT_SECRET, Clock, Harness, create_calls, eppn, simulator

VALIDATION = {"detail": "validation_error", "fields": {"error_message": {
    "notify_recipients": [{"error_code": 904, "error_message": "This field is required."}],
    "direct_awards": [{}, {"eppn": [{"error_code": 999, "error_message": "Incorrect eppn format"}]}]},
    "error_code": 999}}
BUSINESS = {"detail": "validation_error", "fields": {"error_message": "You don't have the necessary permissions",
                                                     "error_code": 100}}
ALL_REJECTED = {"error": "No valid DirectAwards are created. All of them were rejected: [{'error': \"DirectAward "
                         "with eppn: o'neil@student.hz.nl / email: o@hz.nl and status Unaccepted already exists for "
                         "badgeclass Intro Python (42).\", 'eppn': \"o'neil@student.hz.nl\", 'email': 'o@hz.nl'}]"}


def answer(status: int, body: object = None, *, content: bytes | None = None,
           method: str = "POST") -> httpx.Response:
    request = httpx.Request(method, "https://api-test.edubadges.nl/directaward/create")
    if content is None:
        content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, request=request)


@pytest.mark.parametrize(("response", "creating", "error", "meaning"), [
    (answer(400, VALIDATION), True, EdubadgesRejection, Meaning.INVALID),
    (answer(400, BUSINESS), True, EdubadgesRejection, Meaning.REFUSED),
    (answer(400, ALL_REJECTED), True, EdubadgesRejection, Meaning.ALL_REJECTED),
    (answer(400, {"error": "DirectAward with eppn: a@b / email: a@b.nl and status Unaccepted already exists for "
                           "badgeclass X (1)."}), True, EdubadgesRejection, Meaning.ALREADY_OFFERED),
    (answer(400, {"error": "'badgeclass'"}), True, EdubadgesRejection, Meaning.BAD_REQUEST),
    (answer(400, {"error": "Direct awarding disabled for Intro Python"}), True, EdubadgesRejection, Meaning.REFUSED),
    (answer(400, {"error": " Badgeclass X is not published. Direct awarding not allowed"}), True,
     EdubadgesRejection, Meaning.REFUSED),
    (answer(400, {"error": "BadgeInstance matching query does not exist."}), False, EdubadgesRejection,
     Meaning.NOT_FOUND),
    (answer(400, {"error": "['Assertion is already revoked']"}), False, EdubadgesRejection, Meaning.ALREADY_DONE),
    (answer(400, {"error": "HTTPSConnectionPool(host='connect.surfconext.nl', port=443): Read timed out."}), True,
     RetriableError, Meaning.TRANSIENT),
    (answer(400, {"error": "Institution with manage_client_id mcsync does not exists"}), True, TargetUnavailable,
     Meaning.CLIENT_NOT_LINKED),
    (answer(403, {"detail": "Authentication credentials were not provided."}), True, AuthError,
     Meaning.CREDENTIALS_REFUSED),
    (answer(429), True, RetriableError, Meaning.THROTTLED),
    (answer(503, content=b"<html>maintenance</html>"), True, RetriableError, Meaning.UNAVAILABLE),
    (answer(502, content=b"<html>Bad gateway</html>"), True, UnknownOutcome, Meaning.SERVER_ERROR),
    (answer(502, content=b"<html>Bad gateway</html>"), False, RetriableError, Meaning.SERVER_ERROR),
    (answer(400, content=b"<h1>Bad Request (400)</h1>"), True, EdubadgesRejection, Meaning.BAD_REQUEST),
])
def test_the_table_sorts_status_shape_and_text_into_error_classes(response, creating, error, meaning):
    found = classify(response, creating=creating, retry_after=3.0)
    assert type(found) is error
    if isinstance(found, EdubadgesRejection):
        assert found.meaning is meaning
    if isinstance(found, RetriableError):
        assert found.retry_after == 3.0


def test_field_errors_are_kept_per_award_and_the_rejection_list_is_read_as_a_literal():
    found = classify(answer(400, VALIDATION), creating=True)
    assert isinstance(found, EdubadgesRejection) and found.code == "999"
    assert found.field_errors["direct_awards"][1]["eppn"][0]["error_message"] == "Incorrect eppn format"
    assert "notify_recipients: This field is required. (904)" in found.message
    [entry] = parse_rejections(ALL_REJECTED["error"])
    assert entry["eppn"] == "o'neil@student.hz.nl" and "already exists" in entry["error"]
    assert parse_rejections("No valid DirectAwards are created. All of them were rejected: [__import__('os')]") is None


def test_an_expired_token_is_renewed_once_and_the_call_repeated(store, issuer):
    clock = Clock()
    sim = simulator(clock=clock, token_ttl=3600)
    harness = Harness(store, issuer, sim)
    first, second, third = (make_record(issuer, n) for n in ("2210401", "2210402", "2210403"))
    harness.plan(first)
    harness.deliver()
    clock.now += 3700                        # Edubadges' view: the cached token has expired
    harness.plan(second)
    harness.deliver()
    refused = next(i for i, c in enumerate(sim.calls) if c.status == 403)
    assert [(c.method, c.path, c.status) for c in sim.calls[refused:refused + 3]] == [
        ("GET", "/queries/badge-classes", 403), ("POST", "/oidc/token", 200), ("GET", "/queries/badge-classes", 200)]
    # a refused create is renewed and repeated the same way (Edubadges checks the token before anything else)
    sim.fail_next("POST", "/directaward/create", SimResponse.json(403, {"detail": "Authentication credentials "
                                                                                  "were not provided."}))
    harness.plan(third)
    harness.deliver()
    harness.close()
    assert sim.tokens_issued == 3
    assert [c.status for c in sim.calls if c.path == "/directaward/create"] == [201, 201, 403, 201]
    assert [c.status for c in sim.calls].count(403) == 2
    assert all(harness.row(r).state is DeliveryState.SYNCED for r in (first, second, third))
    assert sim.awards_for(eppn(third), BC) == 1


def test_refused_credentials_stop_the_target_with_the_work_queued_and_no_secret_anywhere(store, issuer, caplog):
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    sim = simulator(clock=clock)
    harness = Harness(store, issuer, sim)
    first, second = make_record(issuer, "2210403"), make_record(issuer, "2210404")
    harness.plan(first)
    harness.deliver()
    sim.clients.clear()                      # SURF revoked the client
    clock.now += 3700
    harness.plan(second)
    with pytest.raises(TargetUnavailable, match="refused client 'mcsync-hz'") as caught:
        harness.deliver()
    harness.close()
    assert harness.row(second).state is DeliveryState.PENDING and harness.row(second).attempts == 0
    tokens = {r.headers["Authorization"][7:] for r in harness.transport.api()}
    texts = [caplog.text, str(caught.value), *(row.note or "" for row in store.rows("edubadges", [
        str(first.record_id), str(second.record_id)]).values())]
    for text in texts:
        assert CLIENT_SECRET not in text
        assert not any(token in text for token in tokens)


def test_retry_after_is_honoured_on_503_and_429(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    sim.fail_next("POST", "/directaward/create", SimResponse(503, b"", {"Retry-After": "30"}), times=2)
    sim.fail_next("GET", "/directaward/bundle/*", SimResponse.json(429, {"detail": "slow down"},
                                                                    {"Retry-After": "12"}))
    record = make_record(issuer, "2210405")
    harness.plan(record)
    harness.deliver()
    harness.close()
    assert harness.sleeps == [30.0, 30.0, 12.0]
    assert harness.row(record).state is DeliveryState.SYNCED
    assert create_calls(sim) == 3 and len(sim.direct_awards()) == 1


def test_a_transient_introspection_failure_is_retried(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim)
    sim.fail_introspection(1)
    record = make_record(issuer, "2210406")
    harness.plan(record)
    harness.deliver()
    harness.close()
    assert len(harness.sleeps) == 1
    assert harness.row(record).state is DeliveryState.SYNCED and len(sim.direct_awards()) == 1


def test_a_target_that_keeps_failing_is_unavailable_and_its_work_stays_queued(store, issuer):
    sim = simulator()
    harness = Harness(store, issuer, sim, transport=mock_transport(sim, faults=Faults(error_rate=1.0, retry_after="2")),
                      max_attempts=3)
    records = [make_record(issuer, "2210407"), make_record(issuer, "2210408")]
    harness.plan(*records)
    with pytest.raises(TargetUnavailable, match="after 3 attempts"):
        harness.deliver()
    harness.close()
    assert all(harness.row(r).state is DeliveryState.PENDING for r in records)
    assert len(harness.sleeps) == 2 and all(s >= 2.0 for s in harness.sleeps)
    assert not sim.direct_awards()


def test_a_create_that_cannot_get_through_goes_back_to_the_queue(store, issuer):
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", SimResponse(503, b""), times=3)
    harness = Harness(store, issuer, sim, max_attempts=3)
    record = make_record(issuer, "2210411")
    harness.plan(record)
    with pytest.raises(TargetUnavailable):
        harness.deliver()
    harness.close()
    row = harness.row(record)
    assert row.state is DeliveryState.PENDING and row.attempts == 1 and "not sent" in (row.note or "")
    assert not sim.direct_awards()


def test_connection_refused_is_unavailable_and_nothing_is_in_flight(store, issuer):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    sim = simulator()
    harness = Harness(store, issuer, sim, transport=httpx.MockTransport(refuse), max_attempts=2)
    record = make_record(issuer, "2210409")
    harness.plan(record)
    with pytest.raises(TargetUnavailable, match="Connection refused"):
        harness.deliver()
    harness.close()
    assert harness.row(record).state is DeliveryState.PENDING


def test_a_permanent_error_class_is_what_parks(store, issuer):
    """The business shape through the whole stack: parked, with Edubadges' code."""
    sim = simulator()
    sim.fail_next("POST", "/directaward/create", SimResponse.json(400, BUSINESS))
    harness = Harness(store, issuer, sim)
    record = make_record(issuer, "2210410")
    harness.plan(record)
    harness.deliver()
    harness.close()
    [failure] = store.failures("edubadges")
    assert failure.code == "100" and "necessary permissions" in failure.reason
    assert issubclass(EdubadgesRejection, PermanentError)
