"""A local DUO-style register of awarded microcredentials, behaving as duo-register.md documents it.

Mounted under a prefix (`MOUNT`, "/duo/rmc/v1") it serves

    POST /leveringen                  validate, store, 202 <leveringOntvangen> (idempotent by leveringId)
    GET  /leveringen/{leveringId}     <verwerkingsverslag>: in_behandeling (+ Retry-After), then verwerkt
    GET  /resultaten/{recordId}       <geregistreerdResultaat>, or 404 when never accepted

What it checks, in this order, on a POST (nothing is stored unless all pass): a refusal hook
(429/503 with Retry-After, for tests), size (413 over 10 MiB), Content-Type (415), well-formed XML
without a DOCTYPE (400 XSD001), at most 1000 records (400 XSD002), the schema (400 XSD001 naming
the first violation), the `oin` attribute against the client certificate's subject serialNumber
when a certificate was presented (403 AUT001), and the leveringId (same bytes again: the same 202;
other bytes: 409 LEV409).

Deliveries are processed `processing_delay` seconds after receipt, in order of receipt, lazily: any
request first processes what is due, so a test clock makes it deterministic. Per record it signals

    R002  the BSN fails the elfproef
    R001  a BSN in `unknown_bsns` or not in `known_bsns`; an onderwijsnummer not in
          `known_onderwijsnummers` (None: everyone who passes the checks is known)
    R101  an opleidingseenheidcode not in `known_unit_codes` (a set, or a callable such as the
          RIO simulator's lookup; None: every code is known)
    R102  the unit referenced by its own key only
    R201  studielast outside 3–30
    R202  datumBehaald after today (by `clock`, UTC)
    R301  identical to what is registered (accepted, no change)
    R401  an intrekking of what is not registered
    R900  a temporary failure, set up with `fail_next(record_id)`

and R000 otherwise. The register is state-based: one registration per recordId, the latest accepted
version wins.

It parses with entities, DTDs and network off, shares no code with mcsync's client (only the
schema file, which is the contract), and keeps its state in memory behind a lock.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

from lxml import etree

from .base import SimRequest, SimResponse

MOUNT = "/duo/rmc/v1"
NS = "urn:mcsync:duo-register:v1"
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_RECORDS = 1000

TEXTS = {
    "R000": "Resultaat geregistreerd",
    "R000-intrekking": "Resultaat ingetrokken",
    "R001": "Deelnemer onbekend bij DUO",
    "R002": "BSN voldoet niet aan de elfproef",
    "R101": "Opleidingseenheidcode onbekend in RIO",
    "R102": "Opleidingseenheid alleen met eigen sleutel aangeduid; RIO-code verplicht",
    "R201": "Studielast valt buiten 3 tot 30 EC voor een microcredential",
    "R202": "DatumBehaald ligt in de toekomst",
    "R301": "Identiek aan het geregistreerde resultaat; geen wijziging",
    "R401": "Intrekking van een resultaat dat niet geregistreerd is",
    "R900": "Tijdelijke verwerkingsfout; lever het record later opnieuw aan",
}

_LEVERING_PATH = re.compile(r"^/leveringen/([^/]+)$")
_RESULTAAT_PATH = re.compile(r"^/resultaten/([^/]+)$")


def _q(name: str) -> str:
    return f"{{{NS}}}{name}"


def _elfproef(number: str) -> bool:
    if not re.fullmatch(r"[0-9]{9}", number) or number == "000000000":
        return False
    digits = [int(c) for c in number]
    return (sum((9 - i) * d for i, d in enumerate(digits[:8])) - digits[8]) % 11 == 0


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _load_schema() -> etree.XMLSchema:
    data = resources.files("mcsync.targets.duo").joinpath("schema/duo-register.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(data, _parser()))


def _cert_oin(cert: dict[str, Any]) -> str | None:
    """The OIN in a certificate's subject (PKIoverheid puts it in serialNumber)."""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "serialNumber":
                return str(value)
    return None


def _content(el: etree._Element) -> tuple[tuple[str, str], ...]:
    """A `<resultaat>` as comparable (path, text) pairs."""
    pairs = []
    for node in el.iter():
        if not isinstance(node.tag, str) or len(node):
            continue
        path = node.tag.rpartition("}")[2]          # the local name
        text = (node.text or "").strip()
        if path == "studielast":
            try:
                text = str(Decimal(text).normalize())
            except InvalidOperation:
                pass
        pairs.append((path, text))
    return tuple(pairs)


@dataclass
class Registration:
    """What the register holds for one recordId."""

    record_id: str
    status: str                 # geregistreerd | ingetrokken
    levering_id: str
    oin: str
    element: bytes              # the registered <resultaat>
    content: tuple[tuple[str, str], ...]

    def text(self, name: str) -> str | None:
        """The text of a registered field by local name, e.g. "opleidingseenheidcode"."""
        return dict(self.content).get(name)


@dataclass
class _Regel:
    volgnummer: int
    record_id: str
    status: str                          # geaccepteerd | afgekeurd
    signals: list[tuple[str, str]]       # (code, tekst)


def _signals(*codes: str) -> list[tuple[str, str]]:
    return [(code, TEXTS[code]) for code in codes]


@dataclass
class _Delivery:
    levering_id: str
    oin: str
    body: bytes
    received_at: datetime
    records: list[etree._Element]
    received: bytes                      # the <leveringOntvangen> answered (the same on a repeat)
    regels: list[_Regel] | None = None   # None while in_behandeling


@dataclass
class _Refusal:
    times: int
    status: int
    retry_after: str | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DuoRegisterSimulator:
    """The register (see the module docstring). Thread-safe; hooks and inspection helpers for tests."""

    def __init__(self, *, processing_delay: float = 1.0, known_bsns: Collection[str] | None = None,
                 unknown_bsns: Collection[str] = (), known_onderwijsnummers: Collection[str] | None = None,
                 known_unit_codes: Collection[str] | Callable[[str], bool] | None = None,
                 clock: Callable[[], datetime] = _utc_now, max_body_bytes: int = MAX_BODY_BYTES,
                 max_records: int = MAX_RECORDS) -> None:
        self.processing_delay = processing_delay
        self.known_bsns = known_bsns
        self.unknown_bsns = unknown_bsns
        self.known_onderwijsnummers = known_onderwijsnummers
        self.known_unit_codes = known_unit_codes
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.max_records = max_records
        self.posts = 0                   # POST requests, repeats and refusals included
        self._lock = threading.RLock()
        self._schema = _load_schema()
        self._deliveries: dict[str, _Delivery] = {}
        self._order: list[str] = []
        self._registry: dict[str, Registration] = {}
        self._history: dict[str, list[tuple[str, str, tuple[str, ...]]]] = defaultdict(list)
        self._fail_next: Counter[str] = Counter()
        self._refusals: list[_Refusal] = []
        self._drop_next = 0

    # hooks -----------------------------------------------------------------------------------------
    def fail_next(self, record_id: str, times: int = 1) -> None:
        """Answer R900 (temporary failure) the next `times` times `record_id` is processed."""
        with self._lock:
            self._fail_next[record_id] += times

    def refuse_next(self, times: int = 1, *, status: int = 429, retry_after: str | None = "1") -> None:
        """Answer the next `times` POSTs with `status` (429/503) and Retry-After, storing nothing."""
        with self._lock:
            self._refusals.append(_Refusal(times, status, retry_after))

    def drop_next_response(self, times: int = 1) -> None:
        """Store the next `times` accepted POSTs, then cut the connection instead of answering."""
        with self._lock:
            self._drop_next += times

    # inspection ------------------------------------------------------------------------------------
    def registered(self, record_id: str) -> Registration | None:
        with self._lock:
            self._process_due()
            return self._registry.get(record_id)

    @property
    def registrations(self) -> dict[str, Registration]:
        with self._lock:
            self._process_due()
            return dict(self._registry)

    @property
    def deliveries_received(self) -> list[str]:
        """leveringIds in order of receipt (each once, however often it was posted)."""
        with self._lock:
            return list(self._order)

    def delivery_body(self, levering_id: str) -> bytes:
        with self._lock:
            return self._deliveries[levering_id].body

    def deliveries_with(self, record_id: str) -> list[str]:
        """The deliveries that carried `record_id`, in order of receipt."""
        with self._lock:
            return [lid for lid in self._order
                    if any(el.get("recordId") == record_id for el in self._deliveries[lid].records)]

    def processed(self, record_id: str) -> list[tuple[str, str, tuple[str, ...]]]:
        """(leveringId, status, signal codes) each time the record was processed."""
        with self._lock:
            self._process_due()
            return list(self._history.get(record_id, []))

    def summary(self) -> str:
        """One line for the sandbox's report: deliveries and what the register holds."""
        with self._lock:
            self._process_due()
            states = Counter(r.status for r in self._registry.values())
            waiting = sum(1 for d in self._deliveries.values() if d.regels is None)
            return (f"{len(self._order)} deliveries ({waiting} in processing), {states['geregistreerd']} results "
                    f"registered, {states['ingetrokken']} withdrawn")

    # HTTP --------------------------------------------------------------------------------------------
    def handle(self, request: SimRequest) -> SimResponse:
        with self._lock:
            self._process_due()
            if request.path == "/leveringen":
                if request.method != "POST":
                    return self._fout(405, "HTTP405", "Alleen POST op /leveringen")
                return self._post(request)
            for pattern, answer in ((_LEVERING_PATH, self._report), (_RESULTAAT_PATH, self._resultaat)):
                match = pattern.match(request.path)
                if match:
                    if request.method != "GET":
                        return self._fout(405, "HTTP405", "Alleen GET")
                    return answer(match.group(1), request)
            return self._fout(404, "HTTP404", "Onbekend pad")

    def _post(self, request: SimRequest) -> SimResponse:
        self.posts += 1
        if self._refusals:
            refusal = self._refusals[0]
            refusal.times -= 1
            if refusal.times <= 0:
                self._refusals.pop(0)
            headers = {"Retry-After": refusal.retry_after} if refusal.retry_after else {}
            return self._fout(refusal.status, f"HTTP{refusal.status}", "Probeer het later opnieuw", headers)
        if len(request.body) > self.max_body_bytes:
            return self._fout(413, "LEV413", "Levering groter dan toegestaan")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/xml":
            return self._fout(415, "LEV415", "Content-Type moet application/xml zijn")
        try:
            root = etree.fromstring(request.body, _parser())
        except etree.XMLSyntaxError as exc:
            return self._fout(400, "XSD001", f"Geen goedgevormde XML: {exc}")
        if root.getroottree().docinfo.doctype:
            return self._fout(400, "XSD001", "DOCTYPE is niet toegestaan")
        if root.tag != _q("levering"):
            return self._fout(400, "XSD001", f"Verwacht <levering> in {NS}, niet {root.tag}")
        if len(root) > self.max_records:
            return self._fout(400, "XSD002", f"Levering bevat {len(root)} records; maximaal {self.max_records}")
        if not self._schema.validate(root):
            error = self._schema.error_log[0]
            return self._fout(400, "XSD001", f"regel {error.line}: {error.message}")
        oin = root.get("oin")
        if request.client_cert is not None and _cert_oin(request.client_cert) != oin:
            return self._fout(403, "AUT001", "OIN van de levering hoort niet bij het certificaat")
        levering_id = root.get("leveringId")
        known = self._deliveries.get(levering_id)
        if known is not None:
            if known.body != request.body:
                return self._fout(409, "LEV409", "LeveringId al gebruikt voor een andere levering")
            return self._accepted(known)
        received = etree.Element(_q("leveringOntvangen"), nsmap={None: NS}, leveringId=levering_id,
                                 aantal=str(len(root)), status="ontvangen")
        delivery = _Delivery(levering_id, oin, request.body, self.clock(), list(root),
                             etree.tostring(received, xml_declaration=True, encoding="UTF-8"))
        self._deliveries[levering_id] = delivery
        self._order.append(levering_id)
        self._process_due()
        response = self._accepted(delivery)
        if self._drop_next:
            self._drop_next -= 1
            response.drop_connection = True
        return response

    @staticmethod
    def _accepted(delivery: _Delivery) -> SimResponse:
        return SimResponse.xml(202, delivery.received, {"Location": f"/leveringen/{delivery.levering_id}"})

    def _foreign(self, oin: str, request: SimRequest) -> bool:
        return request.client_cert is not None and _cert_oin(request.client_cert) != oin

    def _report(self, levering_id: str, request: SimRequest) -> SimResponse:
        delivery = self._deliveries.get(levering_id)
        if delivery is None:
            return self._fout(404, "LEV404", "Levering onbekend")
        if self._foreign(delivery.oin, request):
            return self._fout(403, "AUT001", "Levering hoort bij een andere instelling")
        root = etree.Element(_q("verwerkingsverslag"), nsmap={None: NS}, leveringId=levering_id)
        headers = {}
        if delivery.regels is None:
            root.set("status", "in_behandeling")
            remaining = (delivery.received_at + timedelta(seconds=self.processing_delay) - self.clock()).total_seconds()
            headers["Retry-After"] = str(max(1, math.ceil(remaining)))
        else:
            root.set("status", "verwerkt")
            for regel in delivery.regels:
                line = etree.SubElement(root, _q("regel"), volgnummer=str(regel.volgnummer),
                                        recordId=regel.record_id, status=regel.status)
                for code, tekst in regel.signals:
                    etree.SubElement(line, _q("signaal"), code=code, tekst=tekst)
        return SimResponse.xml(200, etree.tostring(root, xml_declaration=True, encoding="UTF-8"), headers)

    def _resultaat(self, record_id: str, request: SimRequest) -> SimResponse:
        registration = self._registry.get(record_id)
        if registration is None or self._foreign(registration.oin, request):
            return self._fout(404, "RES404", "Resultaat niet geregistreerd")
        root = etree.Element(_q("geregistreerdResultaat"), nsmap={None: NS}, recordId=record_id,
                             leveringId=registration.levering_id, status=registration.status)
        root.append(etree.fromstring(registration.element, _parser()))
        return SimResponse.xml(200, etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

    @staticmethod
    def _fout(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> SimResponse:
        root = etree.Element(_q("fout"), nsmap={None: NS}, code=code)
        root.text = text
        return SimResponse.xml(status, etree.tostring(root, xml_declaration=True, encoding="UTF-8"), headers)

    # processing --------------------------------------------------------------------------------------
    def _process_due(self) -> None:
        now = self.clock()
        for levering_id in self._order:
            delivery = self._deliveries[levering_id]
            if delivery.regels is None:
                if delivery.received_at + timedelta(seconds=self.processing_delay) > now:
                    return  # in order of receipt: later ones wait too
                delivery.regels = [self._process(delivery, n, el) for n, el in enumerate(delivery.records, 1)]

    def _process(self, delivery: _Delivery, volgnummer: int, el: etree._Element) -> _Regel:
        record_id = el.get("recordId")
        if self._fail_next[record_id] > 0:
            self._fail_next[record_id] -= 1
            regel = _Regel(volgnummer, record_id, "afgekeurd", _signals("R900"))
        elif el.tag == _q("intrekking"):
            regel = self._withdraw(delivery, volgnummer, record_id)
        else:
            regel = self._register(delivery, volgnummer, el)
        self._history[record_id].append((delivery.levering_id, regel.status, tuple(c for c, _ in regel.signals)))
        return regel

    def _withdraw(self, delivery: _Delivery, volgnummer: int, record_id: str) -> _Regel:
        current = self._registry.get(record_id)
        if current is None or current.status != "geregistreerd":
            return _Regel(volgnummer, record_id, "afgekeurd", _signals("R401"))
        current.status = "ingetrokken"
        current.levering_id = delivery.levering_id
        return _Regel(volgnummer, record_id, "geaccepteerd", [("R000", TEXTS["R000-intrekking"])])

    def _register(self, delivery: _Delivery, volgnummer: int, el: etree._Element) -> _Regel:
        record_id = el.get("recordId")
        content = _content(el)
        signals = self._checks(dict(content))
        if signals:
            return _Regel(volgnummer, record_id, "afgekeurd", _signals(*signals))
        current = self._registry.get(record_id)
        if current is not None and current.status == "geregistreerd" and current.content == content:
            return _Regel(volgnummer, record_id, "geaccepteerd", _signals("R301"))
        self._registry[record_id] = Registration(record_id, "geregistreerd", delivery.levering_id, delivery.oin,
                                                 etree.tostring(el), content)
        return _Regel(volgnummer, record_id, "geaccepteerd", _signals("R000"))

    def _checks(self, fields: dict[str, str]) -> list[str]:
        """The register's content rules over a schema-valid `<resultaat>`'s fields (`_content`: by local
        name, which the schema makes unique within a resultaat)."""
        text = fields.get
        signals = []
        bsn, onderwijsnummer = text("bsn"), text("onderwijsnummer")
        if bsn is not None:
            if not _elfproef(bsn):
                signals.append("R002")
            elif bsn in self.unknown_bsns or (self.known_bsns is not None and bsn not in self.known_bsns):
                signals.append("R001")
        if onderwijsnummer is not None and self.known_onderwijsnummers is not None \
                and onderwijsnummer not in self.known_onderwijsnummers:
            signals.append("R001")
        code = text("opleidingseenheidcode")
        if code is not None and not self._unit_known(code):
            signals.append("R101")
        if text("eigenOpleidingseenheidSleutel") is not None:
            signals.append("R102")
        studielast = Decimal(text("studielast") or "0")
        if not Decimal(3) <= studielast <= Decimal(30):
            signals.append("R201")
        if date.fromisoformat((text("datumBehaald") or "")[:10]) > self.clock().date():
            signals.append("R202")
        return signals

    def _unit_known(self, code: str) -> bool:
        known = self.known_unit_codes
        if known is None:
            return True
        if callable(known):
            return bool(known(code))
        return code in known

