"""Shared pieces of the RIO tests: throw-away PKI, a fake clock, definitions, DUO's schemas, a mini engine."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree

from mcsync.record import Issuer, MicrocredentialDefinition
from mcsync.state.sqlite import SqliteStateStore
from mcsync.targets.base import TargetContext, WorkItem, catalogue_key
from mcsync.targets.rio import RioSettings, RioTarget

#: DUO's own files, read from ../shared (never copied into the project).
REFERENCE = Path(__file__).parents[1] / ".." / "shared" / "reference" / "rio"
RECORDED = REFERENCE / "recorded"
BEHEREN_NS = "http://duo.nl/schema/DUO_RIO_Beheren_OnderwijsOrganisatie_V4"
RAADPLEGEN_NS = "http://duo.nl/schema/DUO_RIO_Raadplegen_OnderwijsOrganisatie_V4"
SENDER_OIN = "0000000700030GB00000"
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@functools.cache
def duo_schema(namespace: str) -> etree.XMLSchema:
    name = "Beheren" if namespace == BEHEREN_NS else "Raadplegen"
    return etree.XMLSchema(etree.parse(str(REFERENCE / f"DUO_RIO_{name}_OnderwijsOrganisatie_V4.xsd")))


def duo_errors(element: etree._Element) -> list[str]:
    """Why `element` (a request or response element) is not valid against DUO's own XSD."""
    schema = duo_schema(etree.QName(element).namespace)
    document = etree.ElementTree(etree.fromstring(etree.tostring(element), PARSER))
    if schema.validate(document):
        return []
    return [str(e) for e in schema.error_log]


def body_of(envelope: bytes) -> etree._Element:
    root = etree.fromstring(envelope, PARSER)
    body = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    assert body is not None
    return body[0]


# --- PKI -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path      # a second client identity (not the one the key belongs to)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a PKIoverheid-like client certificate (OIN)."""
    now = datetime.now(UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcsync test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=400))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(name: x509.Name, key: rsa.RSAPrivateKey, usage: x509.ObjectIdentifier,
             san: list[x509.GeneralName]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=400))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    server_key, client_key, other_key = _key(), _key(), _key()
    server = leaf(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), server_key,
                  ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcsync.hz.example"),
                             x509.NameAttribute(NameOID.SERIAL_NUMBER, SENDER_OIN)])
    client = leaf(client_name, client_key, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    other = leaf(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")]), other_key,
                 ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    (folder / "other.pem").write_bytes(other.public_bytes(pem))
    return Pki(folder / "ca.pem", folder / "server.pem", _write_key(folder / "server.key", server_key),
               folder / "client.pem", _write_key(folder / "client.key", client_key), folder / "other.pem")


def server_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.load_verify_locations(str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# --- time --------------------------------------------------------------------------------------------

class FakeClock:
    """Wall time for the target and the simulator; `sleep` advances it instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime.now(UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


# --- definitions and the target ----------------------------------------------------------------------

ISSUER = Issuer(name="Hogeschool Zeeland", country="NL", brin="30GB", oin=SENDER_OIN,
                onderwijsaanbiedercode="110A133")


def definition(code: str = "MC-DATA01", **changes: Any) -> MicrocredentialDefinition:
    data: dict[str, Any] = dict(
        code=code,
        title={"nl": "Data-analyse met Python", "en": "Data analysis with Python"},
        description={"nl": "Microcredential voor professionals die bedrijfsdata analyseren."},
        learning_outcomes=[{"nl": "Past Python en pandas toe om bedrijfsdata te analyseren."}],
        ects=Decimal(5), eqf=6, nlqf="6", assessment_type="written_exam", participation="blended",
        quality_assurance={"name": "Kwaliteitskader Microcredentials"}, language="nl", isced="0613",
        start_date=date(2025, 2, 3), further_info_url="https://example.org/mc/data-python",
        rio={"kind": "hoOnderwijseenheid"})
    data.update(changes)
    return MicrocredentialDefinition.model_validate(data)


def settings(pki: Pki, **changes: Any) -> RioSettings:
    data: dict[str, Any] = dict(
        beheren_url="https://rio.test/rio/beheren4.0", raadplegen_url="https://rio.test/rio/raadplegen4.0",
        cert_file=pki.client_cert, key_file=pki.client_key, ca_file=pki.ca, confirm_timeout=60.0,
        poll_intervals=[1.0, 2.0, 5.0], call_attempts=3, max_attempts=4)
    data.update(changes)
    return RioSettings.model_validate(data)


async def sync(target: RioTarget, store: SqliteStateStore,
               definitions: Mapping[str, MicrocredentialDefinition | None]) -> None:
    """What the engine does for a catalogue target: desired hashes, then deliver the due rows."""
    store.set_desired("rio", [(catalogue_key(code), target.desired(d) if d is not None else None)
                              for code, d in definitions.items()])
    by_key = {catalogue_key(code): d for code, d in definitions.items()}
    later = datetime.now(UTC) + timedelta(days=1)  # include deferred rows
    items = [WorkItem(key=row.key, state=row.state, desired_hash=row.desired_hash,
                      delivered_hash=row.delivered_hash, attempts=row.attempts, remote=row.remote,
                      definition=by_key.get(row.key), note=row.note)
             for row in store.work("rio", later)]
    if items:
        await target.deliver(items, store.ledger("rio"))


def context(**changes: Any) -> TargetContext:
    return TargetContext(issuer=changes.pop("issuer", ISSUER), **changes)
