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
import threading
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

def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f")


def element(entry: Entry) -> etree._Element:
    """The `<resultaat>` or `<intrekking>` element of one entry."""
    if isinstance(entry, Intrekking):
        return etree.Element(q("intrekking"), recordId=entry.record_id, reden=entry.reden, nsmap={None: NS})
    return _resultaat(entry)


#: A text element of a `<resultaat>`: (inside `<deelnemer>`?, local name, text).
_Leaf = tuple[bool, str, str]


def _leaves(entry: Resultaat) -> list[_Leaf]:
    """The text elements of a `<resultaat>` in the schema's order (absent ones left out)."""
    d = entry.deelnemer
    person: list[tuple[str, str | None]] = [(d.soort, d.nummer)]
    if d.soort == "eigenDeelnemerSleutel":
        person.append(("geboortedatum", d.geboortedatum.isoformat() if d.geboortedatum else None))
    person += [("voornamen", d.voornamen), ("voorvoegsel", d.voorvoegsel), ("achternaam", d.achternaam)]
    unit = (("opleidingseenheidcode", entry.eenheid.code) if entry.eenheid.code is not None
            else ("eigenOpleidingseenheidSleutel", entry.eenheid.eigen_sleutel))
    rest = [unit, ("onderwijsaanbiedercode", entry.onderwijsaanbiedercode),
            ("datumBehaald", entry.datum_behaald.isoformat()), ("studielast", _decimal(entry.studielast)),
            ("resultaat", entry.resultaat), ("eqf", str(entry.eqf) if entry.eqf is not None else None),
            ("nlqf", entry.nlqf)]
    return ([(True, name, text) for name, text in person if text is not None]
            + [(False, name, text) for name, text in rest if text is not None])


class _Templates(threading.local):
    """Per thread (lxml trees are not shared between threads): one finished `<resultaat>` per shape."""

    def __init__(self) -> None:
        self.by_shape: dict[tuple[tuple[bool, str], ...], etree._Element] = {}


_templates = _Templates()


def _resultaat(entry: Resultaat) -> etree._Element:
    # Copying a finished element of the same shape (which elements are present) and replacing its
    # texts costs about a third less than creating the twelve elements one by one with SubElement
    # (lxml resolves the namespace and tag for each). The texts pass through the same lxml setter,
    # so a text XML cannot carry raises the same ValueError.
    leaves = _leaves(entry)
    shape = tuple((inside, name) for inside, name, _ in leaves)
    template = _templates.by_shape.get(shape)
    if template is None:
        built = _build_resultaat(entry.record_id, leaves)
        _templates.by_shape[shape] = copy.deepcopy(built)
        return built
    root = copy.deepcopy(template)
    root.set("recordId", entry.record_id)
    nodes = root.iter()
    next(nodes), next(nodes)      # <resultaat> and <deelnemer>: no text; then the leaves in document order
    for node, (_, _, text) in zip(nodes, leaves, strict=True):
        node.text = text
    return root


def _build_resultaat(record_id: str, leaves: list[_Leaf]) -> etree._Element:
    root = etree.Element(q("resultaat"), recordId=record_id, nsmap={None: NS})
    person = etree.SubElement(root, q("deelnemer"))
    for inside, name, text in leaves:
        etree.SubElement(person if inside else root, q(name)).text = text
    return root


def serialized(el: etree._Element) -> bytes:
    """The element on its own, as UTF-8 (it declares the namespace itself); see `levering_of`."""
    return etree.tostring(el, encoding="UTF-8")


def element_size(el: etree._Element) -> int:
    """Bytes the element takes in a body (an upper bound: alone it repeats the namespace)."""
    return len(serialized(el))


def envelope_size(levering_id: str, oin: str) -> int:
    """Bytes of a delivery body without its records."""
    return len(levering(levering_id, oin, datetime(2000, 1, 1, tzinfo=UTC), [], allow_empty=True))


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def levering(levering_id: str, oin: str, at: datetime, elements: Sequence[etree._Element], *,
             allow_empty: bool = False) -> bytes:
    """The exact bytes of a `<levering>` holding `elements` in order (the inputs stay as they are)."""
    return levering_of(levering_id, oin, at, [serialized(el) for el in elements], allow_empty=allow_empty)


_DECLARATION = f' xmlns="{NS}"'.encode()
_END = b"</levering>"


def levering_of(levering_id: str, oin: str, at: datetime, records: Sequence[bytes], *,
                allow_empty: bool = False) -> bytes:
    """`levering()` from the records' own serializations (`serialized()`), which a caller may keep.

    Inside `<levering>`, which declares the register's namespace as the default, lxml writes a
    record exactly as on its own minus that (then redundant) declaration, which a record built by
    `element()` or read from a body carries first in its start tag (checked). Joining those bytes
    gives the body lxml writes after copying every record into the tree, without the copies and
    without serializing each record a second time.
    """
    if not records and not allow_empty:
        raise ValueError("a levering holds at least one record")
    root = etree.Element(q("levering"), leveringId=levering_id, oin=oin, datumTijdLevering=timestamp(at),
                         nsmap={None: NS})
    if not records:
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    root.text = ""                # written as <levering ...></levering>: the records go before the end tag
    envelope = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    assert envelope.endswith(_END)
    parts = [envelope[: -len(_END)]]
    for record in records:
        name_end = record.find(b" ")       # a record always has attributes (recordId)
        if name_end < 0 or not record.startswith(_DECLARATION, name_end):
            raise ValueError("not a register record with the register's namespace as its default")
        parts += (record[:name_end], record[name_end + len(_DECLARATION):])
    parts.append(_END)
    return b"".join(parts)


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


_REGEL, _SIGNAAL = q("regel"), q("signaal")


def parse_verslag(data: bytes) -> Verwerkingsverslag:
    root = _valid(data, "verwerkingsverslag")
    # iterchildren(tag) filters in C; iterfind() would run lxml's ElementPath for every regel
    regels = tuple(
        Regel(int(r.get("volgnummer")), r.get("recordId"), r.get("status"),
              tuple([Signaal(s.get("code"), s.get("tekst")) for s in r.iterchildren(_SIGNAAL)]))
        for r in root.iterchildren(_REGEL))
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
