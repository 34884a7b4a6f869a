"""The register's XML messages (duo-register.xsd): building a `<levering>`, reading the answers.

Bodies are built with lxml in the register's namespace, in the schema's element order, as UTF-8
with an XML declaration; the same entries always give the same bytes. Everything the register
answers (`<leveringOntvangen>`, `<verwerkingsverslag>`, `<geregistreerdResultaat>`, `<fout>`) is
parsed with entities, DTDs and network access off, refused if it carries a DOCTYPE, and validated
against the schema mcsync ships (`schema/duo-register.xsd`, its own, equivalent to the contract's), so an answer
that is not what the contract says raises `MessageError` instead of being half understood.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources

from lxml import etree

from .payload import Entry, Intrekking, Resultaat

NS = "urn:mcsync:duo-register:v1"
CONTENT_TYPE = "application/xml; charset=utf-8"
SCHEMA_RESOURCE = "schema/duo-register.xsd"


def q(name: str) -> str:
    """The qualified (Clark) name of a register element."""
    return f"{{{NS}}}{name}"


class MessageError(ValueError):
    """An answer from the register that is not well-formed or not what the schema says."""


def safe_parser() -> etree.XMLParser:
    """A parser for XML from outside: no entities, no DTD, no network, no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_xml(data: bytes) -> etree._Element:
    """The root element of `data`; MessageError if it is not well-formed or carries a DOCTYPE."""
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise MessageError(f"not well-formed XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise MessageError("the document carries a DOCTYPE, which the register's messages never do")
    return root


@functools.cache
def schema() -> etree.XMLSchema:
    """The register's schema, as shipped with mcsync (a verbatim copy of the contract)."""
    data = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_bytes()
    return etree.XMLSchema(etree.fromstring(data, safe_parser()))


def schema_errors(root: etree._Element) -> list[str]:
    """The schema violations of a document, as `line N: message`; empty when it is valid."""
    validator = schema()
    if validator.validate(root):
        return []
    return [f"line {e.line}: {e.message}" for e in validator.error_log]


# building ------------------------------------------------------------------------------------------

def _sub(parent: etree._Element, name: str, text: str | None) -> None:
    if text is not None:
        etree.SubElement(parent, q(name)).text = text


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f")


def element(entry: Entry) -> etree._Element:
    """The `<resultaat>` or `<intrekking>` element of one entry."""
    if isinstance(entry, Intrekking):
        return etree.Element(q("intrekking"), recordId=entry.record_id, reden=entry.reden, nsmap={None: NS})
    return _resultaat(entry)


def _resultaat(entry: Resultaat) -> etree._Element:
    root = etree.Element(q("resultaat"), recordId=entry.record_id, nsmap={None: NS})
    person = etree.SubElement(root, q("deelnemer"))
    d = entry.deelnemer
    if d.soort == "eigenDeelnemerSleutel":
        _sub(person, "eigenDeelnemerSleutel", d.nummer)
        _sub(person, "geboortedatum", d.geboortedatum.isoformat() if d.geboortedatum else None)
    else:
        _sub(person, d.soort, d.nummer)
    _sub(person, "voornamen", d.voornamen)
    _sub(person, "voorvoegsel", d.voorvoegsel)
    _sub(person, "achternaam", d.achternaam)
    if entry.eenheid.code is not None:
        _sub(root, "opleidingseenheidcode", entry.eenheid.code)
    else:
        _sub(root, "eigenOpleidingseenheidSleutel", entry.eenheid.eigen_sleutel)
    _sub(root, "onderwijsaanbiedercode", entry.onderwijsaanbiedercode)
    _sub(root, "datumBehaald", entry.datum_behaald.isoformat())
    _sub(root, "studielast", _decimal(entry.studielast))
    _sub(root, "resultaat", entry.resultaat)
    _sub(root, "eqf", str(entry.eqf) if entry.eqf is not None else None)
    _sub(root, "nlqf", entry.nlqf)
    return root


def element_size(el: etree._Element) -> int:
    """Bytes the element takes in a body (an upper bound: alone it repeats the namespace)."""
    return len(etree.tostring(el, encoding="UTF-8"))


def envelope_size(levering_id: str, oin: str) -> int:
    """Bytes of a delivery body without its records."""
    return len(levering(levering_id, oin, datetime(2000, 1, 1, tzinfo=UTC), [], allow_empty=True))


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def levering(levering_id: str, oin: str, at: datetime, elements: Sequence[etree._Element], *,
             allow_empty: bool = False) -> bytes:
    """The exact bytes of a `<levering>` holding `elements` in order (copies; the inputs stay as they are)."""
    if not elements and not allow_empty:
        raise ValueError("a levering holds at least one record")
    root = etree.Element(q("levering"), leveringId=levering_id, oin=oin, datumTijdLevering=timestamp(at),
                         nsmap={None: NS})
    for el in elements:
        root.append(copy.deepcopy(el))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# reading --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeveringOntvangen:
    levering_id: str
    aantal: int


@dataclass(frozen=True)
class Signaal:
    code: str
    tekst: str


@dataclass(frozen=True)
class Regel:
    volgnummer: int
    record_id: str
    status: str                       # geaccepteerd | afgekeurd
    signalen: tuple[Signaal, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(s.code for s in self.signalen)


@dataclass(frozen=True)
class Verwerkingsverslag:
    levering_id: str
    status: str                       # in_behandeling | verwerkt
    regels: tuple[Regel, ...]

    @property
    def verwerkt(self) -> bool:
        return self.status == "verwerkt"


@dataclass(frozen=True)
class GeregistreerdResultaat:
    record_id: str
    levering_id: str
    status: str                       # geregistreerd | ingetrokken
    inhoud: dict[str, str]


@dataclass(frozen=True)
class Fout:
    code: str
    tekst: str


def _valid(data: bytes, name: str) -> etree._Element:
    root = parse_xml(data)
    if root.tag != q(name):
        raise MessageError(f"expected <{name}>, got <{etree.QName(root).localname}>")
    errors = schema_errors(root)
    if errors:
        raise MessageError(f"<{name}> does not match the register's schema: {errors[0]}")
    return root


def parse_ontvangen(data: bytes) -> LeveringOntvangen:
    root = _valid(data, "leveringOntvangen")
    return LeveringOntvangen(root.get("leveringId"), int(root.get("aantal")))


def parse_verslag(data: bytes) -> Verwerkingsverslag:
    root = _valid(data, "verwerkingsverslag")
    regels = tuple(
        Regel(int(r.get("volgnummer")), r.get("recordId"), r.get("status"),
              tuple(Signaal(s.get("code"), s.get("tekst")) for s in r.iterfind(q("signaal"))))
        for r in root.iterfind(q("regel")))
    return Verwerkingsverslag(root.get("leveringId"), root.get("status"), regels)


def parse_geregistreerd(data: bytes) -> GeregistreerdResultaat:
    root = _valid(data, "geregistreerdResultaat")
    found = root.find(q("resultaat"))
    assert found is not None  # the schema requires it
    return GeregistreerdResultaat(root.get("recordId"), root.get("leveringId"), root.get("status"), inhoud(found))


def parse_fout(data: bytes) -> Fout | None:
    """The register's `<fout>`, or None when the body is not one (empty, HTML from a proxy, ...)."""
    try:
        root = _valid(data, "fout")
    except MessageError:
        return None
    return Fout(root.get("code"), (root.text or "").strip())


def inhoud(resultaat_el: etree._Element) -> dict[str, str]:
    """The content of a `<resultaat>` as {path: text}, for comparing what is registered with what
    would be sent (independent of prefixes, white space and decimal notation)."""
    content: dict[str, str] = {"@recordId": resultaat_el.get("recordId") or ""}
    for el in resultaat_el.iter():
        if el is resultaat_el or not isinstance(el.tag, str) or len(el):
            continue
        path = _path(el, resultaat_el)
        text = (el.text or "").strip()
        if path == "studielast":
            try:
                text = _decimal(Decimal(text))
            except InvalidOperation:
                pass
        content[path] = text
    return content


def _path(el: etree._Element, top: etree._Element) -> str:
    parts = []
    node: etree._Element | None = el
    while node is not None and node is not top:
        parts.append(etree.QName(node).localname)
        node = node.getparent()
    return "/".join(reversed(parts))
