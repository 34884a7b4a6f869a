"""`mcsync doctor` against the sandbox on loopback, and against a register over mutual TLS with a
throw-away CA whose client certificates expire when the test says."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcsync.cli import main
from mcsync.config import load_config
from mcsync.doctor import Check, Doctor, Level
from mcsync.sandbox.base import SandboxServer
from mcsync.sandbox.duo import MOUNT, DuoRegisterSimulator

from .ops_helpers import deployed

OIN = "0000000700030GB00000"


def levels(out: str) -> dict[tuple[str, str], str]:
    """{(target, check): level} from doctor's lines."""
    found = {}
    for line in out.splitlines():
        level, target, check, *_ = line.split()
        found[(target, check)] = level
    return found


# ---------------------------------------------------------------------------------------- the sandbox
@pytest.fixture
def dep(tmp_path, monkeypatch):
    with deployed(tmp_path) as dep:
        dep.apply(monkeypatch)
        yield dep


def test_every_target_of_the_sandbox_is_reachable_and_accepts_us(dep, capsys):
    assert main(["--config", str(dep.config_path), "doctor"]) == 0
    out = capsys.readouterr().out
    assert levels(out) == {
        ("rio", "dns"): "OK", ("rio", "tcp"): "OK", ("rio", "clock"): "OK", ("rio", "certificate"): "OK",
        ("rio", "access"): "OK",
        ("edubadges", "dns"): "OK", ("edubadges", "tcp"): "OK", ("edubadges", "clock"): "OK",
        ("edubadges", "token"): "OK", ("edubadges", "access"): "OK",
        ("duo", "dns"): "OK", ("duo", "tcp"): "OK", ("duo", "clock"): "OK", ("duo", "access"): "OK"}
    assert "RIO answered (signed lookup accepted)" in out and "3 badge classes visible" in out
    assert dep.sandbox.write_requests() == 0                      # doctor only reads


def test_a_refused_client_secret_fails_the_token_line_without_showing_the_secret(dep, capsys, monkeypatch):
    monkeypatch.setenv("MCSYNC_TARGETS__EDUBADGES__CLIENT_SECRET", "wrong-secret-value")
    assert main(["--config", str(dep.config_path), "doctor"]) == 1
    captured = capsys.readouterr()
    found = levels(captured.out)
    assert found[("edubadges", "token")] == "FAIL" and ("edubadges", "access") not in found
    assert found[("duo", "access")] == "OK"                        # the other targets are still checked
    assert "refused client 'mcsync-demo'" in captured.out and "check client_id and client_secret" in captured.out
    assert "wrong-secret-value" not in captured.out + captured.err


@pytest.mark.parametrize(("ahead", "level"), [(timedelta(seconds=0), "OK"), (timedelta(seconds=40), "WARN"),
                                              (timedelta(minutes=10), "FAIL")])
def test_clock_skew_against_the_servers_date_header(dep, ahead, level):
    checks: list[Check] = []
    config = dep.config()
    doctor = Doctor(config, report=checks.append, clock=lambda: datetime.now(UTC) + ahead)
    asyncio.run(doctor.run())
    clock = {c.target: c for c in checks if c.name == "clock"}
    assert {c.level.value for c in clock.values()} == {level}, clock
    if level == "FAIL":
        # Date has whole seconds: the server's truncated second can add one
        assert re.search(r"\b60[01] s behind ours", clock["duo"].detail) and "timedatectl" in clock["duo"].detail


# ---------------------------------------------------------------------------------------- mutual TLS
class Pki:
    """A CA, a server certificate for 127.0.0.1, and client certificates valid for as long as asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor test CA")])
        now = datetime.now(UTC)
        ca = (x509.CertificateBuilder().subject_name(self.ca_name).issuer_name(self.ca_name)
              .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = self._write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue(
            "server", "127.0.0.1", valid=timedelta(days=200), usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def issue(self, stem: str, common_name: str, *, valid: timedelta, usage=ExtendedKeyUsageOID.CLIENT_AUTH,
              san: list[x509.GeneralName] | None = None, start: timedelta = timedelta(days=30)) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, OIN),
                                            x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - start).not_valid_after(now + valid)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        key_file = self._write(f"{stem}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_file.chmod(0o600)
        return self._write(f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)), key_file

    def server_context(self) -> ssl.SSLContext:
        """Mutual TLS, as the register asks: a client certificate from this CA is required."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_file))
        context.load_cert_chain(self.server_cert, self.server_key)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="module")
def register(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    with SandboxServer({MOUNT: DuoRegisterSimulator(processing_delay=0)}, tls=pki.server_context()) as running:
        yield pki, running.url + MOUNT


def doctor_of_the_register(tmp_path: Path, api_url: str, cert: Path, key: Path, ca: Path | None) -> list[Check]:
    path = tmp_path / "mcsync.toml"
    path.write_text(f'[institution]\nname = "Hogeschool Zeeland"\nbrin = "30GB"\noin = "{OIN}"\n'
                    f'onderwijsaanbiedercode = "110A133"\n[targets.duo]\napi_url = "{api_url}"\n'
                    f'cert_file = "{cert}"\nkey_file = "{key}"\n' + (f'ca_file = "{ca}"\n' if ca else ""))
    checks: list[Check] = []
    asyncio.run(Doctor(load_config(path), report=checks.append).run())
    return checks


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_client_certificate_that_expires_in_10_days_is_a_warning(register, tmp_path):
    pki, url = register
    cert, key = pki.issue("soon", "mcsync.hz.example", valid=timedelta(days=10, hours=1))
    checks = by_name(doctor_of_the_register(tmp_path, url, cert, key, pki.ca_file))
    assert checks["certificate"].level is Level.WARN
    assert "expires in 10 days" in checks["certificate"].detail and "renew" in checks["certificate"].detail
    assert "serialNumber=0000000700030GB00000" in checks["certificate"].detail
    assert checks["tls"].level is Level.OK and "server certificate verified" in checks["tls"].detail
    assert "(199 days)" in checks["tls"].detail
    assert checks["clock"].level is Level.OK
    assert checks["access"].level is Level.OK and "with our client certificate" in checks["access"].detail
    assert {c.level for c in checks.values()} == {Level.OK, Level.WARN}   # exit 0: a warning is no failure


def test_a_valid_certificate_is_ok_and_an_expired_one_fails(register, tmp_path):
    pki, url = register
    cert, key = pki.issue("fine", "mcsync.hz.example", valid=timedelta(days=300))
    assert by_name(doctor_of_the_register(tmp_path, url, cert, key, pki.ca_file))["certificate"].level is Level.OK
    cert, key = pki.issue("old", "mcsync.hz.example", valid=-timedelta(days=2))
    checks = by_name(doctor_of_the_register(tmp_path, url, cert, key, pki.ca_file))
    assert checks["certificate"].level is Level.FAIL and "expired on" in checks["certificate"].detail
    other_cert, _ = pki.issue("other", "someone else", valid=timedelta(days=300))
    checks = by_name(doctor_of_the_register(tmp_path, url, other_cert, key, pki.ca_file))
    assert checks["certificate"].level is Level.FAIL and "do not load as a pair" in checks["certificate"].detail


def test_a_server_outside_the_trust_anchor_fails_tls_and_nothing_further_is_tried(register, tmp_path):
    pki, url = register
    cert, key = pki.issue("fine", "mcsync.hz.example", valid=timedelta(days=300))
    checks = by_name(doctor_of_the_register(tmp_path, url, cert, key, ca=None))   # the system store
    assert checks["tls"].level is Level.FAIL and "not trusted" in checks["tls"].detail
    assert "ca_file" in checks["tls"].detail
    assert "clock" not in checks and "access" not in checks
