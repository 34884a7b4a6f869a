"""The WS-Security signature: checked by xmlsec1 and by the sandbox's verifier, against tampering,
against the digests in DUO-accepted recordings (Apache Santuario) and the SURF mapper's golden digest."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from mcsync.errors import ConfigError
from mcsync.sandbox.rio import SignatureError, verify_signature
from mcsync.targets.rio import signing
from mcsync.targets.rio.contract import BEHEREN, DS, EXC_C14N, RAADPLEGEN, SOAP_ENV, WSA, WSU, operation
from mcsync.targets.rio.envelope import build_envelope
from mcsync.targets.rio.messages import (
    AanleverenOpleidingseenheid,
    Bedrijfsdocument,
    OpvragenRioIdentificatiecode,
    plan,
)
from mcsync.targets.rio.signing import Credentials, Signer, digest

from .rio_helpers import ISSUER, PARSER, RECORDED, Pki, definition, make_pki

NOW = datetime(2026, 3, 2, 9, 30, 15, 250000, tzinfo=UTC)
INVALID_RECORDINGS = {"20-resolve__2-opvragen_rioIdentificatiecode.response.xml",
                      "6-upsert-program__6-aanleveren_aangebodenOpleiding.request.xml"}
RECORDINGS = sorted(RECORDED.glob("*.xml"))
XMLSEC1 = shutil.which("xmlsec1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def credentials(pki: Pki) -> Credentials:
    return Credentials.load(pki.client_cert, pki.client_key)


def signed_request(credentials: Credentials, *, raadplegen: bool = False) -> bytes:
    if raadplegen:
        request = OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel=str(uuid.uuid4()))
    else:
        request = AanleverenOpleidingseenheid(plan(definition(), ISSUER).unit)
    op = operation(request.operation)
    service = RAADPLEGEN if raadplegen else BEHEREN
    body = request.body(Bedrijfsdocument(str(uuid.uuid4()), ISSUER.oin or "", "00000001800866472000", NOW))
    envelope = build_envelope(body, service=service, action=op.soap_action, message_id=str(uuid.uuid4()),
                              to=f"https://duo.nl/RIO/services/{service.path}?oin=00000001800866472000",
                              sender_oin=ISSUER.oin or "")
    return Signer(credentials).sign(envelope, now=NOW)


def xmlsec1(document: bytes, cert: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Debian's xmlsec1, told which elements carry IDs and given the signer's certificate."""
    if XMLSEC1 is None:
        pytest.fail("xmlsec1 is needed for the independent signature check: apt-get install -y xmlsec1")
    path = tmp_path / f"{uuid.uuid4()}.xml"
    path.write_bytes(document)
    args = [XMLSEC1, "--verify", "--pubkey-cert-pem", str(cert)]
    for node in (f"{WSA}:Action", f"{WSA}:From", f"{WSA}:MessageID", f"{WSA}:To", f"{WSU}:Timestamp",
                 f"{SOAP_ENV}:Body"):
        args += ["--id-attr:Id", node]
    return subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=30)


def _parts(document: etree._Element) -> dict[str, etree._Element]:
    return {e.get(f"{{{WSU}}}Id"): e for e in document.iter() if e.get(f"{{{WSU}}}Id")}


def _required(document: etree._Element) -> list[etree._Element]:
    header = document.find(f"{{{SOAP_ENV}}}Header")
    return [header.find(f"{{{WSA}}}{n}") for n in ("Action", "From", "MessageID", "To")] + \
        [document.find(f"{{{SOAP_ENV}}}Body")]


@pytest.mark.parametrize("raadplegen", [False, True], ids=["beheren", "raadplegen"])
def test_xmlsec1_verifies_our_signature(credentials: Credentials, pki: Pki, tmp_path: Path, raadplegen: bool) -> None:
    document = signed_request(credentials, raadplegen=raadplegen)
    result = xmlsec1(document, pki.client_cert, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SignedInfo References (ok/all): 6/6" in result.stderr
    parsed = etree.fromstring(document, PARSER)
    verified = verify_signature(parsed, now=NOW, required=_required(parsed))
    assert verified.certificate.subject == credentials.certificate.subject
    assert {e.get(f"{{{WSU}}}Id") for e in verified.signed} == {
        "id-From", "id-To", "id-Action", "id-MessageID", "id-Body", "id-Timestamp"}


def _flip(text: str) -> str:
    index = next(i for i, c in enumerate(text) if c.isalnum())
    c = text[index]
    return text[:index] + ("1" if c != "1" else "2") + text[index + 1:]


@pytest.mark.parametrize("part", ["id-Action", "id-From", "id-MessageID", "id-To", "id-Body", "id-Timestamp"])
def test_changing_any_signed_part_breaks_verification(credentials: Credentials, pki: Pki, tmp_path: Path,
                                                      part: str) -> None:
    document = etree.fromstring(signed_request(credentials), PARSER)
    element = _parts(document)[part]
    leaf = next(e for e in element.iter() if e.text and e.text.strip())
    leaf.text = _flip(leaf.text)
    tampered = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
    result = xmlsec1(tampered, pki.client_cert, tmp_path)
    assert result.returncode != 0
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(etree.fromstring(tampered, PARSER), now=NOW)


def test_changing_the_signature_value_or_signed_info_breaks_verification(credentials: Credentials, pki: Pki,
                                                                         tmp_path: Path) -> None:
    for path in (f".//{{{DS}}}SignatureValue", f".//{{{DS}}}SignedInfo/{{{DS}}}Reference"):
        document = etree.fromstring(signed_request(credentials), PARSER)
        element = document.find(path)
        if element.tag.endswith("SignatureValue"):
            raw = bytearray(base64.b64decode(element.text))
            raw[10] ^= 1
            element.text = base64.b64encode(bytes(raw)).decode()
        else:
            value = element.find(f"{{{DS}}}DigestValue")
            raw = bytearray(base64.b64decode(value.text))
            raw[0] ^= 1
            value.text = base64.b64encode(bytes(raw)).decode()
        tampered = etree.tostring(document, xml_declaration=True, encoding="UTF-8")
        assert xmlsec1(tampered, pki.client_cert, tmp_path).returncode != 0
        with pytest.raises(SignatureError):
            verify_signature(etree.fromstring(tampered, PARSER), now=NOW)


def test_a_signature_without_a_required_part_is_refused(credentials: Credentials, monkeypatch) -> None:
    monkeypatch.setattr(signing, "SIGNED_PARTS", tuple(p for p in signing.SIGNED_PARTS if p[0] != "id-To"))
    document = etree.fromstring(signed_request(credentials), PARSER)
    verify_signature(document, now=NOW)                      # what is signed verifies ...
    with pytest.raises(SignatureError, match="To is not signed"):
        verify_signature(document, now=NOW, required=_required(document))   # ... but To is not signed


def test_timestamp_is_checked(credentials: Credentials) -> None:
    document = etree.fromstring(signed_request(credentials), PARSER)
    verify_signature(document, now=NOW + timedelta(minutes=9))
    with pytest.raises(SignatureError, match="expired"):
        verify_signature(document, now=NOW + timedelta(minutes=16))
    with pytest.raises(SignatureError, match="future"):
        verify_signature(document, now=NOW - timedelta(minutes=6))
    created = document.findtext(f".//{{{WSU}}}Created")
    assert created == "2026-03-02T09:30:15.250Z"
    assert document.findtext(f".//{{{WSU}}}Expires") == "2026-03-02T09:40:15.250Z"


def test_golden_digest_of_the_surf_mapper() -> None:
    """rio_test.clj `canonicalization-and-digestion`: a wsa:Action in a Raadplegen envelope."""
    contract = RAADPLEGEN.contract_ns
    expected = "u95macy7enN9aTCyQKuQqTIsYj/8G9vv8o6EBV1OZjs="
    literal = (f'<wsa:Action xmlns:duo="{RAADPLEGEN.schema_ns}" xmlns:soapenv="{SOAP_ENV}" xmlns:wsa="{WSA}" '
               f'xmlns:wsu="{WSU}" wsu:Id="id-629A9B11E252AF76D61657184053301145">'
               f"{contract}/opvragen_aangebodenOpleidingenVanOrganisatie</wsa:Action>")
    assert base64.b64encode(hashlib.sha256(literal.encode()).digest()).decode() == expected
    envelope = etree.fromstring(
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:duo="{RAADPLEGEN.schema_ns}" xmlns:wsu="{WSU}">'
        f'<soapenv:Header xmlns:wsa="{WSA}"><wsa:Action wsu:Id="id-629A9B11E252AF76D61657184053301145">'
        f"{contract}/opvragen_aangebodenOpleidingenVanOrganisatie</wsa:Action></soapenv:Header>"
        f"<soapenv:Body/></soapenv:Envelope>".encode(), PARSER)
    action = envelope.find(f".//{{{WSA}}}Action")
    assert signing.exc_c14n(action, ("duo", "soapenv")) == literal.encode()
    assert digest(action, ("duo", "soapenv")) == expected


@pytest.mark.parametrize("path", [p for p in RECORDINGS if p.name.endswith(".request.xml")
                                  and p.name not in INVALID_RECORDINGS], ids=lambda p: p.name)
def test_our_digests_equal_those_in_requests_duo_accepted(path: Path) -> None:
    """The recorded requests were signed by Apache Santuario: an independent c14n + SHA-256."""
    document = etree.fromstring(path.read_bytes(), PARSER)
    parts = _parts(document)
    prefixes = dict(signing.SIGNED_PARTS)
    references = document.findall(f".//{{{DS}}}SignedInfo/{{{DS}}}Reference")
    assert [r.get("URI")[1:] for r in references] == [p for p, _ in signing.SIGNED_PARTS]
    for reference in references:
        ident = reference.get("URI")[1:]
        listed = reference.find(f".//{{{EXC_C14N}}}InclusiveNamespaces").get("PrefixList").split()
        assert tuple(listed) == prefixes[ident]
        assert digest(parts[ident], prefixes[ident]) == reference.findtext(f"{{{DS}}}DigestValue"), ident


def _skeleton(element: etree._Element) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"{e.prefix}:{etree.QName(e).localname}", tuple(sorted(etree.QName(a).localname for a in e.attrib)))
            for e in element.iter() if isinstance(e.tag, str)]


def test_our_envelope_has_the_shape_duo_accepted(credentials: Credentials) -> None:
    recorded = etree.fromstring(
        (RECORDED / "1-upsert-eduspec__3-aanleveren_opleidingseenheid.request.xml").read_bytes(), PARSER)
    ours = etree.fromstring(signed_request(credentials), PARSER)
    assert ours.nsmap == recorded.nsmap
    header, recorded_header = ours.find(f"{{{SOAP_ENV}}}Header"), recorded.find(f"{{{SOAP_ENV}}}Header")
    assert _skeleton(header) == _skeleton(recorded_header)
    assert ours.find(f"{{{SOAP_ENV}}}Body").attrib == recorded.find(f"{{{SOAP_ENV}}}Body").attrib
    assert ours.find(f".//{{{WSA}}}To").text == recorded.find(f".//{{{WSA}}}To").text
    assert ours.find(f".//{{{WSA}}}Action").text == recorded.find(f".//{{{WSA}}}Action").text


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_sandbox_verifier_on_recorded_messages(path: Path) -> None:
    document = etree.fromstring(path.read_bytes(), PARSER)
    created = datetime.fromisoformat(document.findtext(f".//{{{WSU}}}Created"))
    if path.name in INVALID_RECORDINGS:
        with pytest.raises(SignatureError, match="does not match"):
            verify_signature(document, now=created)
        return
    verified = verify_signature(document, now=created)
    if path.name.endswith(".request.xml"):
        assert "rio.test.surfeduhub.surf.nl" in verified.certificate.subject.rfc4514_string()
        verify_signature(document, now=created, required=_required(document))
    else:
        assert "vt-webservice.duo.nl" in verified.certificate.subject.rfc4514_string()
    # one byte changed in each signed part: refused
    for part in verified.signed:
        copy = etree.fromstring(path.read_bytes(), PARSER)
        ident = part.get(f"{{{WSU}}}Id")
        target = _parts(copy)[ident]
        leaf = next(e for e in target.iter() if e.text and e.text.strip())
        leaf.text = _flip(leaf.text)
        with pytest.raises(SignatureError):
            verify_signature(copy, now=None)


def test_the_edited_recording_verifies_once_its_code_is_restored() -> None:
    """README: 20-resolve's response had A01161 changed to A09999 after DUO signed it."""
    text = (RECORDED / "20-resolve__2-opvragen_rioIdentificatiecode.response.xml").read_bytes()
    restored = etree.fromstring(text.replace(b"A09999", b"A01161"), PARSER)
    verify_signature(restored, now=None)


def test_xmlsec1_agrees_on_the_recorded_requests(tmp_path: Path) -> None:
    for path in RECORDINGS:
        if not path.name.endswith(".request.xml"):
            continue
        document = etree.fromstring(path.read_bytes(), PARSER)
        token = document.findtext(".//{http://docs.oasis-open.org/wss/2004/01/"
                                  "oasis-200401-wss-wssecurity-secext-1.0.xsd}BinarySecurityToken")
        cert = tmp_path / f"{path.stem}.pem"
        cert.write_text("-----BEGIN CERTIFICATE-----\n" + token + "\n-----END CERTIFICATE-----\n")
        result = xmlsec1(path.read_bytes(), cert, tmp_path)
        assert (result.returncode == 0) == (path.name not in INVALID_RECORDINGS), (path.name, result.stderr)


def test_credentials_must_match_and_never_show_the_key(pki: Pki, tmp_path: Path) -> None:
    credentials = Credentials.load(pki.client_cert, pki.client_key)
    assert "PRIVATE" not in repr(credentials) and "private_key" not in repr(credentials)
    assert credentials.not_after > datetime.now(UTC)
    with pytest.raises(ConfigError, match="does not belong"):
        Credentials.load(pki.other_cert, pki.client_key)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="not an RSA key"):
        Credentials.load(pki.client_cert, ec_key)
    with pytest.raises(ConfigError) as caught:
        Credentials.load(pki.client_cert, tmp_path / "missing.key")
    assert "missing.key" in str(caught.value)
