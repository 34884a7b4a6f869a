"""DUO's answers as DUO wrote them (recorded), SOAP faults and broken answers."""

from __future__ import annotations

import pytest

from mcsync.errors import PermanentError, RetriableError
from mcsync.targets.rio import errors as policy
from mcsync.targets.rio.errors import PERMANENT
from mcsync.targets.rio.responses import MalformedResponse, SoapFault, parse_envelope, unit_snapshot

from .rio_helpers import RECORDED

EXPECTED = {
    "1-upsert-eduspec__2-opvragen_rioIdentificatiecode": dict(
        operation="opvragen_rioIdentificatiecode", goedgekeurd=False, code=None, offering=None,
        fouten=[("A01161", "De externe identificatie komt niet voor in RIO",
                 (("eigenOpleid...heidSleutel", "fddec347-8c...a85d09c0004"),))],
        ident="82911ea3-9d21-41db-bf75-57ac048d7685", relates="4a4218fa-cf7b-4554-b1e1-8d5e9e230004"),
    "1-upsert-eduspec__3-aanleveren_opleidingseenheid": dict(
        operation="aanleveren_opleidingseenheid", goedgekeurd=True, code="1011O5055", offering=None, fouten=[],
        ident="8fa492e1-0d0c-4010-a5b7-87bfb362fdb8", relates="b435bd6c-5753-4332-8214-044922698ccb"),
    "1-upsert-eduspec__4-opvragen_rioIdentificatiecode": dict(
        operation="opvragen_rioIdentificatiecode", goedgekeurd=True, code="1011O5055", offering=None, fouten=[],
        ident="327d821e-9f0c-49a0-a32c-5aa7e320587f", relates="9931f922-eafd-4595-a31b-5d9227210d2e"),
    "20-resolve__2-opvragen_rioIdentificatiecode": dict(
        operation="opvragen_rioIdentificatiecode", goedgekeurd=False, code=None, offering=None,
        fouten=[("A09999", "De externe identificatie komt niet voor in RIO",
                 (("eigenOpleid...heidSleutel", "fddec347-8c...a85d09c0004"),))],
        ident="2dcd55be-91da-4d95-ab03-da90404d2b03", relates="2548d641-4756-41f0-81b2-d4809a6a2572"),
    "6-upsert-program__6-aanleveren_aangebodenOpleiding": dict(
        operation="aanleveren_aangebodenOpleiding", goedgekeurd=True, code=None, offering=None, fouten=[],
        ident="9a71ae83-404b-4ba5-8880-c5e006cf6e3e", relates="87dbbcdb-57b3-4e3f-9034-5493ebb1ed68"),
    "7-delete-program__2-verwijderen_aangebodenOpleiding": dict(
        operation="verwijderen_aangebodenOpleiding", goedgekeurd=True, code=None, offering=None, fouten=[],
        ident="5328807e-e5f5-4748-b145-4ab7aa25fac4", relates="474bfeab-bfe4-469f-bad9-bb56cf6732a3"),
    "8-delete-eduspec__3-verwijderen_opleidingseenheid": dict(
        operation="verwijderen_opleidingseenheid", goedgekeurd=True, code=None, offering=None, fouten=[],
        ident="0ff93a17-573c-49e7-95dd-210128271932", relates="6979587c-03fa-4ad9-ba27-5e41e6111558"),
}


def test_every_recorded_response_is_covered() -> None:
    assert {p.name.removesuffix(".response.xml") for p in RECORDED.glob("*.response.xml")} == set(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_recorded_responses_parse(stem: str) -> None:
    expected = EXPECTED[stem]
    response = parse_envelope((RECORDED / f"{stem}.response.xml").read_bytes())
    assert response.operation == expected["operation"]
    assert response.goedgekeurd is expected["goedgekeurd"]
    assert response.opleidingseenheidcode == expected["code"]
    assert response.aangeboden_opleiding_code == expected["offering"]
    assert [(f.code, f.tekst, f.sleutels) for f in response.foutmeldingen] == expected["fouten"]
    assert response.identificatiecode == expected["ident"]
    # wsa:RelatesTo names the MessageID of the request it answers
    assert response.relates_to == expected["relates"]
    request = (RECORDED / f"{stem}.request.xml").read_text()
    assert f">{expected['relates']}</wsa:MessageID>" in request


def test_recorded_rejections_map_to_policy() -> None:
    not_found = parse_envelope((RECORDED / "1-upsert-eduspec__2-opvragen_rioIdentificatiecode.response.xml")
                               .read_bytes())
    assert not_found.has_code(policy.NOT_FOUND)
    general = parse_envelope((RECORDED / "20-resolve__2-opvragen_rioIdentificatiecode.response.xml").read_bytes())
    error = policy.lookup_failure(general, what="the unit")
    assert isinstance(error, RetriableError) and error.code == "A09999"
    assert "De externe identificatie komt niet voor in RIO" in error.message


def _response(inner: str, *, op: str = "aanleveren_opleidingseenheid") -> bytes:
    return (f'<?xml version="1.0"?><S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>'
            f'<x:{op}_response xmlns:x="http://duo.nl/schema/DUO_RIO_Beheren_OnderwijsOrganisatie_V4">'
            f"<x:identificatiecodeBedrijfsdocument>a</x:identificatiecodeBedrijfsdocument>"
            f"<x:verzendendeInstantie>00000001800866472000</x:verzendendeInstantie>"
            f"<x:ontvangendeInstantie>0000000700030GB00000</x:ontvangendeInstantie>"
            f"<x:datumTijdBedrijfsdocument>2025-01-01T00:00:00Z</x:datumTijdBedrijfsdocument>"
            f"{inner}</x:{op}_response></S:Body></S:Envelope>").encode()


@pytest.mark.parametrize("code", sorted(PERMANENT))
def test_permanent_codes(code: str) -> None:
    response = parse_envelope(_response(
        f"<x:requestGoedgekeurd>false</x:requestGoedgekeurd><x:foutmelding><x:foutcode>{code}</x:foutcode>"
        "<x:fouttekst>tekst</x:fouttekst><x:sleutelgegeven><x:sleutelnaam>a</x:sleutelnaam>"
        "<x:sleutelwaarde>b</x:sleutelwaarde></x:sleutelgegeven></x:foutmelding>"))
    error = policy.rejection(response, what="the unit of MC-1")
    assert isinstance(error, PermanentError) and error.code == code
    assert error.message == f"RIO rejected the unit of MC-1: {code} tekst"


def test_rejection_without_foutmelding_is_temporary() -> None:
    response = parse_envelope(_response("<x:requestGoedgekeurd>0</x:requestGoedgekeurd>"))
    assert response.goedgekeurd is False
    error = policy.rejection(response, what="the unit")
    assert isinstance(error, RetriableError) and error.code is None
    assert "without a foutmelding" in error.message


def test_soap_fault() -> None:
    fault = (b'<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body>'
             b"<SOAP-ENV:Fault><faultcode>SOAP-ENV:Client.DK0004</faultcode>"
             b"<faultstring>Bericht is niet XSD-conform</faultstring></SOAP-ENV:Fault></SOAP-ENV:Body>"
             b"</SOAP-ENV:Envelope>")
    with pytest.raises(SoapFault) as caught:
        parse_envelope(fault, http_status=500)
    assert caught.value.code == "DK0004"
    error = policy.fault(caught.value, what="aanleveren_opleidingseenheid")
    assert isinstance(error, RetriableError) and error.code == "DK0004"


@pytest.mark.parametrize("content", [
    b"not xml",
    b"<html><body>502 Bad Gateway</body></html>",
    b'<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body/></S:Envelope>',
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><S:Envelope '
    b'xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body><a>&e;</a></S:Body></S:Envelope>',
])
def test_broken_answers(content: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_envelope(content)


def test_not_a_boolean() -> None:
    with pytest.raises(MalformedResponse, match="xsd:boolean"):
        parse_envelope(_response("<x:requestGoedgekeurd>ja</x:requestGoedgekeurd>"))


def test_unit_snapshot_of_a_raadplegen_unit() -> None:
    """The shape of a real opvragen_opleidingseenheid answer (SURF mapper fixture opleenh-link/3-linker)."""
    content = (
        b'<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>'
        b'<ns2:opvragen_opleidingseenheid_response xmlns:ns2="http://duo.nl/schema/'
        b'DUO_RIO_Raadplegen_OnderwijsOrganisatie_V4"><ns2:identificatiecodeBedrijfsdocument>53ad3360'
        b"</ns2:identificatiecodeBedrijfsdocument><ns2:verzendendeInstantie>00000001800866472000"
        b"</ns2:verzendendeInstantie><ns2:ontvangendeInstantie>0000000700025BE00000</ns2:ontvangendeInstantie>"
        b"<ns2:datumTijdBedrijfsdocument>2023-04-24T11:53:10.859Z</ns2:datumTijdBedrijfsdocument>"
        b"<ns2:requestGoedgekeurd>true</ns2:requestGoedgekeurd><ns2:hoOnderwijseenheid>"
        b"<ns2:opleidingseenheidcode>1011O3504</ns2:opleidingseenheidcode>"
        b"<ns2:herkomstOpleiding>INSTELLING</ns2:herkomstOpleiding><ns2:begindatum>2016-12-15</ns2:begindatum>"
        b"<ns2:einddatum>2025-04-25</ns2:einddatum><ns2:hoOnderwijseenheidPeriode>"
        b"<ns2:begindatum>2016-12-15</ns2:begindatum><ns2:naamLang>Orthopedische Technologie</ns2:naamLang>"
        b"<ns2:naamKort>OT</ns2:naamKort><ns2:kenmerken><ns2:kenmerknaam>eigenaar</ns2:kenmerknaam>"
        b"<ns2:kenmerkwaardeTekst>100B490</ns2:kenmerkwaardeTekst></ns2:kenmerken>"
        b"<ns2:waardedocumentsoort>DIPLOMA</ns2:waardedocumentsoort><ns2:studielast>128</ns2:studielast>"
        b"<ns2:studielasteenheid>ECTS_PUNT</ns2:studielasteenheid></ns2:hoOnderwijseenheidPeriode>"
        b"<ns2:kenmerken><ns2:kenmerknaam>eigenOpleidingseenheidSleutel</ns2:kenmerknaam>"
        b"<ns2:kenmerkwaardeTekst>b1091a8c-5352-f55f-a548-41c9dfd60001</ns2:kenmerkwaardeTekst></ns2:kenmerken>"
        b"<ns2:ISCED>61</ns2:ISCED></ns2:hoOnderwijseenheid></ns2:opvragen_opleidingseenheid_response>"
        b"</S:Body></S:Envelope>")
    snapshot = unit_snapshot(parse_envelope(content))
    assert snapshot is not None
    assert (snapshot.kind, snapshot.code, snapshot.eigen_sleutel) == (
        "hoOnderwijseenheid", "1011O3504", "b1091a8c-5352-f55f-a548-41c9dfd60001")
    assert (snapshot.naam_lang, snapshot.studielast, snapshot.studielasteenheid, snapshot.isced) == (
        "Orthopedische Technologie", 128, "ECTS_PUNT", 61)
    assert snapshot.waardedocumentsoort == "DIPLOMA"
