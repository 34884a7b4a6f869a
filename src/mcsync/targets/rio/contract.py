"""The RIO contract as mcsync ships it: namespaces, services, operations and schema checks.

DUO publishes two SOAP 1.1 document/literal services, "Beheren" (write) and "Raadplegen" (read),
both version 4 (rio.md §1). mcsync carries its own WSDL/XSD for the subset it uses, in `schema/`.
The operation table (which service, which SOAPAction, which request and response element) is read
from those WSDLs with zeep, so the SOAPAction a message goes out with is the one the contract file
states, not a string typed somewhere in the code. Request bodies are checked against the XSDs with
lxml before they are signed and sent (as the SURF mapper does): a body the schema rejects is
reported and never sent.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import zeep
import zeep.transports
from lxml import etree

SCHEMA_DIR = Path(__file__).with_name("schema")

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
BASE64 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"

#: DUO's own OIN, the default `ontvangendeInstantie` and `?oin=` of wsa:To.
DUO_OIN = "00000001800866472000"


@dataclass(frozen=True)
class Service:
    """One of DUO's two RIO services."""

    name: str             # "Beheren" | "Raadplegen"
    path: str             # last path segment of the endpoint and of wsa:To, e.g. "beheren4.0"
    contract_ns: str      # WSDL target namespace, prefix of every SOAPAction
    schema_ns: str        # namespace of the body elements

    @property
    def wsdl(self) -> Path:
        return SCHEMA_DIR / f"{self.name.lower()}.wsdl"

    @property
    def xsd(self) -> Path:
        return SCHEMA_DIR / f"{self.name.lower()}.xsd"


BEHEREN = Service(
    "Beheren", "beheren4.0",
    "http://duo.nl/contract/DUO_RIO_Beheren_OnderwijsOrganisatie_V4",
    "http://duo.nl/schema/DUO_RIO_Beheren_OnderwijsOrganisatie_V4")
RAADPLEGEN = Service(
    "Raadplegen", "raadplegen4.0",
    "http://duo.nl/contract/DUO_RIO_Raadplegen_OnderwijsOrganisatie_V4",
    "http://duo.nl/schema/DUO_RIO_Raadplegen_OnderwijsOrganisatie_V4")
SERVICES = (BEHEREN, RAADPLEGEN)


@dataclass(frozen=True)
class Operation:
    name: str
    service: Service
    soap_action: str
    request: str          # Clark notation: "{ns}name_request"
    response: str

    @property
    def writes(self) -> bool:
        """Whether the call may change RIO (everything on Beheren does)."""
        return self.service is BEHEREN


def _load_wsdl(service: Service) -> dict[str, Operation]:
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    client = zeep.Client(str(service.wsdl), settings=settings, transport=zeep.transports.Transport())
    found: dict[str, Operation] = {}
    for wsdl_service in client.wsdl.services.values():
        for port in wsdl_service.ports.values():
            for name, op in port.binding.all().items():
                found[name] = Operation(name, service, op.soapaction, op.input.body.qname.text,
                                        op.output.body.qname.text)
    return found


@functools.cache
def operations() -> dict[str, Operation]:
    """Every operation mcsync may call, read from its own WSDLs."""
    table: dict[str, Operation] = {}
    for service in SERVICES:
        table.update(_load_wsdl(service))
    return table


def operation(name: str) -> Operation:
    try:
        return operations()[name]
    except KeyError:
        raise KeyError(f"RIO operation {name!r} is not in mcsync's WSDL "
                       f"(known: {', '.join(sorted(operations()))})") from None


def service_for(path: str) -> Service | None:
    """The service served at an endpoint path ending in `beheren4.0` or `raadplegen4.0`."""
    for service in SERVICES:
        if path.rstrip("/").endswith("/" + service.path) or path.strip("/") == service.path:
            return service
    return None


def safe_parser() -> etree.XMLParser:
    """The parser for XML from outside: no entities, no DTD, no network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_blank_text=False)


_VALIDATING = threading.Lock()  # an lxml XMLSchema must not be used by two threads at once


@functools.cache
def schema(service: Service) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(service.xsd), safe_parser()))


def schema_errors(body: etree._Element, service: Service) -> list[str]:
    """Why `body` (one request or response element) does not conform; empty when it does."""
    document = etree.ElementTree(etree.fromstring(etree.tostring(body), safe_parser()))
    checker = schema(service)
    with _VALIDATING:
        if checker.validate(document):
            return []
        return [f"line {e.line}: {e.message}" for e in checker.error_log]
