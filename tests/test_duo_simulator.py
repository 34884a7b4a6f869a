"""The sandbox register behaves as duo-register.md says. Bodies here are written by hand from the
spec (not with mcsync's builder), so the simulator is checked against the contract, not the client."""

from __future__ import annotations

import threading
from datetime import timedelta
from uuid import uuid4

import pytest
from lxml import etree

from mcsync.sandbox.base import Headers, SimRequest, SimResponse
from mcsync.sandbox.duo import DuoRegisterSimulator

from .duo_helpers import Clock, assert_valid, bsns, failing_elfproef

NS = "urn:mcsync:duo-register:v1"
OIN = "0000000700030GB00000"
BSN = bsns(3)


def resultaat(record_id: str | None = None, *, bsn: str | None = BSN[0], unit: str = "1234O5678",
              own_unit: str | None = None, studielast: str = "5", datum: str = "2025-06-27",
              resultaat_text: str = "7,5", onderwijsnummer: str | None = None) -> str:
    person = (f"<bsn>{bsn}</bsn>" if bsn else f"<onderwijsnummer>{onderwijsnummer}</onderwijsnummer>"
              if onderwijsnummer else "<eigenDeelnemerSleutel>s1</eigenDeelnemerSleutel><geboortedatum>2001-04-05"
              "</geboortedatum>")
    unit_el = (f"<eigenOpleidingseenheidSleutel>{own_unit}</eigenOpleidingseenheidSleutel>" if own_unit
               else f"<opleidingseenheidcode>{unit}</opleidingseenheidcode>")
    return (f'<resultaat recordId="{record_id or uuid4()}"><deelnemer>{person}<achternaam>Vries</achternaam>'
            f"</deelnemer>{unit_el}<onderwijsaanbiedercode>110A133</onderwijsaanbiedercode>"
            f"<datumBehaald>{datum}</datumBehaald><studielast>{studielast}</studielast>"
            f"<resultaat>{resultaat_text}</resultaat></resultaat>")


def levering(*records: str, levering_id: str | None = None, oin: str = OIN) -> tuple[str, bytes]:
    lid = levering_id or str(uuid4())
    body = (f'<?xml version="1.0" encoding="UTF-8"?><levering xmlns="{NS}" leveringId="{lid}" oin="{oin}" '
            f'datumTijdLevering="2026-03-02T09:00:00Z">{"".join(records)}</levering>')
    return lid, body.encode()


def post(sim: DuoRegisterSimulator, body: bytes, *, content_type: str = "application/xml; charset=utf-8",
         cert: dict | None = None) -> SimResponse:
    return sim.handle(SimRequest("POST", "/leveringen", {}, Headers({"Content-Type": content_type}), body, cert))


def get(sim: DuoRegisterSimulator, path: str, cert: dict | None = None) -> SimResponse:
    return sim.handle(SimRequest("GET", path, {}, Headers(), b"", cert))


def fout(response: SimResponse) -> tuple[int, str]:
    root = assert_valid(response.body)
    assert root.tag == f"{{{NS}}}fout"
    return response.status, root.get("code")


def regels(sim: DuoRegisterSimulator, lid: str) -> list[tuple[str, str, list[str]]]:
    response = get(sim, f"/leveringen/{lid}")
    assert response.status == 200
    root = assert_valid(response.body)
    assert root.get("status") == "verwerkt"
    return [(r.get("recordId"), r.get("status"), [s.get("code") for s in r]) for r in root]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> DuoRegisterSimulator:
    return DuoRegisterSimulator(processing_delay=5, clock=clock, known_bsns=set(BSN[:2]),
                                known_unit_codes={"1234O5678"})


def test_a_delivery_is_received_then_processed_after_the_delay(sim, clock) -> None:
    rid = str(uuid4())
    lid, body = levering(resultaat(rid))
    response = post(sim, body)
    assert response.status == 202
    assert response.headers["Location"] == f"/leveringen/{lid}"
    received = assert_valid(response.body)
    assert (received.get("leveringId"), received.get("aantal"), received.get("status")) == (lid, "1", "ontvangen")

    busy = get(sim, f"/leveringen/{lid}")
    root = assert_valid(busy.body)
    assert root.get("status") == "in_behandeling" and len(root) == 0
    assert busy.headers["Retry-After"] == "5"
    assert sim.registered(rid) is None

    clock.advance(3)
    assert get(sim, f"/leveringen/{lid}").headers["Retry-After"] == "2"
    clock.advance(2)
    assert regels(sim, lid) == [(rid, "geaccepteerd", ["R000"])]
    assert sim.registered(rid).status == "geregistreerd"


def test_lines_follow_delivery_order_with_volgnummer(sim, clock) -> None:
    ids = [str(uuid4()) for _ in range(3)]
    lid, body = levering(*(resultaat(i) for i in ids))
    post(sim, body)
    clock.advance(5)
    root = assert_valid(get(sim, f"/leveringen/{lid}").body)
    assert [(r.get("volgnummer"), r.get("recordId")) for r in root] == [("1", ids[0]), ("2", ids[1]), ("3", ids[2])]


def test_same_leveringid_same_bytes_is_the_same_delivery(sim) -> None:
    lid, body = levering(resultaat())
    first, second = post(sim, body), post(sim, body)
    assert (first.status, second.status) == (202, 202) and first.body == second.body
    assert sim.deliveries_received == [lid] and sim.posts == 2


def test_same_leveringid_other_bytes_is_409(sim) -> None:
    lid, body = levering(resultaat())
    post(sim, body)
    _, other = levering(resultaat(), levering_id=lid)
    assert fout(post(sim, other)) == (409, "LEV409")
    assert sim.deliveries_received == [lid]


def test_over_ten_mib_is_413_before_anything_else(sim) -> None:
    assert fout(post(sim, b"<" * (10 * 1024 * 1024 + 1))) == (413, "LEV413")
    assert post(sim, levering(resultaat())[1]).status == 202


def test_content_type_must_be_xml(sim) -> None:
    assert fout(post(sim, levering(resultaat())[1], content_type="application/json")) == (415, "LEV415")


def test_more_than_a_thousand_records_is_xsd002(sim) -> None:
    _, body = levering(*[f'<intrekking recordId="{uuid4()}" reden="r"/>' for _ in range(1001)])
    assert fout(post(sim, body)) == (400, "XSD002")
    assert sim.deliveries_received == []


@pytest.mark.parametrize("body", [
    levering(resultaat(bsn="12345678"))[1],                       # 8 digits: a schema violation
    levering(resultaat(unit="12345678"))[1],
    levering(resultaat(studielast="5.25"))[1],                     # two decimals
    b"<levering",                                                  # not well-formed
    (f'<?xml version="1.0"?><!DOCTYPE levering [<!ENTITY e "x">]><levering xmlns="{NS}"/>').encode(),
    f'<leveringOntvangen xmlns="{NS}" leveringId="{uuid4()}" aantal="1" status="ontvangen"/>'.encode(),
])
def test_schema_errors_are_xsd001_and_store_nothing(sim, body) -> None:
    response = post(sim, body)
    assert fout(response) == (400, "XSD001")
    assert sim.deliveries_received == []


def test_xsd001_names_the_first_violation(sim) -> None:
    response = post(sim, levering(resultaat(bsn="12345678"))[1])
    assert b"bsn" in response.body


def _cert(oin: str) -> dict:
    return {"subject": ((("countryName", "NL"),), (("organizationName", "HZ"),), (("serialNumber", oin),),
                        (("commonName", "mcsync"),))}


def test_the_oin_must_match_the_client_certificate(sim) -> None:
    assert fout(post(sim, levering(resultaat())[1], cert=_cert("00000001234567890000"))) == (403, "AUT001")
    assert fout(post(sim, levering(resultaat())[1], cert={"subject": ()})) == (403, "AUT001")
    lid, body = levering(resultaat())
    assert post(sim, body, cert=_cert(OIN)).status == 202
    assert fout(get(sim, f"/leveringen/{lid}", cert=_cert("00000001234567890000"))) == (403, "AUT001")
    assert get(sim, f"/leveringen/{lid}", cert=_cert(OIN)).status == 200


@pytest.mark.parametrize(("record", "status", "codes"), [
    (resultaat(bsn=BSN[0]), "geaccepteerd", ["R000"]),
    (resultaat(bsn=BSN[2]), "afgekeurd", ["R001"]),                     # elfproef fine, not known
    (resultaat(bsn=failing_elfproef(BSN[0])), "afgekeurd", ["R002"]),
    (resultaat(unit="9999O9999"), "afgekeurd", ["R101"]),
    (resultaat(own_unit="eigen-sleutel-1"), "afgekeurd", ["R102"]),
    (resultaat(studielast="2.5"), "afgekeurd", ["R201"]),
    (resultaat(studielast="30.5"), "afgekeurd", ["R201"]),
    (resultaat(studielast="30"), "geaccepteerd", ["R000"]),
    (resultaat(studielast="3"), "geaccepteerd", ["R000"]),
    (resultaat(datum="2026-03-03"), "afgekeurd", ["R202"]),            # the clock says 2026-03-02
    (resultaat(datum="2026-03-02"), "geaccepteerd", ["R000"]),
    (resultaat(bsn=None), "geaccepteerd", ["R000"]),                   # student number + date of birth
    (resultaat(bsn=BSN[2], unit="9999O9999", studielast="40"), "afgekeurd", ["R001", "R101", "R201"]),
    (f'<intrekking recordId="{uuid4()}" reden="Fraude"/>', "afgekeurd", ["R401"]),
])
def test_signals(sim, clock, record, status, codes) -> None:
    lid, body = levering(record)
    assert post(sim, body).status == 202
    clock.advance(5)
    [(_, got_status, got_codes)] = regels(sim, lid)
    assert (got_status, got_codes) == (status, codes)


def test_onderwijsnummer_and_unknown_bsns(clock) -> None:
    sim = DuoRegisterSimulator(processing_delay=0, clock=clock, unknown_bsns={BSN[1]},
                               known_onderwijsnummers={"103456789"})
    lid, body = levering(resultaat(bsn=BSN[0]), resultaat(bsn=BSN[1]),
                         resultaat(bsn=None, onderwijsnummer="103456789"),
                         resultaat(bsn=None, onderwijsnummer="103456788"))
    post(sim, body)
    assert [codes for _, _, codes in regels(sim, lid)] == [["R000"], ["R001"], ["R000"], ["R001"]]


def test_unit_codes_can_come_from_a_callable(clock) -> None:
    asked: list[str] = []

    def rio_knows(code: str) -> bool:
        asked.append(code)
        return code == "1111O2222"

    sim = DuoRegisterSimulator(processing_delay=0, clock=clock, known_unit_codes=rio_knows)
    lid, body = levering(resultaat(unit="1111O2222"), resultaat(unit="1234O5678"))
    post(sim, body)
    assert [codes for _, _, codes in regels(sim, lid)] == [["R000"], ["R101"]]
    assert asked == ["1111O2222", "1234O5678"]


def test_identical_content_is_r301_and_changed_content_replaces(sim, clock) -> None:
    rid = str(uuid4())
    for record in (resultaat(rid), resultaat(rid), resultaat(rid, resultaat_text="8")):
        post(sim, levering(record)[1])
    clock.advance(5)
    assert [codes for _, _, codes in sim.processed(rid)] == [("R000",), ("R301",), ("R000",)]
    assert sim.registered(rid).text("resultaat") == "8"


def test_withdrawal_then_lookup(sim, clock) -> None:
    rid = str(uuid4())
    assert fout(get(sim, f"/resultaten/{rid}")) == (404, "RES404")
    first, body = levering(resultaat(rid))
    post(sim, body)
    clock.advance(5)
    found = assert_valid(get(sim, f"/resultaten/{rid}").body)
    assert (found.get("status"), found.get("leveringId")) == ("geregistreerd", first)
    assert found[0].find(f"{{{NS}}}deelnemer/{{{NS}}}bsn").text == BSN[0]

    second, body = levering(f'<intrekking recordId="{rid}" reden="Fraude vastgesteld"/>')
    post(sim, body)
    clock.advance(5)
    assert regels(sim, second) == [(rid, "geaccepteerd", ["R000"])]
    found = assert_valid(get(sim, f"/resultaten/{rid}").body)
    assert (found.get("status"), found.get("leveringId")) == ("ingetrokken", second)
    third, body = levering(f'<intrekking recordId="{rid}" reden="nogmaals"/>')
    post(sim, body)
    clock.advance(5)
    assert regels(sim, third) == [(rid, "afgekeurd", ["R401"])]


def test_fail_next_gives_r900_once(sim, clock) -> None:
    rid = str(uuid4())
    sim.fail_next(rid)
    for _ in range(2):
        post(sim, levering(resultaat(rid))[1])
    clock.advance(5)
    assert [(status, codes) for _, status, codes in sim.processed(rid)] == [("afgekeurd", ("R900",)),
                                                                           ("geaccepteerd", ("R000",))]


def test_refusals_store_nothing_and_say_when(sim) -> None:
    sim.refuse_next(2, status=503, retry_after="7")
    lid, body = levering(resultaat())
    for _ in range(2):
        response = post(sim, body)
        assert response.status == 503 and response.headers["Retry-After"] == "7"
    assert sim.deliveries_received == []
    assert post(sim, body).status == 202 and sim.deliveries_received == [lid]


def test_a_dropped_answer_still_stored_the_delivery(sim) -> None:
    sim.drop_next_response()
    lid, body = levering(resultaat())
    assert post(sim, body).drop_connection
    assert sim.deliveries_received == [lid]
    assert not post(sim, body).drop_connection


def test_unknown_delivery_path_and_method(sim) -> None:
    assert fout(get(sim, f"/leveringen/{uuid4()}")) == (404, "LEV404")
    assert fout(get(sim, "/leveringen"))[0] == 405
    assert fout(get(sim, "/elders"))[0] == 404


def test_deliveries_are_processed_in_order_of_receipt(clock) -> None:
    sim = DuoRegisterSimulator(processing_delay=5, clock=clock)
    rid = str(uuid4())
    first, body = levering(resultaat(rid, resultaat_text="6"))
    post(sim, body)
    clock.advance(2)
    post(sim, levering(resultaat(rid, resultaat_text="9"))[1])
    clock.advance(3)
    assert regels(sim, first)                       # the first is due, the second not yet
    assert sim.registered(rid).text("resultaat") == "6"
    clock.advance(timedelta(seconds=2).total_seconds())
    assert sim.registered(rid).text("resultaat") == "9"
    assert sim.summary() == "2 deliveries (0 in processing), 1 results registered, 0 withdrawn"


def test_threads_posting_at_once_each_store_once(clock) -> None:
    sim = DuoRegisterSimulator(processing_delay=0, clock=clock)
    bodies = [levering(resultaat()) for _ in range(20)]
    threads = [threading.Thread(target=post, args=(sim, body)) for _, body in bodies for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sim.deliveries_received) == sorted(lid for lid, _ in bodies)
    assert sim.posts == 60 and len(sim.registrations) == 20


def test_every_answer_is_valid_xml_of_the_contract(sim, clock) -> None:
    rid = str(uuid4())
    lid, body = levering(resultaat(rid))
    answers = [post(sim, body), get(sim, f"/leveringen/{lid}")]
    clock.advance(5)
    answers += [get(sim, f"/leveringen/{lid}"), get(sim, f"/resultaten/{rid}"), get(sim, f"/resultaten/{uuid4()}")]
    for answer in answers:
        assert answer.headers["Content-Type"] == "application/xml; charset=utf-8"
        assert_valid(answer.body)
        assert etree.fromstring(answer.body).nsmap[None] == NS
