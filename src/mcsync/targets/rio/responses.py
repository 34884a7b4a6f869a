"""Reading DUO's answers: the response element, its `foutmelding`s, and SOAP faults.

DUO's responses look like this (recorded exchanges):

    <SOAP-ENV:Envelope><SOAP:Header> wsa:To, wsa:Action, wsa:MessageID, wsa:RelatesTo (our
      MessageID), wsa:From, wsse:Security (DUO's signature) </SOAP:Header>
      <SOAP-ENV:Body><ns2:<operation>_response>
        identificatiecodeBedrijfsdocument (ours, echoed), verzendendeInstantie (DUO),
        ontvangendeInstantie (us), datumTijdBedrijfsdocument,
        requestGoedgekeurd (xsd:boolean), then opleidingseenheidcode | aangebodenOpleidingCode |
        the unit (opvragen_opleidingseenheid) | foutmelding* {foutcode, fouttekst, sleutelgegeven+}

Transport-level trouble comes as a SOAP 1.1 Fault (HTTP 500) with faultcode like
`SOAP-ENV:Client.DK0004` or `Server.DK0051` (PvE §6.5), not as a foutmelding.

Parsing is by namespace and local name, whatever prefixes DUO uses, with entities, DTDs and the
network off. Like the SURF mapper, mcsync does not verify DUO's response signature (mutual TLS
authenticates the server); it does check that wsa:RelatesTo, when present, names our message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from lxml import etree

from .contract import SOAP_ENV, WSA, safe_parser
from .messages import UnitContent

_CODE_IN_FAULT = re.compile(r"\b([A-Z]{2}\d{4})\b")


class MalformedResponse(Exception):
    """The answer is not a SOAP envelope with one RIO response element in it."""


@dataclass(frozen=True)
class Foutmelding:
    code: str
    tekst: str
    sleutels: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return f"{self.code} {self.tekst}".strip()


class SoapFault(Exception):
    """A SOAP Fault from DUO's service layer (authorisation, schema, WS-Addressing, signature, outage)."""

    def __init__(self, faultcode: str, faultstring: str, http_status: int) -> None:
        super().__init__(faultcode, faultstring)
        self.faultcode = faultcode
        self.faultstring = faultstring
        self.http_status = http_status

    @property
    def code(self) -> str | None:
        """DUO's DK/EK code, e.g. "DK0004", when the fault carries one."""
        found = _CODE_IN_FAULT.search(self.faultcode) or _CODE_IN_FAULT.search(self.faultstring)
        return found.group(1) if found else None

    def __str__(self) -> str:
        return f"SOAP fault {self.faultcode}: {self.faultstring}"


@dataclass(frozen=True)
class RioResponse:
    operation: str                      # e.g. "aanleveren_opleidingseenheid"
    goedgekeurd: bool
    foutmeldingen: tuple[Foutmelding, ...]
    identificatiecode: str | None
    opleidingseenheidcode: str | None
    aangeboden_opleiding_code: str | None
    relates_to: str | None
    element: etree._Element            # the <operation>_response element itself

    def has_code(self, code: str) -> bool:
        return any(f.code == code for f in self.foutmeldingen)

    def describe_rejection(self) -> str:
        if not self.foutmeldingen:
            return "requestGoedgekeurd=false without a foutmelding"
        return "; ".join(str(f) for f in self.foutmeldingen)


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _child_text(parent: etree._Element, name: str) -> str | None:
    namespace = etree.QName(parent).namespace
    child = parent.find(f"{{{namespace}}}{name}")
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _boolean(text: str | None) -> bool:
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise MalformedResponse(f"requestGoedgekeurd is {text!r}, not an xsd:boolean")


def parse_envelope(content: bytes, *, http_status: int = 200) -> RioResponse:
    """The RIO response in a SOAP envelope; raises SoapFault or MalformedResponse."""
    try:
        envelope = etree.fromstring(content, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedResponse(f"the answer is not XML: {exc}") from None
    if envelope.tag != f"{{{SOAP_ENV}}}Envelope":
        raise MalformedResponse(f"the answer is not a SOAP 1.1 envelope but {envelope.tag!r}")
    body = envelope.find(f"{{{SOAP_ENV}}}Body")
    if body is None:
        raise MalformedResponse("the SOAP envelope has no Body")
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise MalformedResponse(f"the SOAP Body holds {len(children)} elements, not one")
    element = children[0]
    if element.tag == f"{{{SOAP_ENV}}}Fault":
        raise SoapFault(
            faultcode=(element.findtext("faultcode") or "").strip(),
            faultstring=(element.findtext("faultstring") or "").strip(),
            http_status=http_status)
    name = _local(element)
    if not name.endswith("_response"):
        raise MalformedResponse(f"the SOAP Body holds {name!r}, not a RIO response")
    relates_to = None
    header = envelope.find(f"{{{SOAP_ENV}}}Header")
    if header is not None:
        found = header.find(f"{{{WSA}}}RelatesTo")
        relates_to = found.text.strip() if found is not None and found.text else None
    return parse_response_element(element, relates_to=relates_to)


def parse_response_element(element: etree._Element, *, relates_to: str | None = None) -> RioResponse:
    namespace = etree.QName(element).namespace
    fouten = []
    for melding in element.iterfind(f"{{{namespace}}}foutmelding"):
        sleutels = tuple(
            (_child_text(s, "sleutelnaam") or "", _child_text(s, "sleutelwaarde") or "")
            for s in melding.iterfind(f"{{{namespace}}}sleutelgegeven"))
        fouten.append(Foutmelding(_child_text(melding, "foutcode") or "", _child_text(melding, "fouttekst") or "",
                                  sleutels))
    return RioResponse(
        operation=_local(element).removesuffix("_response"),
        goedgekeurd=_boolean(_child_text(element, "requestGoedgekeurd")),
        foutmeldingen=tuple(fouten),
        identificatiecode=_child_text(element, "identificatiecodeBedrijfsdocument"),
        opleidingseenheidcode=_child_text(element, "opleidingseenheidcode"),
        aangeboden_opleiding_code=_child_text(element, "aangebodenOpleidingCode"),
        relates_to=relates_to,
        element=element)


@dataclass(frozen=True)
class UnitSnapshot:
    """The fields mcsync sends, as `opvragen_opleidingseenheid` returns them (Raadplegen shape)."""

    kind: str
    code: str | None
    eigen_sleutel: str | None
    begindatum: date | None
    einddatum: date | None
    naam_lang: str | None
    internationale_naam: str | None
    omschrijving: str | None
    waardedocumentsoort: str | None
    studielast: int | None
    studielasteenheid: str | None
    isced: int | None
    niveau: str | None


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


_DOCUMENT_FIELDS = frozenset({"identificatiecodeBedrijfsdocument", "verzendendeInstantie", "ontvangendeInstantie",
                              "datumTijdBedrijfsdocument", "requestGoedgekeurd", "foutmelding"})


def unit_snapshot(response: RioResponse) -> UnitSnapshot | None:
    """The unit in an `opvragen_opleidingseenheid` response, or None.

    mcsync sends one period per unit; when RIO holds several, the period fields stay None, so the
    unit never counts as holding mcsync's content and is sent again in full.
    """
    element = response.element
    namespace = etree.QName(element).namespace
    unit = next((c for c in element if isinstance(c.tag, str) and etree.QName(c).namespace == namespace
                 and _local(c) not in _DOCUMENT_FIELDS), None)
    if unit is None:
        return None
    kind = _local(unit)
    periods = unit.findall(f"{{{namespace}}}{kind}Periode")
    period = periods[0] if len(periods) == 1 else None
    own_key = None
    for kenmerk in unit.iterfind(f"{{{namespace}}}kenmerken"):
        if _child_text(kenmerk, "kenmerknaam") == "eigenOpleidingseenheidSleutel":
            own_key = _child_text(kenmerk, "kenmerkwaardeTekst")

    def field(name: str) -> str | None:
        return _child_text(period, name) if period is not None else None

    return UnitSnapshot(
        kind=kind, code=_child_text(unit, "opleidingseenheidcode"), eigen_sleutel=own_key,
        begindatum=_date(_child_text(unit, "begindatum")), einddatum=_date(_child_text(unit, "einddatum")),
        naam_lang=field("naamLang"), internationale_naam=field("internationaleNaam"),
        omschrijving=field("omschrijving"),
        waardedocumentsoort=field("waardedocumentsoort") if kind == "hoOnderwijseenheid"
        else _child_text(unit, "waardedocumentsoort"),
        studielast=_int(field("studielast")), studielasteenheid=field("studielasteenheid"),
        isced=_int(_child_text(unit, "ISCED")), niveau=_child_text(unit, "niveau"))


def holds(snapshot: UnitSnapshot, unit: UnitContent) -> bool:
    """Whether RIO's copy of the unit carries every value mcsync would send now.

    Compared the way RIO stores them: names as tokens, ISCED as a number (RIO answers "61" for the
    "061" it was sent). Kenmerken RIO adds itself (e.g. `eigenaar`) are ignored.
    """
    return (
        snapshot.kind == unit.kind
        and snapshot.eigen_sleutel == unit.eigen_sleutel
        and snapshot.begindatum == unit.begindatum
        and snapshot.einddatum == unit.einddatum
        and snapshot.naam_lang == unit.naam_lang
        and snapshot.internationale_naam == unit.internationale_naam
        and (snapshot.omschrijving or None) == (unit.omschrijving or None)
        and snapshot.waardedocumentsoort == unit.waardedocumentsoort
        and snapshot.studielast == unit.studielast
        and snapshot.studielasteenheid == unit.studielasteenheid
        and snapshot.isced == (int(unit.isced) if unit.isced is not None else None)
        and snapshot.niveau == unit.niveau)
