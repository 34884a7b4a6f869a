"""The DUO target over real HTTPS with mutual TLS on 127.0.0.1: a throw-away CA stands in for
PKIoverheid; the client certificate's subject serialNumber carries the OIN."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from mcsync.errors import TargetUnavailable
from mcsync.sandbox.base import SandboxServer
from mcsync.sandbox.duo import MOUNT, DuoRegisterSimulator
from mcsync.state import SqliteStateStore
from mcsync.targets.base import DeliveryState

from .conftest import make_record
from .duo_helpers import UNIT_CODE, Harness, asynctest, bsns, keys

OIN = "0000000700030GB00000"


class Pki:
    """A CA, a server certificate for 127.0.0.1, and client certificates on demand (files in `folder`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcsync test CA")])
        self.ca = self._sign(name, self.ca_key.public_key(), ca=True, issuer=name)
        self.ca_file = self._write("ca.pem", self.ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue("server", x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), server=True)

    def _sign(self, subject: x509.Name, public_key, *, ca: bool = False, issuer: x509.Name | None = None,
              server: bool = False) -> x509.Certificate:
        now = datetime.now(UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or self.ca.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        elif server:
            builder = (builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def issue(self, stem: str, subject: x509.Name, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(subject, key.public_key(), server=server)
        cert_file = self._write(f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_file = self._write(f"{stem}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_file.chmod(0o600)
        return cert_file, key_file

    def client(self, oin: str, stem: str = "client") -> tuple[Path, Path]:
        return self.issue(stem, x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hogeschool Zeeland"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, oin),
            x509.NameAttribute(NameOID.COMMON_NAME, "mcsync")]))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.ca_file)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki):
    sim = DuoRegisterSimulator(processing_delay=0, known_unit_codes={UNIT_CODE})
    with SandboxServer({MOUNT: sim}, tls=pki.server_context()) as running:
        yield running, sim


@asynctest
async def test_delivery_over_mutual_tls(server, pki, tmp_path, issuer) -> None:
    running, sim = server
    assert running.url.startswith("https://127.0.0.1:")
    cert_file, key_file = pki.client(OIN)
    h = Harness(SqliteStateStore(tmp_path / "s.db"), issuer, sim=sim, api_url=running.url + MOUNT, network=True,
                cert_file=cert_file, key_file=key_file, ca_file=pki.ca_file, sleep=asyncio.sleep)
    h.confirm_rio()
    records = [make_record(issuer, str(4410450 + i), bsn=SecretStr(b)) for i, b in enumerate(bsns(2))]
    h.plan(*records)
    await h.deliver()
    assert set(h.states().values()) == {DeliveryState.SYNCED}
    assert {rid for rid in sim.registrations} == set(keys(records))
    await h.aclose()
    h.store.close()


@asynctest
async def test_a_certificate_of_another_oin_is_refused_and_the_work_stays_queued(server, pki, tmp_path,
                                                                                  issuer) -> None:
    running, sim = server
    cert_file, key_file = pki.client("00000001234567890000", stem="other")
    h = Harness(SqliteStateStore(tmp_path / "s.db"), issuer, sim=sim, api_url=running.url + MOUNT, network=True,
                cert_file=cert_file, key_file=key_file, ca_file=pki.ca_file, sleep=asyncio.sleep)
    h.confirm_rio()
    [record] = [make_record(issuer, "4410460", bsn=SecretStr(bsns(1)[0]))]
    h.plan(record)
    with pytest.raises(TargetUnavailable, match="AUT001") as caught:
        await h.deliver()
    assert "cert_file" in str(caught.value)
    row = h.row(record)
    assert row.state is DeliveryState.PENDING and "AUT001" in row.note
    assert sim.deliveries_received == []
    await h.aclose()
    h.store.close()


@asynctest
async def test_the_register_is_only_trusted_through_the_configured_ca(server, pki, tmp_path, issuer) -> None:
    running, sim = server
    cert_file, key_file = pki.client(OIN, stem="client2")
    h = Harness(SqliteStateStore(tmp_path / "s.db"), issuer, sim=sim, api_url=running.url + MOUNT, network=True,
                cert_file=cert_file, key_file=key_file, sleep=asyncio.sleep, retry_attempts=1)   # no ca_file
    h.confirm_rio()
    [record] = [make_record(issuer, "4410470", bsn=SecretStr(bsns(1)[0]))]
    h.plan(record)
    with pytest.raises(TargetUnavailable):
        await h.deliver()
    assert h.row(record).state is DeliveryState.PENDING    # a failed handshake sent nothing
    assert sim.posts == 0
    await h.aclose()
    h.store.close()
