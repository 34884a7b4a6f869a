"""A local RIO: DUO's two SOAP services, Beheren and Raadplegen, as the reference documents them.

Serves `POST /beheren4.0` and `POST /raadplegen4.0` (mount it under e.g. "/rio"). Each request
goes through the checks DUO makes, in this order, and fails the way DUO fails (rio.md §2, PvE §6.5):

    not text/xml                          HTTP 415
    not XML, no envelope/body             SOAP fault Client.DK0004
    WS-Addressing missing or wrong        SOAP fault Client.DK0005 (the PvE lists DK0005-DK0011 and
      (Action != SOAPAction, To not this    EK0020-EK0023 for WS-Addressing without saying which is
      service with ?oin=<DUO>, From not     which; the simulator uses DK0005 for all of them)
      anonymous?oin=..., MessageID re-used)
    signature missing or invalid          SOAP fault Client.EK0031 (with `require_signature`)
    body not valid against the schema     SOAP fault Client.DK0004 (mcsync's own XSD subset)
    sender not authorised                 requestGoedgekeurd=false, AUT401

then applies the operation:

    aanleveren_opleidingseenheid     without code: a new unit, code `\\d{4}O\\d{4}` issued at once;
                                     with code: replaces that unit (state-based). The own key
                                     (kenmerk eigenOpleidingseenheidSleutel) may belong to one unit
                                     only: P01081 otherwise, also while the other unit is still in
                                     the queue. Missing own key: K01010.
    aanleveren_aangebodenOpleiding   upsert by aangebodenOpleidingCode; its unit must be visible and
                                     of the matching kind; onderwijslocatiecode must be known (A01060,
                                     when `known_locations` is given); its own key unique (A01160).
    verwijderen_aangebodenOpleiding  A01020 when RIO does not hold it.
    verwijderen_opleidingseenheid    P01810 while an offering of it is still visible.
    opvragen_rioIdentificatiecode    the code, or A01161 "De externe identificatie komt niet voor in
                                     RIO" with the key elided to 25 characters as DUO does.
    opvragen_opleidingseenheid       the unit in Raadplegen shape (herkomstOpleiding, ISCED as a
                                     number, an `eigenaar` kenmerk RIO adds itself).

Eventual consistency: every accepted write (create, update, delete) becomes visible to the
Raadplegen operations only `visibility_delay` seconds later, by the injected `clock`.
Answers have DUO's shape: SOAP-ENV envelope, wsa:RelatesTo our MessageID, `ns2:` body with the
request's identificatiecodeBedrijfsdocument echoed, `requestGoedgekeurd`, codes or foutmeldingen.
Where DUO's documentation gives no code (an unknown opleidingseenheidcode, an offering for a unit
RIO does not show yet) the simulator answers with a foutcode starting with "SIM": clearly not
DUO's, and, like any code mcsync does not know, treated as temporary.

The signature check (`verify_signature`) is written apart from mcsync's signer: it reads the
algorithms, PrefixLists and references from the message itself, resolves wsu:Id references,
takes the key from the BinarySecurityToken the KeyInfo points to, and verifies with
`cryptography`. It accepts the real signatures of DUO's and SURF's recorded messages.

Tests steer it with `fail_next` (SOAP faults), `reject_next` (foutmeldingen), `drop_next` (apply,
then cut the connection) and read `calls`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from ..targets.rio.contract import (
    BEHEREN,
    DS,
    DUO_OIN,
    EXC_C14N,
    RAADPLEGEN,
    RSA_SHA256,
    SHA256,
    SOAP_ENV,
    WSA,
    WSA_ANONYMOUS,
    WSSE,
    WSU,
    X509V3,
    Service,
)
from .base import SimRequest, SimResponse

Clock = Callable[[], datetime]

#: DUO's texts for the codes the simulator gives (from DUO's answers and the SURF mapper).
TEXTS = {
    "A01161": "De externe identificatie komt niet voor in RIO",
    "A01020": "De aangeboden opleiding komt niet voor in RIO",
    "A01060": "De onderwijslocatie komt niet voor in RIO",
    "A01160": "Externe identificatie niet uniek",
    "AUT401": "Er is geen autorisatie voor deze bewerking",
    "K01010": "'eigenOpleidingseenheidSleutel' komt niet vaak genoeg voor als kenmerk",
    "P01081": "De eigenOpleidingseenheidSleutel is al in gebruik bij een andere opleidingseenheid",
    "P01810": "Er bestaan nog verwijzingen naar de te verwijderen opleidingseenheid; deze dienen eerst "
              "verwijderd te worden",
    "SIM001": "De opleidingseenheid komt niet voor in RIO (simulator)",
    "SIM002": "De soort opleidingseenheid kan niet worden gewijzigd (simulator)",
    "SIM003": "De opleidingseenheid van de aangeboden opleiding is (nog) niet bekend in RIO (simulator)",
    "SIM004": "De soort aangeboden opleiding past niet bij de opleidingseenheid (simulator)",
}

_OFFERING_FOR_UNIT = {"aangebodenHOOpleidingsonderdeel": "hoOnderwijseenheid",
                      "aangebodenParticuliereOpleiding": "particuliereOpleiding"}
_NEVER = datetime.max.replace(tzinfo=UTC)


# --- the signature check -------------------------------------------------------------------------

class SignatureError(Exception):
    """The WS-Security signature is missing, malformed or does not verify."""


@dataclass(frozen=True)
class VerifiedSignature:
    certificate: x509.Certificate
    signed: tuple[etree._Element, ...]
    created: datetime | None
    expires: datetime | None


def _prefix_list(algorithm_holder: etree._Element) -> list[str]:
    inclusive = algorithm_holder.find(f"{{{EXC_C14N}}}InclusiveNamespaces")
    if inclusive is None:
        return []
    return (inclusive.get("PrefixList") or "").split()


def _element_by_id(root: etree._Element, ident: str) -> etree._Element:
    found = root.xpath("//*[@wsu:Id = $v or @Id = $v]", namespaces={"wsu": WSU}, v=ident)
    if len(found) != 1:
        raise SignatureError(f"reference #{ident} matches {len(found)} elements")
    return found[0]  # type: ignore[no-any-return]


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SignatureError(f"the timestamp {text!r} is not an xsd:dateTime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def verify_signature(envelope: etree._Element, *, now: datetime | None,
                     required: Sequence[etree._Element] = (),
                     skew: timedelta = timedelta(minutes=5)) -> VerifiedSignature:
    """Check the WS-Security signature of a parsed SOAP envelope; raise SignatureError if it fails.

    `required`: elements that must be among the signed ones. `now`: check the wsu:Timestamp
    against this moment (None: do not check it, e.g. for recorded messages).
    """
    header = envelope.find(f"{{{SOAP_ENV}}}Header")
    securities = header.findall(f"{{{WSSE}}}Security") if header is not None else []
    if len(securities) != 1:
        raise SignatureError(f"expected one wsse:Security header, found {len(securities)}")
    security = securities[0]
    signatures = security.findall(f"{{{DS}}}Signature")
    if len(signatures) != 1:
        raise SignatureError(f"expected one ds:Signature, found {len(signatures)}")
    signature = signatures[0]
    signed_info = signature.find(f"{{{DS}}}SignedInfo")
    if signed_info is None:
        raise SignatureError("ds:SignedInfo is missing")
    method = signed_info.find(f"{{{DS}}}CanonicalizationMethod")
    if method is None or method.get("Algorithm") != EXC_C14N:
        raise SignatureError("SignedInfo must be canonicalised with exclusive c14n")
    signature_method = signed_info.find(f"{{{DS}}}SignatureMethod")
    if signature_method is None or signature_method.get("Algorithm") != RSA_SHA256:
        raise SignatureError("the signature method must be rsa-sha256")

    signed: list[etree._Element] = []
    for reference in signed_info.iterfind(f"{{{DS}}}Reference"):
        uri = reference.get("URI") or ""
        if not uri.startswith("#"):
            raise SignatureError(f"reference {uri!r} is not a same-document reference")
        part = _element_by_id(envelope, uri[1:])
        transforms = reference.findall(f"{{{DS}}}Transforms/{{{DS}}}Transform")
        if len(transforms) != 1 or transforms[0].get("Algorithm") != EXC_C14N:
            raise SignatureError(f"reference {uri} must have exactly one exclusive-c14n transform")
        digest_method = reference.find(f"{{{DS}}}DigestMethod")
        if digest_method is None or digest_method.get("Algorithm") != SHA256:
            raise SignatureError(f"reference {uri} must use SHA-256")
        canonical = etree.tostring(part, method="c14n", exclusive=True, with_comments=False,
                                   inclusive_ns_prefixes=_prefix_list(transforms[0]))
        try:
            expected = base64.b64decode(reference.findtext(f"{{{DS}}}DigestValue") or "", validate=False)
        except ValueError:
            raise SignatureError(f"the digest of {uri} is not base64") from None
        if not hmac.compare_digest(hashlib.sha256(canonical).digest(), expected):
            raise SignatureError(f"the digest of {uri} does not match: the signed part was changed")
        signed.append(part)

    token_reference = signature.find(f"{{{DS}}}KeyInfo/{{{WSSE}}}SecurityTokenReference/{{{WSSE}}}Reference")
    if token_reference is None or not (token_reference.get("URI") or "").startswith("#"):
        raise SignatureError("KeyInfo does not point to a BinarySecurityToken")
    token = _element_by_id(envelope, token_reference.get("URI", "")[1:])
    if token.tag != f"{{{WSSE}}}BinarySecurityToken" or token.get("ValueType") != X509V3:
        raise SignatureError("the key is not an X.509 v3 BinarySecurityToken")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode("".join((token.text or "").split())))
    except ValueError:
        raise SignatureError("the BinarySecurityToken holds no X.509 certificate") from None
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureError("the certificate's key is not RSA")
    try:
        value = base64.b64decode("".join((signature.findtext(f"{{{DS}}}SignatureValue") or "").split()))
        public_key.verify(value, etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False,
                                                inclusive_ns_prefixes=_prefix_list(method)),
                          padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature value does not verify") from None

    for element in required:
        if not any(element is part for part in signed):
            raise SignatureError(f"{etree.QName(element).localname} is not signed")
    stamp = security.find(f"{{{WSU}}}Timestamp")
    created = expires = None
    if stamp is not None:
        created = _timestamp(stamp.findtext(f"{{{WSU}}}Created"))
        expires = _timestamp(stamp.findtext(f"{{{WSU}}}Expires"))
    if now is not None:
        if stamp is None or not any(stamp is part for part in signed):
            raise SignatureError("the wsu:Timestamp is missing or not signed")
        if created is None or created > now + skew:
            raise SignatureError("the timestamp lies in the future")
        if expires is None or expires <= now - skew:
            raise SignatureError("the message has expired")
    return VerifiedSignature(certificate, tuple(signed), created, expires)


# --- RIO's state ---------------------------------------------------------------------------------

@dataclass
class _Version:
    element: etree._Element          # the unit or offering element as received (Beheren shape)
    visible_at: datetime


@dataclass
class _Object:
    code: str
    own_key: str | None
    kind: str
    versions: list[_Version]
    visible_at: datetime
    deleted_at: datetime = _NEVER    # when the deletion becomes visible
    unit_code: str | None = None     # offerings: the unit they belong to

    def visible(self, now: datetime) -> bool:
        return self.visible_at <= now < self.deleted_at

    def deleting(self) -> bool:
        return self.deleted_at is not _NEVER

    def current(self, now: datetime) -> etree._Element | None:
        shown = [v for v in self.versions if v.visible_at <= now]
        return shown[-1].element if shown else None


@dataclass
class Call:
    """One request the simulator received (for tests)."""

    operation: str
    service: str
    envelope: bytes
    soap_action: str


@dataclass
class _Trouble:
    kind: str                         # "fault" | "reject" | "drop"
    code: str
    text: str
    times: int


class _Fault(Exception):
    def __init__(self, code: str, text: str, status: int = 500) -> None:
        super().__init__(text)
        self.code, self.text, self.status = code, text, status


def _elide(text: str) -> str:
    """DUO shortens sleutelgegeven values to 25 characters: 11 + "..." + 11."""
    return text if len(text) <= 25 else f"{text[:11]}...{text[-11:]}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RioSimulator:
    """DUO's RIO Beheren and Raadplegen services (V4), in memory. See the module docstring."""

    def __init__(self, *, visibility_delay: float = 0.05, require_signature: bool = True,
                 clock: Clock | None = None, oin: str = DUO_OIN, authorised_senders: set[str] | None = None,
                 known_locations: set[str] | None = None, code_prefix: str = "1011",
                 first_code: int = 5000, owner: str = "100B490") -> None:
        self.visibility_delay = timedelta(seconds=visibility_delay)
        self.require_signature = require_signature
        self.clock: Clock = clock or _utcnow
        self.oin = oin
        self.authorised_senders = authorised_senders
        self.known_locations = known_locations
        self.code_prefix = code_prefix
        self.owner = owner
        self.calls: list[Call] = []
        self._next_code = first_code
        self._units: dict[str, _Object] = {}
        self._offerings: dict[str, _Object] = {}
        self._message_ids: set[str] = set()
        self._document_ids: set[str] = set()
        self._trouble: dict[str, list[_Trouble]] = {}
        self._lock = threading.RLock()
        self._schemas = {s.name: etree.XMLSchema(etree.parse(str(s.xsd))) for s in (BEHEREN, RAADPLEGEN)}
        self._operations: dict[str, Callable[[etree._Element, _Answer], None]] = {
            "aanleveren_opleidingseenheid": self._aanleveren_opleidingseenheid,
            "aanleveren_aangebodenOpleiding": self._aanleveren_aangeboden_opleiding,
            "verwijderen_aangebodenOpleiding": self._verwijderen_aangeboden_opleiding,
            "verwijderen_opleidingseenheid": self._verwijderen_opleidingseenheid,
            "opvragen_rioIdentificatiecode": self._opvragen_rio_identificatiecode,
            "opvragen_opleidingseenheid": self._opvragen_opleidingseenheid,
        }

    # steering (tests, benchmark) --------------------------------------------------------------------
    def fail_next(self, operation: str, *, code: str = "Server.DK0051", text: str = "Service niet beschikbaar",
                  times: int = 1) -> None:
        """Answer the next `times` calls of `operation` with a SOAP fault; nothing is applied."""
        with self._lock:
            self._trouble.setdefault(operation, []).append(_Trouble("fault", code, text, times))

    def reject_next(self, operation: str, *, code: str, text: str | None = None, times: int = 1) -> None:
        """Answer the next `times` calls with requestGoedgekeurd=false and this foutmelding."""
        with self._lock:
            self._trouble.setdefault(operation, []).append(
                _Trouble("reject", code, text or TEXTS.get(code, "Fout"), times))

    def drop_next(self, operation: str, *, times: int = 1) -> None:
        """Apply the next `times` calls, then cut the connection before answering."""
        with self._lock:
            self._trouble.setdefault(operation, []).append(_Trouble("drop", "", "", times))

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.service == BEHEREN.name]

    def unit_codes(self, own_key: str) -> list[str]:
        """Every unit (visible or not, not deleted) carrying this own key: never more than one."""
        with self._lock:
            return [u.code for u in self._units.values() if u.own_key == own_key and not u.deleting()]

    def unit_element(self, code: str, *, visible_only: bool = False) -> etree._Element | None:
        """The unit's latest version (Beheren shape), or the latest visible one."""
        with self._lock:
            unit = self._units.get(code)
            if unit is None:
                return None
            return unit.current(self.clock()) if visible_only else unit.versions[-1].element

    def units_created(self) -> dict[str, str | None]:
        """Every unit RIO ever issued a code for (deleted ones too): code → own key. For duplicate checks."""
        with self._lock:
            return {u.code: u.own_key for u in self._units.values()}

    def offering_codes(self) -> list[str]:
        with self._lock:
            return [o.code for o in self._offerings.values() if not o.deleting()]

    def is_known_unit_code(self, code: str) -> bool:
        """Whether RIO shows a unit with this code now (what the register asks RIO)."""
        with self._lock:
            unit = self._units.get(code)
            return unit is not None and unit.visible(self.clock())

    def summary(self) -> str:
        with self._lock:
            now = self.clock()
            units = sum(1 for u in self._units.values() if u.visible(now))
            offerings = sum(1 for o in self._offerings.values() if o.visible(now))
            return f"{units} units, {offerings} offerings visible; {len(self.writes())} write requests"

    # HTTP -------------------------------------------------------------------------------------------
    def handle(self, request: SimRequest) -> SimResponse:
        with self._lock:
            return self._handle(request)

    def _handle(self, request: SimRequest) -> SimResponse:
        service = {f"/{s.path}": s for s in (BEHEREN, RAADPLEGEN)}.get(request.path.rstrip("/"))
        if service is None:
            return SimResponse(404, b"Not Found", {"Content-Type": "text/plain"})
        if request.method != "POST":
            return SimResponse(405, b"Method Not Allowed", {"Content-Type": "text/plain", "Allow": "POST"})
        if not (request.headers.get("Content-Type") or "").lower().startswith("text/xml"):
            return SimResponse(415, b"SOAP 1.1 wants text/xml", {"Content-Type": "text/plain"})
        try:
            return self._soap(service, request)
        except _Fault as fault:
            return self._fault(fault)

    def _soap(self, service: Service, request: SimRequest) -> SimResponse:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            envelope = etree.fromstring(request.body, parser)
        except etree.XMLSyntaxError as exc:
            raise _Fault("Client.DK0004", f"Bericht is geen XML: {exc}") from None
        header = envelope.find(f"{{{SOAP_ENV}}}Header")
        body = envelope.find(f"{{{SOAP_ENV}}}Body")
        if envelope.tag != f"{{{SOAP_ENV}}}Envelope" or header is None or body is None:
            raise _Fault("Client.DK0004", "Bericht is geen SOAP 1.1 envelope met Header en Body")

        def wsa(name: str) -> etree._Element:
            found = header.findall(f"{{{WSA}}}{name}")
            if len(found) != 1 or not "".join(found[0].itertext()).strip():
                raise _Fault("Client.DK0005", f"WS-Addressing header wsa:{name} ontbreekt of komt vaker voor")
            return found[0]

        action, sender, message_id, to = wsa("Action"), wsa("From"), wsa("MessageID"), wsa("To")
        action_text = (action.text or "").strip()
        soap_action = (request.headers.get("SOAPAction") or "").strip().strip('"')
        if action_text != soap_action:
            raise _Fault("Client.DK0005", "wsa:Action wijkt af van de HTTP SOAPAction")
        if not action_text.startswith(service.contract_ns + "/"):
            raise _Fault("Client.DK0005", f"wsa:Action hoort niet bij {service.path}")
        operation = action_text[len(service.contract_ns) + 1:]
        self.calls.append(Call(operation, service.name, bytes(request.body), soap_action))
        if operation not in self._operations:
            raise _Fault("Client.DK0005", f"Onbekende operatie {operation}")
        if not (to.text or "").strip().endswith(f"/{service.path}?oin={self.oin}"):
            raise _Fault("Client.DK0005", f"wsa:To moet eindigen op /{service.path}?oin={self.oin}")
        address = (sender.findtext(f"{{{WSA}}}Address") or "").strip()
        if not address.startswith(f"{WSA_ANONYMOUS}?oin="):
            raise _Fault("Client.DK0005", "wsa:From/wsa:Address moet anonymous?oin=<OIN> zijn")
        sender_oin = address.split("?oin=", 1)[1]
        msg_id = (message_id.text or "").strip()
        if msg_id in self._message_ids:
            raise _Fault("Client.DK0005", "wsa:MessageID is al eerder gebruikt")

        if self.require_signature:
            parts = [action, sender, message_id, to, body]
            try:
                verify_signature(envelope, now=self.clock(), required=parts)
            except SignatureError as exc:
                raise _Fault("Client.EK0031", f"Ondertekening ontbreekt of is ongeldig: {exc}") from None

        children = [c for c in body if isinstance(c.tag, str)]
        if len(children) != 1 or children[0].tag != f"{{{service.schema_ns}}}{operation}_request":
            raise _Fault("Client.DK0004", f"De Body bevat geen {operation}_request")
        message = children[0]
        schema = self._schemas[service.name]
        if not schema.validate(etree.ElementTree(etree.fromstring(etree.tostring(message)))):
            raise _Fault("Client.DK0004", f"Bericht is niet XSD-conform: {schema.error_log.last_error}")
        self._message_ids.add(msg_id)

        doc_id = self._text(message, "identificatiecodeBedrijfsdocument")
        if doc_id in self._document_ids:
            raise _Fault("Client", "identificatiecodeBedrijfsdocument is al eerder gebruikt")
        self._document_ids.add(doc_id)
        if self._text(message, "verzendendeInstantie") != sender_oin:
            raise _Fault("Client.DK0005", "verzendendeInstantie wijkt af van de OIN in wsa:From")

        answer = _Answer(operation)
        trouble = self._take_trouble(operation)
        drop = False
        if trouble is not None and trouble.kind == "fault":
            raise _Fault(trouble.code, trouble.text)
        if self._text(message, "ontvangendeInstantie") != self.oin or (
                self.authorised_senders is not None and sender_oin not in self.authorised_senders):
            answer.reject("AUT401", ("verzendendeInstantie", sender_oin))
        elif trouble is not None and trouble.kind == "reject":
            answer.reject(trouble.code, ("operatie", operation), text=trouble.text)
        else:
            drop = trouble is not None and trouble.kind == "drop"
            self._operations[operation](message, answer)
        if drop:
            return SimResponse(200, b"", drop_connection=True)
        return self._respond(service, operation, message, answer, sender_oin, msg_id)

    def _take_trouble(self, operation: str) -> _Trouble | None:
        queue = self._trouble.get(operation)
        if not queue:
            return None
        trouble = queue[0]
        trouble.times -= 1
        if trouble.times <= 0:
            queue.pop(0)
        return trouble

    # operations -------------------------------------------------------------------------------------
    @staticmethod
    def _text(parent: etree._Element, name: str) -> str:
        namespace = etree.QName(parent).namespace
        return (parent.findtext(f"{{{namespace}}}{name}") or "").strip()

    @staticmethod
    def _kenmerk(parent: etree._Element, name: str) -> str | None:
        namespace = etree.QName(parent).namespace
        for kenmerk in parent.iterfind(f"{{{namespace}}}kenmerken"):
            if (kenmerk.findtext(f"{{{namespace}}}kenmerknaam") or "").strip() == name:
                for value in kenmerk:
                    if etree.QName(value).localname.startswith("kenmerkwaarde"):
                        return (value.text or "").strip()
        return None

    def _issue_code(self) -> str:
        while True:
            code = f"{self.code_prefix}O{self._next_code % 10000:04d}"
            self._next_code += 1
            if code not in self._units:
                return code

    def _live_units_with_key(self, own_key: str) -> list[_Object]:
        now = self.clock()
        return [u for u in self._units.values() if u.own_key == own_key and u.deleted_at > now]

    def _aanleveren_opleidingseenheid(self, message: etree._Element, answer: _Answer) -> None:
        unit = next(c for c in message if etree.QName(c).localname in ("hoOnderwijseenheid", "particuliereOpleiding"))
        kind = etree.QName(unit).localname
        own_key = self._kenmerk(unit, "eigenOpleidingseenheidSleutel")
        if not own_key:
            answer.reject("K01010", ("kenmerknaam", "eigenOpleidingseenheidSleutel"))
            return
        code = self._text(unit, "opleidingseenheidcode") or None
        holders = self._live_units_with_key(own_key)
        now = self.clock()
        if code is None:
            if holders:
                answer.reject("P01081", ("eigenOpleidingseenheidSleutel", own_key))
                return
            code = self._issue_code()
            self._units[code] = _Object(code, own_key, kind, [_Version(_copy(unit), now + self.visibility_delay)],
                                        visible_at=now + self.visibility_delay)
        else:
            existing = self._units.get(code)
            if existing is None or existing.deleting():
                answer.reject("SIM001", ("opleidingseenheidcode", code))
                return
            if any(h.code != code for h in holders):
                answer.reject("P01081", ("eigenOpleidingseenheidSleutel", own_key))
                return
            if existing.kind != kind:
                answer.reject("SIM002", ("opleidingseenheidcode", code))
                return
            existing.own_key = own_key
            existing.versions.append(_Version(_copy(unit), now + self.visibility_delay))
        answer.add("opleidingseenheidcode", code)

    def _aanleveren_aangeboden_opleiding(self, message: etree._Element, answer: _Answer) -> None:
        offering = next(c for c in message if etree.QName(c).localname in _OFFERING_FOR_UNIT)
        kind = etree.QName(offering).localname
        code = self._text(offering, "aangebodenOpleidingCode").lower()
        unit_code = self._text(offering, "opleidingseenheidSleutel")
        location = self._text(offering, "onderwijslocatiecode")
        own_key = self._kenmerk(offering, "eigenAangebodenOpleidingSleutel")
        now = self.clock()
        unit = self._units.get(unit_code)
        if unit is None or not unit.visible(now):
            answer.reject("SIM003", ("opleidingseenheidcode", unit_code))
            return
        if unit.kind != _OFFERING_FOR_UNIT[kind]:
            answer.reject("SIM004", ("aangebodenOpleidingCode", code))
            return
        if location and self.known_locations is not None and location not in self.known_locations:
            answer.reject("A01060", ("onderwijslocatiecode", location))
            return
        if own_key and any(o.own_key == own_key and o.code != code and o.deleted_at > now
                           for o in self._offerings.values()):
            answer.reject("A01160", ("eigenAangebodenOpleidingSleutel", own_key))
            return
        existing = self._offerings.get(code)
        version = _Version(_copy(offering), now + self.visibility_delay)
        if existing is None or existing.deleted_at <= now:
            self._offerings[code] = _Object(code, own_key, kind, [version], visible_at=version.visible_at,
                                            unit_code=unit_code)
        elif existing.deleting():
            answer.reject("A01020", ("aangebodenOpleidingCode", code))
        else:
            existing.own_key, existing.unit_code = own_key, unit_code
            existing.versions.append(version)

    def _verwijderen_aangeboden_opleiding(self, message: etree._Element, answer: _Answer) -> None:
        code = self._text(message, "aangebodenOpleidingCode").lower()
        offering = self._offerings.get(code)
        if offering is None or offering.deleting():
            answer.reject("A01020", ("aangebodenOpleidingCode", code))
            return
        offering.deleted_at = max(self.clock() + self.visibility_delay, offering.visible_at)

    def _verwijderen_opleidingseenheid(self, message: etree._Element, answer: _Answer) -> None:
        code = self._text(message, "opleidingseenheidcode")
        unit = self._units.get(code)
        if unit is None or unit.deleting():
            answer.reject("SIM001", ("opleidingseenheidcode", code))
            return
        now = self.clock()
        if any(o.unit_code == code and o.deleted_at > now for o in self._offerings.values()):
            answer.reject("P01810", ("opleidingseenheidcode", code))
            return
        unit.deleted_at = max(now + self.visibility_delay, unit.visible_at)

    def _opvragen_rio_identificatiecode(self, message: etree._Element, answer: _Answer) -> None:
        now = self.clock()
        unit_key = self._text(message, "eigenOpleidingseenheidSleutel")
        if unit_key:
            found = [u for u in self._units.values() if u.own_key == unit_key and u.visible(now)]
            if found:
                answer.add("opleidingseenheidcode", found[0].code)
            else:
                answer.reject("A01161", ("eigenOpleidingseenheidSleutel", unit_key))
            return
        offering_key = self._text(message, "eigenAangebodenOpleidingSleutel")
        offers = [o for o in self._offerings.values() if o.own_key == offering_key and o.visible(now)]
        if offers:
            answer.add("aangebodenOpleidingCode", offers[0].code)
        else:
            answer.reject("A01161", ("eigenAangebodenOpleidingSleutel", offering_key))

    def _opvragen_opleidingseenheid(self, message: etree._Element, answer: _Answer) -> None:
        code = self._text(message, "opleidingseenheidcode")
        now = self.clock()
        unit = self._units.get(code)
        current = unit.current(now) if unit is not None and unit.visible(now) else None
        if unit is None or current is None:
            answer.reject("SIM001", ("opleidingseenheidcode", code))
            return
        answer.element = _raadplegen_unit(current, code, self.owner)

    # answers ----------------------------------------------------------------------------------------
    def _respond(self, service: Service, operation: str, message: etree._Element, answer: _Answer,
                 sender_oin: str, relates_to: str) -> SimResponse:
        envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"SOAP-ENV": SOAP_ENV})
        header = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Header")
        wsa_ns = {"wsa": WSA}
        etree.SubElement(header, f"{{{WSA}}}To", nsmap=wsa_ns).text = f"{WSA_ANONYMOUS}?oin={sender_oin}"
        etree.SubElement(header, f"{{{WSA}}}Action", nsmap=wsa_ns).text = f"{service.contract_ns}/{operation}"
        etree.SubElement(header, f"{{{WSA}}}MessageID", nsmap=wsa_ns).text = f"urn:uuid:{uuid.uuid4()}"
        etree.SubElement(header, f"{{{WSA}}}RelatesTo", nsmap=wsa_ns).text = relates_to
        sender = etree.SubElement(header, f"{{{WSA}}}From", nsmap=wsa_ns)
        etree.SubElement(sender, f"{{{WSA}}}Address").text = f"{WSA_ANONYMOUS}?oin={self.oin}"
        body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
        ns = service.schema_ns
        response = etree.SubElement(body, f"{{{ns}}}{operation}_response", nsmap={"ns2": ns})

        def add(name: str, text: str) -> etree._Element:
            child = etree.SubElement(response, f"{{{ns}}}{name}")
            child.text = text
            return child

        add("identificatiecodeBedrijfsdocument", self._text(message, "identificatiecodeBedrijfsdocument"))
        add("verzendendeInstantie", self.oin)
        add("ontvangendeInstantie", sender_oin)
        add("datumTijdBedrijfsdocument", self._text(message, "datumTijdBedrijfsdocument"))
        add("requestGoedgekeurd", "false" if answer.errors else "true")
        if not answer.errors:
            for name, text in answer.values:
                add(name, text)
            if answer.element is not None:
                response.append(answer.element)
        for code, (key_name, key_value), given in answer.errors:
            melding = etree.SubElement(response, f"{{{ns}}}foutmelding")
            etree.SubElement(melding, f"{{{ns}}}foutcode").text = code
            etree.SubElement(melding, f"{{{ns}}}fouttekst").text = (given or TEXTS.get(code, "Fout"))[:200]
            sleutel = etree.SubElement(melding, f"{{{ns}}}sleutelgegeven")
            etree.SubElement(sleutel, f"{{{ns}}}sleutelnaam").text = _elide(key_name)
            etree.SubElement(sleutel, f"{{{ns}}}sleutelwaarde").text = _elide(key_value or "-")
        return SimResponse.xml(200, etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
                               content_type="text/xml; charset=utf-8")

    @staticmethod
    def _fault(fault: _Fault) -> SimResponse:
        envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"SOAP-ENV": SOAP_ENV})
        body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
        element = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
        etree.SubElement(element, "faultcode").text = f"SOAP-ENV:{fault.code}"
        etree.SubElement(element, "faultstring").text = fault.text
        return SimResponse.xml(fault.status, etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"),
                               content_type="text/xml; charset=utf-8")


@dataclass
class _Answer:
    operation: str
    values: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, tuple[str, str], str | None]] = field(default_factory=list)
    element: etree._Element | None = None

    def add(self, name: str, text: str) -> None:
        self.values.append((name, text))

    def reject(self, code: str, key: tuple[str, str], *, text: str | None = None) -> None:
        self.errors.append((code, key, text))


def _copy(element: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(element))


_PERIOD_TAIL = ("waardedocumentsoort", "studielast", "studielasteenheid")


def _owner_kenmerk(period: etree._Element, owner: str) -> None:
    """RIO adds the unit's owner (onderwijsbestuur) as a kenmerk of each period it returns."""
    ns = RAADPLEGEN.schema_ns
    kenmerk = etree.SubElement(period, f"{{{ns}}}kenmerken")
    etree.SubElement(kenmerk, f"{{{ns}}}kenmerknaam").text = "eigenaar"
    etree.SubElement(kenmerk, f"{{{ns}}}kenmerkwaardeTekst").text = owner


def _raadplegen_unit(unit: etree._Element, code: str, owner: str) -> etree._Element:
    """A stored Beheren unit as Raadplegen returns it (another namespace, another order)."""
    source_ns = etree.QName(unit).namespace
    ns = RAADPLEGEN.schema_ns
    kind = etree.QName(unit).localname

    def children(parent: etree._Element, name: str) -> list[etree._Element]:
        return parent.findall(f"{{{source_ns}}}{name}")

    def moved(element: etree._Element) -> etree._Element:
        copy = etree.Element(f"{{{ns}}}{etree.QName(element).localname}")
        copy.text = element.text
        for child in element:
            copy.append(moved(child))
        return copy

    result = etree.Element(f"{{{ns}}}{kind}")
    etree.SubElement(result, f"{{{ns}}}opleidingseenheidcode").text = code
    etree.SubElement(result, f"{{{ns}}}herkomstOpleiding").text = "INSTELLING"
    for name in ("begindatum", "einddatum"):
        for child in children(unit, name):
            result.append(moved(child))
    for period in children(unit, f"{kind}Periode"):
        copy = etree.SubElement(result, f"{{{ns}}}{kind}Periode")
        owner_added = False
        for child in period:
            if not owner_added and etree.QName(child).localname in _PERIOD_TAIL:
                _owner_kenmerk(copy, owner)
                owner_added = True
            copy.append(moved(child))
        if not owner_added:
            _owner_kenmerk(copy, owner)
    for kenmerk in children(unit, "kenmerken"):
        result.append(moved(kenmerk))
    for isced in children(unit, "ISCED"):
        etree.SubElement(result, f"{{{ns}}}ISCED").text = str(int((isced.text or "0").strip()))
    for name in ("waardedocumentsoort", "niveau", "eqf", "nlqf"):
        for child in children(unit, name):
            result.append(moved(child))
    return result
