"""What mcsync sends to RIO, and the request bodies in DUO's element order.

Two steps, kept apart so the content can be hashed and checked before anything is sent:

1. `plan(definition, issuer)` turns a mapping-file definition into a `UnitContent` (the
   `opleidingseenheid`) and an `OfferingContent` (its `aangebodenOpleiding`): exactly the values
   that go out, already checked against DUO's limits. Whatever does not fit is collected and
   raised as one `PlanProblem` *before* anything is sent; nothing is ever cut or rounded:
   - RIO's `studielast` is an integer (`\\d{0,5}`). Whole ECTS go as `ECTS_PUNT`. A fraction
     (7.5 ECTS) goes as hours (`SBU`) when the definition gives `study_load_hours`; otherwise it is
     reported ("give study_load_hours or a whole number of ECTS"). It is never rounded.
   - Free text longer than DUO's maxLength (naamLang and the international name 225, omschrijving
     3000, website 320) is reported with its length and the limit, never truncated.
   - ISCED: RIO takes the three-digit ISCED-F narrow field (0-999). A four-digit detailed field
     (0613) is sent as the narrow field that contains it (061), as the SURF mapper does; a
     two-digit broad field (06) does not say which narrow field is meant and is reported.
   - `start_date` is required: it is the `begindatum` of the unit, its period and its offering.
   - The language becomes the offering's `voertaal` (ISO 639-2, three letters); a language outside
     the table below is reported.
   Names are XML tokens in DUO's schema (white space collapsed), so they are collapsed here too and
   the hash covers exactly what RIO stores.

2. The request classes build each body with lxml, element by element in the order of DUO's XSD
   (`Bedrijfsdocument` first: a fresh `identificatiecodeBedrijfsdocument` per message, the sender's
   and DUO's OIN, the time). Empty optional elements are left out (PvE §6.4.4).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal, Protocol

from lxml import etree

from ...record import Issuer, MicrocredentialDefinition, pick_language, stable_hash
from .contract import BEHEREN, RAADPLEGEN

UnitKind = Literal["hoOnderwijseenheid", "particuliereOpleiding"]

#: maxLength of the free-text fields, from DUO's XSD.
NAAM_LANG_MAX = 225            # NaamOpleidingLang, also eigenNaamAangebodenOpleiding
INTERNATIONALE_NAAM_MAX = 225  # InternationaleNaamOpleiding-v02
OMSCHRIJVING_MAX = 3000        # Omschrijving3000-v01
URL_MAX = 320                  # URL (the offering period's `website` kenmerk)
STUDIELAST_MAX = 99999         # StudielastZwaarte: \d{0,5}

#: ISO 639-1 (mapping files) to ISO 639-2/T (RIO's Taalcode-v01, e.g. "NLD").
VOERTAAL = {
    "nl": "NLD", "en": "ENG", "de": "DEU", "fr": "FRA", "es": "SPA", "it": "ITA", "pt": "POR",
    "fy": "FRY", "pl": "POL", "tr": "TUR", "ar": "ARA", "zh": "ZHO", "ja": "JPN", "ru": "RUS",
    "uk": "UKR", "sv": "SWE", "da": "DAN", "fi": "FIN", "no": "NOR", "el": "ELL", "cs": "CES",
    "hu": "HUN", "ro": "RON", "bg": "BUL", "hr": "HRV", "sk": "SLK", "sl": "SLV", "et": "EST",
    "lv": "LAV", "lt": "LIT", "ga": "GLE", "mt": "MLT",
}

_SPACE = re.compile(r"\s+")


def _token(text: str) -> str:
    """XML Schema `token` normalisation: what RIO stores of a name."""
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class UnitContent:
    """One `opleidingseenheid`: everything sent, nothing else (the code is not content)."""

    kind: UnitKind
    eigen_sleutel: str
    begindatum: date
    einddatum: date | None
    naam_lang: str
    internationale_naam: str | None
    omschrijving: str | None
    waardedocumentsoort: str
    studielast: int
    studielasteenheid: Literal["ECTS_PUNT", "SBU"]
    isced: str | None          # hoOnderwijseenheid only
    niveau: str | None         # particuliereOpleiding only

    def as_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class OfferingContent:
    """One `aangebodenOpleiding` of the unit; `code` is ours (a stable UUID)."""

    kind: Literal["aangebodenHOOpleidingsonderdeel", "aangebodenParticuliereOpleiding"]
    code: str
    onderwijsaanbiedercode: str
    onderwijslocatiecode: str | None
    begindatum: date
    einddatum: date | None
    eigen_naam: str
    eigen_naam_internationaal: str | None
    eigen_omschrijving: str | None
    website: str | None
    voertaal: str | None
    niveau: str | None         # aangebodenParticuliereOpleiding only

    def as_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Plan:
    unit: UnitContent
    offering: OfferingContent

    @property
    def unit_hash(self) -> str:
        return stable_hash({"unit": self.unit.as_json()})

    def offering_hash(self, unit_code: str) -> str:
        """The offering as sent: its content plus the unit it points to."""
        return stable_hash({"offering": self.offering.as_json(), "opleidingseenheidSleutel": unit_code})

    def content_hash(self) -> str:
        """`desired_hash`: unit and offering content (codes RIO issues are not content)."""
        return stable_hash({"unit": self.unit.as_json(), "offering": self.offering.as_json()})


class PlanProblem(ValueError):
    """The definition cannot be sent to RIO as it is; `problems` says what to change."""

    def __init__(self, code: str, problems: list[str]) -> None:
        self.code = code
        self.problems = problems
        super().__init__(f"microcredential {code} cannot be registered in RIO: " + "; ".join(problems))


def _studielast(definition: MicrocredentialDefinition, problems: list[str]) -> tuple[int, Literal["ECTS_PUNT", "SBU"]]:
    ects = definition.ects
    if ects == ects.to_integral_value():
        return int(ects), "ECTS_PUNT"
    if definition.study_load_hours is not None:
        if definition.study_load_hours > STUDIELAST_MAX:
            problems.append(f"study_load_hours {definition.study_load_hours} exceeds RIO's maximum of {STUDIELAST_MAX}")
        return definition.study_load_hours, "SBU"
    problems.append(
        f"ects = {ects}: RIO's studielast is a whole number, so {ects} ECTS cannot be sent as ECTS_PUNT "
        "without rounding; give study_load_hours (sent as SBU hours) or a whole number of ECTS")
    return 0, "ECTS_PUNT"


def _isced(value: str | None, problems: list[str]) -> str | None:
    if value is None:
        return None
    if len(value) == 3:
        return value
    if len(value) == 4:
        return value[:3]  # the detailed field's narrow field: 0613 lies in 061
    problems.append(f"isced = {value!r} is an ISCED-F broad field; RIO needs the three-digit narrow field "
                    f"(e.g. {value}1)")
    return None


def _fits(label: str, text: str | None, limit: int, problems: list[str]) -> str | None:
    if text is None:
        return None
    if len(text) > limit:
        problems.append(f"{label} has {len(text)} characters; RIO takes at most {limit} "
                        "(shorten it in the mapping file; mcsync does not cut text)")
    return text


def _check_xml_text(label: str, text: str | None, problems: list[str]) -> None:
    if text is not None and any(ord(c) < 0x20 and c not in "\t\n\r" for c in text):
        problems.append(f"{label} contains control characters that XML cannot carry")


def plan(definition: MicrocredentialDefinition, issuer: Issuer) -> Plan:
    """The unit and offering for `definition`, or PlanProblem listing everything that must change."""
    rio = definition.rio
    if rio is None:
        raise PlanProblem(definition.code, ["the definition has no rio section"])
    problems: list[str] = []
    if definition.start_date is None:
        problems.append("start_date is required for RIO: it is the begindatum of the unit and its offering")
    if issuer.onderwijsaanbiedercode is None:
        problems.append("[institution] onderwijsaanbiedercode is required for RIO offerings")

    naam = _token(pick_language(definition.title, "nl", definition.language))
    naam = _fits("title (naamLang)", naam, NAAM_LANG_MAX, problems) or naam
    intl = _fits("title.en (internationaleNaam)",
                 _token(definition.title["en"]) if "en" in definition.title else None,
                 INTERNATIONALE_NAAM_MAX, problems)
    description = None
    if definition.description:
        description = pick_language(definition.description, "nl", definition.language).strip() or None
    description = _fits("description (omschrijving)", description, OMSCHRIJVING_MAX, problems)
    website = _fits("further_info_url (website)", definition.further_info_url, URL_MAX, problems)
    texts = (("title", naam), ("title.en", intl), ("description", description), ("further_info_url", website))
    for label, text in texts:
        _check_xml_text(label, text, problems)
    studielast, eenheid = _studielast(definition, problems)
    voertaal = VOERTAAL.get(definition.language)
    if voertaal is None:
        problems.append(f"language = {definition.language!r} has no ISO 639-2 code in mcsync's table for "
                        "RIO's voertaal; use one of " + ", ".join(sorted(VOERTAAL)))
    ho = rio.kind == "hoOnderwijseenheid"
    isced = _isced(definition.isced, problems) if ho else None
    if problems:
        raise PlanProblem(definition.code, problems)
    begin = definition.start_date
    assert begin is not None and issuer.onderwijsaanbiedercode is not None

    unit = UnitContent(
        kind=rio.kind, eigen_sleutel=definition.rio_eigen_sleutel(issuer.brin), begindatum=begin,
        einddatum=definition.end_date, naam_lang=naam, internationale_naam=intl, omschrijving=description,
        waardedocumentsoort=rio.waardedocumentsoort, studielast=studielast, studielasteenheid=eenheid,
        isced=isced, niveau=None if ho else rio.niveau)
    offering = OfferingContent(
        kind="aangebodenHOOpleidingsonderdeel" if ho else "aangebodenParticuliereOpleiding",
        code=definition.rio_offering_code(issuer.brin), onderwijsaanbiedercode=issuer.onderwijsaanbiedercode,
        onderwijslocatiecode=rio.onderwijslocatiecode, begindatum=begin, einddatum=definition.end_date,
        eigen_naam=naam, eigen_naam_internationaal=intl, eigen_omschrijving=description, website=website,
        voertaal=voertaal, niveau=None if ho else rio.niveau)
    return Plan(unit, offering)


# --- request bodies ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bedrijfsdocument:
    """The four elements every RIO message starts with."""

    identificatiecode: str
    verzendende_instantie: str
    ontvangende_instantie: str
    moment: datetime


def xml_datetime(moment: datetime) -> str:
    """xsd:dateTime in UTC with milliseconds, as DUO's own messages carry it."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _Builder:
    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def root(self, name: str, doc: Bedrijfsdocument) -> etree._Element:
        root = etree.Element(f"{{{self.ns}}}{name}", nsmap={"duo": self.ns})
        self.add(root, "identificatiecodeBedrijfsdocument", doc.identificatiecode)
        self.add(root, "verzendendeInstantie", doc.verzendende_instantie)
        self.add(root, "ontvangendeInstantie", doc.ontvangende_instantie)
        self.add(root, "datumTijdBedrijfsdocument", xml_datetime(doc.moment))
        return root

    def add(self, parent: etree._Element, name: str, value: str | int | date | None = None) -> etree._Element:
        child = etree.SubElement(parent, f"{{{self.ns}}}{name}")
        if value is not None:
            child.text = value.isoformat() if isinstance(value, date) else str(value)
        return child

    def opt(self, parent: etree._Element, name: str, value: str | int | date | None) -> None:
        if value is not None and value != "":
            self.add(parent, name, value)

    def kenmerk(self, parent: etree._Element, naam: str, *, tekst: str | None = None,
                enumeratie: str | None = None) -> None:
        element = self.add(parent, "kenmerken")
        self.add(element, "kenmerknaam", naam)
        if tekst is not None:
            self.add(element, "kenmerkwaardeTekst", tekst)
        else:
            self.add(element, "kenmerkwaardeEnumeratiewaarde", enumeratie)


class Request(Protocol):
    """A RIO request: its operation and how to build its body for one message."""

    operation: ClassVar[str]

    def body(self, doc: Bedrijfsdocument) -> etree._Element: ...


@dataclass(frozen=True)
class AanleverenOpleidingseenheid:
    """Create (no code) or replace (with its code) a unit: always its full state."""

    operation: ClassVar[str] = "aanleveren_opleidingseenheid"
    unit: UnitContent
    opleidingseenheidcode: str | None = None

    def body(self, doc: Bedrijfsdocument) -> etree._Element:
        b = _Builder(BEHEREN.schema_ns)
        root = b.root("aanleveren_opleidingseenheid_request", doc)
        u = self.unit
        unit = b.add(root, u.kind)
        b.opt(unit, "opleidingseenheidcode", self.opleidingseenheidcode)
        b.add(unit, "begindatum", u.begindatum)
        b.opt(unit, "einddatum", u.einddatum)
        b.kenmerk(unit, "eigenOpleidingseenheidSleutel", tekst=u.eigen_sleutel)
        period = b.add(unit, f"{u.kind}Periode")
        b.add(period, "begindatum", u.begindatum)
        b.add(period, "naamLang", u.naam_lang)
        b.opt(period, "internationaleNaam", u.internationale_naam)
        b.opt(period, "omschrijving", u.omschrijving)
        if u.kind == "hoOnderwijseenheid":
            b.add(period, "waardedocumentsoort", u.waardedocumentsoort)
            b.add(period, "studielast", u.studielast)
            b.add(period, "studielasteenheid", u.studielasteenheid)
            b.opt(unit, "ISCED", u.isced)
        else:
            b.add(period, "studielast", u.studielast)
            b.add(period, "studielasteenheid", u.studielasteenheid)
            b.add(unit, "waardedocumentsoort", u.waardedocumentsoort)
            b.opt(unit, "niveau", u.niveau)
        return root


@dataclass(frozen=True)
class AanleverenAangebodenOpleiding:
    """Create or replace the offering (its code is ours, so this is always an upsert)."""

    operation: ClassVar[str] = "aanleveren_aangebodenOpleiding"
    offering: OfferingContent
    opleidingseenheidcode: str

    def body(self, doc: Bedrijfsdocument) -> etree._Element:
        b = _Builder(BEHEREN.schema_ns)
        root = b.root("aanleveren_aangebodenOpleiding_request", doc)
        o = self.offering
        offering = b.add(root, o.kind)
        b.add(offering, "aangebodenOpleidingCode", o.code)
        b.add(offering, "onderwijsaanbiedercode", o.onderwijsaanbiedercode)
        b.opt(offering, "onderwijslocatiecode", o.onderwijslocatiecode)
        b.add(offering, "begindatum", o.begindatum)
        b.opt(offering, "einddatum", o.einddatum)
        b.add(offering, "opleidingseenheidSleutel", self.opleidingseenheidcode)
        period = b.add(offering, f"{o.kind}Periode")
        b.add(period, "begindatum", o.begindatum)
        b.add(period, "eigenNaamAangebodenOpleiding", o.eigen_naam)
        b.opt(period, "eigenNaamInternationaal", o.eigen_naam_internationaal)
        b.opt(period, "eigenOmschrijving", o.eigen_omschrijving)
        if o.website:
            b.kenmerk(period, "website", tekst=o.website)
        b.kenmerk(offering, "eigenAangebodenOpleidingSleutel", tekst=o.code)
        if o.voertaal:
            b.kenmerk(offering, "voertaal", enumeratie=o.voertaal)
        if o.kind == "aangebodenParticuliereOpleiding":
            b.opt(offering, "niveau", o.niveau)
        return root


@dataclass(frozen=True)
class VerwijderenAangebodenOpleiding:
    operation: ClassVar[str] = "verwijderen_aangebodenOpleiding"
    aangeboden_opleiding_code: str

    def body(self, doc: Bedrijfsdocument) -> etree._Element:
        b = _Builder(BEHEREN.schema_ns)
        root = b.root("verwijderen_aangebodenOpleiding_request", doc)
        b.add(root, "aangebodenOpleidingCode", self.aangeboden_opleiding_code)
        return root


@dataclass(frozen=True)
class VerwijderenOpleidingseenheid:
    operation: ClassVar[str] = "verwijderen_opleidingseenheid"
    opleidingseenheidcode: str

    def body(self, doc: Bedrijfsdocument) -> etree._Element:
        b = _Builder(BEHEREN.schema_ns)
        root = b.root("verwijderen_opleidingseenheid_request", doc)
        b.add(root, "opleidingseenheidcode", self.opleidingseenheidcode)
        return root


@dataclass(frozen=True)
class OpvragenRioIdentificatiecode:
    """Look up RIO's code by one of our own keys (exactly one of the two)."""

    operation: ClassVar[str] = "opvragen_rioIdentificatiecode"
    eigen_opleidingseenheid_sleutel: str | None = None
    eigen_aangeboden_opleiding_sleutel: str | None = None

    def __post_init__(self) -> None:
        if (self.eigen_opleidingseenheid_sleutel is None) == (self.eigen_aangeboden_opleiding_sleutel is None):
            raise ValueError("give exactly one own key")

    def body(self, doc: Bedrijfsdocument) -> etree._Element:
        b = _Builder(RAADPLEGEN.schema_ns)
        root = b.root("opvragen_rioIdentificatiecode_request", doc)
        if self.eigen_aangeboden_opleiding_sleutel is not None:
            b.add(root, "eigenAangebodenOpleidingSleutel", self.eigen_aangeboden_opleiding_sleutel)
        else:
            b.add(root, "eigenOpleidingseenheidSleutel", self.eigen_opleidingseenheid_sleutel)
        return root


@dataclass(frozen=True)
class OpvragenOpleidingseenheid:
    operation: ClassVar[str] = "opvragen_opleidingseenheid"
    opleidingseenheidcode: str

    def body(self, doc: Bedrijfsdocument) -> etree._Element:
        b = _Builder(RAADPLEGEN.schema_ns)
        root = b.root("opvragen_opleidingseenheid_request", doc)
        b.add(root, "opleidingseenheidcode", self.opleidingseenheidcode)
        return root
