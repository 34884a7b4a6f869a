"""The RIO simulator behaves like DUO: checks, codes, answer shapes, eventual consistency."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from lxml import etree

from mcsync.sandbox.base import mock_transport
from mcsync.sandbox.rio import RioSimulator
from mcsync.targets.rio.client import RioClient
from mcsync.targets.rio.contract import BEHEREN, RAADPLEGEN, WSU, operation
from mcsync.targets.rio.envelope import build_envelope, serialize
from mcsync.targets.rio.messages import (
    AanleverenAangebodenOpleiding,
    AanleverenOpleidingseenheid,
    Bedrijfsdocument,
    OpvragenOpleidingseenheid,
    OpvragenRioIdentificatiecode,
    VerwijderenAangebodenOpleiding,
    VerwijderenOpleidingseenheid,
    plan,
)
from mcsync.targets.rio.responses import parse_envelope, unit_snapshot
from mcsync.targets.rio.signing import Credentials, Signer

from .rio_helpers import ISSUER, PARSER, RECORDED, FakeClock, Pki, definition, duo_errors, make_pki, settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> RioSimulator:
    return RioSimulator(visibility_delay=5.0, clock=clock.now)


def client_for(sim: RioSimulator, pki: Pki, clock: FakeClock) -> RioClient:
    return RioClient(settings(pki, call_attempts=1), sender_oin=ISSUER.oin or "", transport=mock_transport(sim, "/rio"),
                     sleep=clock.sleep, clock=clock.now)


def call(client: RioClient, request: object):
    async def go():
        return await client.call(request, what="test")  # type: ignore[arg-type]
    return asyncio.run(go()).response


def raw_post(sim: RioSimulator, path: str, content: bytes, **headers: str) -> httpx.Response:
    with httpx.Client(transport=mock_transport(sim, "/rio"), base_url="https://rio.test") as http:
        return http.post(f"/rio/{path}", content=content, headers={"Content-Type": "text/xml; charset=utf-8",
                                                                      **headers})


def signed(pki: Pki, clock: FakeClock, request: object, *, service=BEHEREN, sign: bool = True,
           to: str | None = None, body: etree._Element | None = None) -> tuple[bytes, str]:
    op = operation(request.operation)  # type: ignore[attr-defined]
    body = body if body is not None else request.body(  # type: ignore[attr-defined]
        Bedrijfsdocument(str(uuid.uuid4()), ISSUER.oin or "", "00000001800866472000", clock.now()))
    envelope = build_envelope(body, service=service, action=op.soap_action, message_id=str(uuid.uuid4()),
                              to=to or f"https://duo.nl/RIO/services/{service.path}?oin=00000001800866472000",
                              sender_oin=ISSUER.oin or "")
    if not sign:
        return serialize(envelope), op.soap_action
    return Signer(Credentials.load(pki.client_cert, pki.client_key)).sign(envelope, now=clock.now()), op.soap_action


def fault_code(response: httpx.Response) -> str:
    assert response.status_code == 500
    return etree.fromstring(response.content, PARSER).findtext(".//faultcode")


def test_answers_have_duos_shape_and_validate_against_duos_xsd(sim, pki, clock) -> None:
    client = client_for(sim, pki, clock)
    p = plan(definition(), ISSUER)
    answers = []
    answers.append(call(client, OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel=p.unit.eigen_sleutel)))
    created = call(client, AanleverenOpleidingseenheid(p.unit))
    answers.append(created)
    code = created.opleidingseenheidcode
    assert re.fullmatch(r"\d{4}O\d{4}", code)
    answers.append(call(client, AanleverenAangebodenOpleiding(p.offering, code)))          # unit not visible yet
    clock.advance(6)
    answers.append(call(client, OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel=p.unit.eigen_sleutel)))
    answers.append(call(client, OpvragenOpleidingseenheid(code)))
    answers.append(call(client, AanleverenAangebodenOpleiding(p.offering, code)))
    answers.append(call(client, VerwijderenOpleidingseenheid(code)))                     # P01810: offering left
    answers.append(call(client, VerwijderenAangebodenOpleiding(p.offering.code)))
    answers.append(call(client, VerwijderenAangebodenOpleiding(p.offering.code)))       # A01020: already gone
    for answer in answers:
        assert duo_errors(answer.element) == [], answer.operation
    assert [a.goedgekeurd for a in answers] == [False, True, False, True, True, True, False, True, False]
    assert answers[0].foutmeldingen[0].code == "A01161"
    assert answers[0].foutmeldingen[0].sleutels[0][0] == "eigenOpleid...heidSleutel"   # elided as DUO does
    assert answers[2].foutmeldingen[0].code.startswith("SIM")
    assert answers[6].foutmeldingen[0].code == "P01810"
    assert answers[8].foutmeldingen[0].code == "A01020"
    snapshot = unit_snapshot(answers[4])
    assert snapshot is not None and snapshot.isced == 61 and snapshot.naam_lang == p.unit.naam_lang
    asyncio.run(client.aclose())


def test_own_key_belongs_to_one_unit(sim, pki, clock) -> None:
    client = client_for(sim, pki, clock)
    unit = plan(definition(), ISSUER).unit
    first = call(client, AanleverenOpleidingseenheid(unit))
    second = call(client, AanleverenOpleidingseenheid(unit))           # still in the queue: key in use anyway
    assert first.goedgekeurd and not second.goedgekeurd
    assert second.foutmeldingen[0].code == "P01081"
    assert sim.unit_codes(unit.eigen_sleutel) == [first.opleidingseenheidcode]
    update = call(client, AanleverenOpleidingseenheid(unit, first.opleidingseenheidcode))
    assert update.goedgekeurd and update.opleidingseenheidcode == first.opleidingseenheidcode
    asyncio.run(client.aclose())


def test_writes_become_visible_after_the_delay(sim, pki, clock) -> None:
    client = client_for(sim, pki, clock)
    p = plan(definition(), ISSUER)
    code = call(client, AanleverenOpleidingseenheid(p.unit)).opleidingseenheidcode
    lookup = OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel=p.unit.eigen_sleutel)
    clock.advance(4.9)
    assert call(client, lookup).has_code("A01161")
    clock.advance(0.2)
    assert call(client, lookup).opleidingseenheidcode == code
    renamed = plan(definition(title={"nl": "Nieuwe naam"}), ISSUER).unit
    assert call(client, AanleverenOpleidingseenheid(renamed, code)).goedgekeurd
    assert unit_snapshot(call(client, OpvragenOpleidingseenheid(code))).naam_lang == p.unit.naam_lang  # old
    clock.advance(5.1)
    assert unit_snapshot(call(client, OpvragenOpleidingseenheid(code))).naam_lang == "Nieuwe naam"
    asyncio.run(client.aclose())


def test_soap_action_must_equal_wsa_action(sim, pki, clock) -> None:
    content, action = signed(pki, clock, VerwijderenOpleidingseenheid("1011O5000"))
    wrong = action.replace("verwijderen_opleidingseenheid", "verwijderen_aangebodenOpleiding")
    assert fault_code(raw_post(sim, "beheren4.0", content, SOAPAction=wrong)) == "SOAP-ENV:Client.DK0005"
    ok = raw_post(sim, "beheren4.0", content, SOAPAction=f'"{action}"')   # quoted, as SOAP 1.1 allows
    assert ok.status_code == 200


def test_wsa_to_must_name_the_service_and_duo(sim, pki, clock) -> None:
    content, action = signed(pki, clock, VerwijderenOpleidingseenheid("1011O5000"),
                             to="https://duo.nl/RIO/services/raadplegen4.0?oin=00000001800866472000")
    assert fault_code(raw_post(sim, "beheren4.0", content, SOAPAction=action)) == "SOAP-ENV:Client.DK0005"


def test_unsigned_or_tampered_requests_are_refused(sim, pki, clock) -> None:
    content, action = signed(pki, clock, VerwijderenOpleidingseenheid("1011O5000"), sign=False)
    assert fault_code(raw_post(sim, "beheren4.0", content, SOAPAction=action)) == "SOAP-ENV:Client.EK0031"
    content, action = signed(pki, clock, VerwijderenOpleidingseenheid("1011O5000"))
    tampered = content.replace(b"1011O5000", b"1011O5001")
    assert fault_code(raw_post(sim, "beheren4.0", tampered, SOAPAction=action)) == "SOAP-ENV:Client.EK0031"
    clock.advance(3600)                                                    # expired timestamp
    assert fault_code(raw_post(sim, "beheren4.0", content, SOAPAction=action)) == "SOAP-ENV:Client.EK0031"


def test_body_must_match_the_schema(sim, pki, clock) -> None:
    request = VerwijderenOpleidingseenheid("1011O5000")
    body = request.body(Bedrijfsdocument(str(uuid.uuid4()), ISSUER.oin or "", "00000001800866472000", clock.now()))
    body[-1].text = "not-a-code"
    content, action = signed(pki, clock, request, body=body)
    answer = raw_post(sim, "beheren4.0", content, SOAPAction=action)
    assert fault_code(answer) == "SOAP-ENV:Client.DK0004"


def test_message_ids_are_single_use(sim, pki, clock) -> None:
    content, action = signed(pki, clock, VerwijderenOpleidingseenheid("1011O5000"))
    assert raw_post(sim, "beheren4.0", content, SOAPAction=action).status_code == 200
    assert fault_code(raw_post(sim, "beheren4.0", content, SOAPAction=action)) == "SOAP-ENV:Client.DK0005"


def test_http_level(sim) -> None:
    assert raw_post(sim, "unknown4.0", b"<x/>").status_code == 404
    assert raw_post(sim, "beheren4.0", b"{}", **{"Content-Type": "application/json"}).status_code == 415
    with httpx.Client(transport=mock_transport(sim, "/rio"), base_url="https://rio.test") as http:
        assert http.get("/rio/beheren4.0").status_code == 405
    assert fault_code(raw_post(sim, "beheren4.0", b"no xml")) == "SOAP-ENV:Client.DK0004"


@pytest.mark.parametrize("path", sorted(RECORDED.glob("*.request.xml")), ids=lambda p: p.name)
def test_recorded_requests_pass_the_signature_check(path: Path) -> None:
    """Real signed requests DUO accepted, replayed at their own time (their OIN, their certificate)."""
    document = etree.fromstring(path.read_bytes(), PARSER)
    created = datetime.fromisoformat(document.findtext(f".//{{{WSU}}}Created"))
    sim = RioSimulator(clock=lambda: created)
    action = document.findtext(".//{http://www.w3.org/2005/08/addressing}Action")
    service = RAADPLEGEN if "Raadplegen" in action else BEHEREN
    answer = raw_post(sim, service.path, path.read_bytes(), SOAPAction=action)
    if path.name.startswith("6-upsert-program"):
        # edited after it was signed: the signature check must catch it
        assert fault_code(answer) == "SOAP-ENV:Client.EK0031"
    elif "opvragen_rioIdentificatiecode" in path.name:
        response = parse_envelope(answer.content)          # signature, WS-Addressing and schema passed
        assert response.has_code("A01161")                 # this fresh RIO does not know the key
    else:
        # signature passed; these bodies carry program-shaped units mcsync never sends (hoOpleiding) or
        # codes this RIO never issued
        assert answer.status_code in (200, 500)
        if answer.status_code == 500:
            assert fault_code(answer) == "SOAP-ENV:Client.DK0004"
        else:
            assert parse_envelope(answer.content).goedgekeurd is False
