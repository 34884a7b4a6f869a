"""Request bodies against DUO's own XSDs, the content rules, and mcsync's own contract files."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import zeep
from lxml import etree

from mcsync.targets.rio.contract import BEHEREN, RAADPLEGEN, SCHEMA_DIR, operation, operations, schema_errors
from mcsync.targets.rio.messages import (
    AanleverenAangebodenOpleiding,
    AanleverenOpleidingseenheid,
    Bedrijfsdocument,
    OpvragenOpleidingseenheid,
    OpvragenRioIdentificatiecode,
    PlanProblem,
    VerwijderenAangebodenOpleiding,
    VerwijderenOpleidingseenheid,
    plan,
)

from .rio_helpers import ISSUER, REFERENCE, definition, duo_errors

DOC = Bedrijfsdocument("8fa492e1-0d0c-4010-a5b7-87bfb362fdb8", ISSUER.oin or "", "00000001800866472000",
                       datetime(2025, 9, 1, 10, 0, 0, 123000, tzinfo=UTC))
D = "{http://duo.nl/schema/DUO_RIO_Beheren_OnderwijsOrganisatie_V4}"


def _requests() -> list[tuple[str, object]]:
    full = definition(
        description={"nl": "Een omschrijving\nover twee regels."}, end_date=date(2027, 7, 31),
        rio={"kind": "hoOnderwijseenheid", "onderwijslocatiecode": "107X215"})
    bare = definition("MC-BARE", title={"nl": "Kort"}, description=None, further_info_url=None, isced=None)
    private = definition("MC-PRIV", rio={"kind": "particuliereOpleiding", "niveau": "ONBEPAALD"}, language="en",
                         title={"en": "Private data analysis"})
    found = []
    for name, mc in (("ho", full), ("ho-bare", bare), ("private", private)):
        p = plan(mc, ISSUER)
        found += [(f"unit {name} create", AanleverenOpleidingseenheid(p.unit)),
                  (f"unit {name} update", AanleverenOpleidingseenheid(p.unit, "1011O5055")),
                  (f"offering {name}", AanleverenAangebodenOpleiding(p.offering, "1011O5055"))]
    return [
        *found,
        ("delete offering", VerwijderenAangebodenOpleiding("49ca7998-74b1-f44a-1ec1-000000000002")),
        ("delete unit", VerwijderenOpleidingseenheid("1011O5055")),
        ("lookup unit key", OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel="fddec347-8ca1")),
        ("lookup offering key", OpvragenRioIdentificatiecode(eigen_aangeboden_opleiding_sleutel="49ca7998")),
        ("read unit", OpvragenOpleidingseenheid("1011O5055")),
    ]


@pytest.mark.parametrize(("label", "request_"), _requests(), ids=[label for label, _ in _requests()])
def test_every_request_kind_is_valid_against_duos_xsd_and_ours(label: str, request_: object) -> None:
    body = request_.body(DOC)  # type: ignore[attr-defined]
    assert duo_errors(body) == [], label
    service = BEHEREN if etree.QName(body).namespace == BEHEREN.schema_ns else RAADPLEGEN
    assert schema_errors(body, service) == [], label
    assert operation(request_.operation).request == body.tag  # type: ignore[attr-defined]


def test_unit_body_has_duos_element_order_and_the_values_of_the_definition() -> None:
    p = plan(definition(description={"nl": "Voor professionals."}), ISSUER)
    body = AanleverenOpleidingseenheid(p.unit).body(DOC)
    assert [etree.QName(c).localname for c in body] == [
        "identificatiecodeBedrijfsdocument", "verzendendeInstantie", "ontvangendeInstantie",
        "datumTijdBedrijfsdocument", "hoOnderwijseenheid"]
    assert body.findtext(f"{D}datumTijdBedrijfsdocument") == "2025-09-01T10:00:00.123Z"
    unit = body[4]
    assert [etree.QName(c).localname for c in unit] == ["begindatum", "kenmerken", "hoOnderwijseenheidPeriode",
                                                        "ISCED"]
    assert unit.findtext(f"{D}kenmerken/{D}kenmerknaam") == "eigenOpleidingseenheidSleutel"
    assert unit.findtext(f"{D}kenmerken/{D}kenmerkwaardeTekst") == definition().rio_eigen_sleutel("30GB")
    period = unit.find(f"{D}hoOnderwijseenheidPeriode")
    assert [(etree.QName(c).localname, c.text) for c in period] == [
        ("begindatum", "2025-02-03"), ("naamLang", "Data-analyse met Python"),
        ("internationaleNaam", "Data analysis with Python"), ("omschrijving", "Voor professionals."),
        ("waardedocumentsoort", "CERTIFICAAT"), ("studielast", "5"), ("studielasteenheid", "ECTS_PUNT")]
    assert unit.findtext(f"{D}ISCED") == "061"   # ISCED-F 0613 → its narrow field


def test_offering_body() -> None:
    p = plan(definition(rio={"kind": "hoOnderwijseenheid", "onderwijslocatiecode": "107X215"}), ISSUER)
    offering = AanleverenAangebodenOpleiding(p.offering, "1011O5055").body(DOC)[4]
    assert etree.QName(offering).localname == "aangebodenHOOpleidingsonderdeel"
    names = [etree.QName(c).localname for c in offering]
    assert names == ["aangebodenOpleidingCode", "onderwijsaanbiedercode", "onderwijslocatiecode", "begindatum",
                     "opleidingseenheidSleutel", "aangebodenHOOpleidingsonderdeelPeriode", "kenmerken", "kenmerken"]
    assert offering.findtext(f"{D}aangebodenOpleidingCode") == definition().rio_offering_code("30GB")
    kenmerken = {k.findtext(f"{D}kenmerknaam"): (k[1].text, etree.QName(k[1]).localname)
                 for k in offering.findall(f"{D}kenmerken")}
    assert kenmerken == {"eigenAangebodenOpleidingSleutel": (definition().rio_offering_code("30GB"),
                                                             "kenmerkwaardeTekst"),
                         "voertaal": ("NLD", "kenmerkwaardeEnumeratiewaarde")}


def test_whole_ects_go_as_ects_punt() -> None:
    unit = plan(definition(ects=Decimal("15.0")), ISSUER).unit
    assert (unit.studielast, unit.studielasteenheid) == (15, "ECTS_PUNT")


def test_fractional_ects_never_rounded() -> None:
    with pytest.raises(PlanProblem, match=r"7\.5 ECTS cannot be sent as ECTS_PUNT without rounding"):
        plan(definition(ects=Decimal("7.5")), ISSUER)
    unit = plan(definition(ects=Decimal("7.5"), study_load_hours=210), ISSUER).unit
    assert (unit.studielast, unit.studielasteenheid) == (210, "SBU")


@pytest.mark.parametrize(("changes", "message"), [
    ({"title": {"nl": "x" * 226}}, "226 characters; RIO takes at most 225"),
    ({"title": {"nl": "Titel", "en": "y" * 300}}, "title.en (internationaleNaam) has 300 characters"),
    ({"description": {"nl": "z" * 3001}}, "3001 characters; RIO takes at most 3000"),
    ({"further_info_url": "https://example.org/" + "a" * 320}, "further_info_url (website)"),
    ({"start_date": None}, "start_date is required"),
    ({"isced": "06"}, "broad field"),
    ({"language": "xx"}, "voertaal"),
    ({"title": {"nl": "Titel met \x07 bel"}}, "control characters"),
])
def test_what_does_not_fit_is_reported_before_sending(changes: dict, message: str) -> None:
    with pytest.raises(PlanProblem, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        plan(definition(**changes), ISSUER)
    assert caught.value.code == "MC-DATA01"


def test_names_are_never_cut_and_white_space_is_normalised_as_rio_stores_it() -> None:
    exactly = "a" * 225
    assert plan(definition(title={"nl": exactly}), ISSUER).unit.naam_lang == exactly
    assert plan(definition(title={"nl": "  Data   analyse\n met Python "}), ISSUER).unit.naam_lang == \
        "Data analyse met Python"


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(PlanProblem) as caught:
        plan(definition(ects=Decimal("3.3"), start_date=None, title={"nl": "t" * 300}), ISSUER)
    assert len(caught.value.problems) == 3


def test_our_wsdl_matches_duos_operations_and_soap_actions() -> None:
    ours = operations()
    assert set(ours) == {"aanleveren_opleidingseenheid", "aanleveren_aangebodenOpleiding",
                         "verwijderen_opleidingseenheid", "verwijderen_aangebodenOpleiding",
                         "opvragen_rioIdentificatiecode", "opvragen_opleidingseenheid"}
    duo: dict[str, tuple[str, str]] = {}
    for name in ("Beheren", "Raadplegen"):
        client = zeep.Client(str(REFERENCE / f"DUO_RIO_{name}_OnderwijsOrganisatie_V4.wsdl"))
        for service in client.wsdl.services.values():
            for port in service.ports.values():
                for op_name, op in port.binding.all().items():
                    duo[op_name] = (op.soapaction, op.input.body.qname.text)
    for name, op in ours.items():
        if name == "opvragen_opleidingseenheid":
            # in DUO's 2025 XSD but not its 2022 WSDL: same contract namespace convention
            assert op.soap_action == f"{RAADPLEGEN.contract_ns}/{name}"
            continue
        assert duo[name] == (op.soap_action, op.request), name


def test_our_schema_files_declare_duos_namespaces() -> None:
    for service in (BEHEREN, RAADPLEGEN):
        root = etree.parse(str(SCHEMA_DIR / f"{service.name.lower()}.xsd")).getroot()
        assert root.get("targetNamespace") == service.schema_ns
        wsdl = etree.parse(str(SCHEMA_DIR / f"{service.name.lower()}.wsdl")).getroot()
        assert wsdl.get("targetNamespace") == service.contract_ns


def test_invalid_body_is_caught_by_our_schema() -> None:
    body = VerwijderenOpleidingseenheid("1011X5055").body(DOC)   # not \d{4}O\d{4}
    assert schema_errors(body, BEHEREN)
    assert duo_errors(body)
