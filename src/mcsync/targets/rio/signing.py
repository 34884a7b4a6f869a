"""The WS-Security signature DUO requires, written with lxml exclusive c14n and `cryptography`.

zeep's stock signer covers only Body and Timestamp; DUO wants each WS-Addressing header signed on
its own (rio.md §2, PvE §6.4.8). This signer produces what DUO accepted from the SURF mapper
(recorded exchanges), in the same layout:

    <wsse:Security>
      <wsse:BinarySecurityToken wsu:Id="X509-<uuid>"> the certificate (DER, base64)
      <ds:Signature>
        <ds:SignedInfo>  exc-c14n with PrefixList "wsa duo soapenv"; rsa-sha256
          one ds:Reference per signed part, each an exc-c14n transform with its own PrefixList
          and a SHA-256 digest:
            #id-From #id-To #id-Action #id-MessageID   PrefixList "duo soapenv"
            #id-Body                                   PrefixList "duo"
            #id-Timestamp                              PrefixList "wsse wsa duo soapenv"
        <ds:SignatureValue> RSA PKCS#1 v1.5 with SHA-256 over exc-c14n(SignedInfo), in context
        <ds:KeyInfo><wsse:SecurityTokenReference><wsse:Reference URI="#X509-<uuid>">
      <wsu:Timestamp wsu:Id="id-Timestamp"> Created now, Expires +10 min (ms, Z)

Order of work: build every element first (the Timestamp too), serialise and parse the document
again, then digest each referenced part and canonicalise SignedInfo *where it stands* in that
parsed document and sign it: the InclusiveNamespaces pull namespace declarations from the
ancestors, so a part canonicalised out of context (or in lxml's in-memory tree, see `sign`) would
give other bytes than the receiver sees.

The private key never leaves `Credentials`; its repr shows the certificate subject only.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from ...errors import ConfigError
from .contract import BASE64, DS, EXC_C14N, RSA_SHA256, SHA256, SOAP_ENV, WSSE, WSU, X509V3, safe_parser
from .envelope import WSU_ID
from .messages import xml_datetime

#: (wsu:Id, InclusiveNamespaces PrefixList) of every signed part, in DUO's order.
SIGNED_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("id-From", ("duo", "soapenv")),
    ("id-To", ("duo", "soapenv")),
    ("id-Action", ("duo", "soapenv")),
    ("id-MessageID", ("duo", "soapenv")),
    ("id-Body", ("duo",)),
    ("id-Timestamp", ("wsse", "wsa", "duo", "soapenv")),
)
SIGNED_INFO_PREFIXES = ("wsa", "duo", "soapenv")
TIMESTAMP_VALIDITY = timedelta(minutes=10)


def exc_c14n(element: etree._Element, prefixes: Sequence[str]) -> bytes:
    """Exclusive XML canonicalisation 1.0 (no comments) of `element` in its document context."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False,
                          inclusive_ns_prefixes=list(prefixes))


def digest(element: etree._Element, prefixes: Sequence[str]) -> str:
    return base64.b64encode(hashlib.sha256(exc_c14n(element, prefixes)).digest()).decode("ascii")


@dataclass(frozen=True)
class Credentials:
    """The client certificate and its RSA key: mutual TLS and the WS-Security signature."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> Credentials:
        """Read both PEM files; ConfigError (naming the file, never its content) if they do not fit."""
        try:
            certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read a PEM certificate: {type(exc).__name__}", file=str(cert_file),
                              key="targets.rio.cert_file") from None
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read an unencrypted PEM private key: {type(exc).__name__}",
                              file=str(key_file), key="targets.rio.key_file") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("RIO signs with RSA-SHA256, but this key is not an RSA key", file=str(key_file),
                              key="targets.rio.key_file")
        leaf = certs[0]
        public = leaf.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or public.public_numbers() != key.public_key().public_numbers():
            raise ConfigError("the private key does not belong to the first certificate in cert_file",
                              file=str(key_file), key="targets.rio.key_file",
                              hint="cert_file must start with the client certificate itself, then its chain")
        return cls(leaf, key)

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _find_by_id(root: etree._Element, ident: str) -> etree._Element:
    found = root.xpath("//*[@wsu:Id = $ident]", namespaces={"wsu": WSU}, ident=ident)
    if len(found) != 1:
        raise ValueError(f"the envelope has {len(found)} elements with wsu:Id={ident!r}; the signer needs one")
    return found[0]  # type: ignore[no-any-return]


class Signer:
    """Adds wsse:Security with the signature over From, To, Action, MessageID, Body and Timestamp."""

    def __init__(self, credentials: Credentials, *, validity: timedelta = TIMESTAMP_VALIDITY) -> None:
        self.credentials = credentials
        self.validity = validity

    def sign(self, envelope: etree._Element, *, now: datetime) -> bytes:
        """The signed envelope, serialised (UTF-8, with XML declaration): the exact bytes to send."""
        header = envelope.find(f"{{{SOAP_ENV}}}Header")
        if header is None:
            raise ValueError("the envelope has no soapenv:Header")
        security = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        header.insert(0, security)

        token_id = f"X509-{uuid.uuid4()}"
        token = etree.SubElement(security, f"{{{WSSE}}}BinarySecurityToken",
                                 {"EncodingType": BASE64, "ValueType": X509V3, WSU_ID: token_id})
        token.text = base64.b64encode(self.credentials.der()).decode("ascii")

        signature = etree.SubElement(security, f"{{{DS}}}Signature", nsmap={"ds": DS})
        signed_info = etree.SubElement(signature, f"{{{DS}}}SignedInfo", nsmap={"ec": EXC_C14N})
        method = etree.SubElement(signed_info, f"{{{DS}}}CanonicalizationMethod", Algorithm=EXC_C14N)
        etree.SubElement(method, f"{{{EXC_C14N}}}InclusiveNamespaces", PrefixList=" ".join(SIGNED_INFO_PREFIXES))
        etree.SubElement(signed_info, f"{{{DS}}}SignatureMethod", Algorithm=RSA_SHA256)
        for ident, prefixes in SIGNED_PARTS:
            reference = etree.SubElement(signed_info, f"{{{DS}}}Reference", URI=f"#{ident}")
            transforms = etree.SubElement(reference, f"{{{DS}}}Transforms")
            transform = etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm=EXC_C14N)
            etree.SubElement(transform, f"{{{EXC_C14N}}}InclusiveNamespaces", PrefixList=" ".join(prefixes))
            etree.SubElement(reference, f"{{{DS}}}DigestMethod", Algorithm=SHA256)
            etree.SubElement(reference, f"{{{DS}}}DigestValue")
        etree.SubElement(signature, f"{{{DS}}}SignatureValue")
        key_info = etree.SubElement(signature, f"{{{DS}}}KeyInfo")
        reference_to_token = etree.SubElement(key_info, f"{{{WSSE}}}SecurityTokenReference")
        etree.SubElement(reference_to_token, f"{{{WSSE}}}Reference", URI=f"#{token_id}", ValueType=X509V3)

        created = now.astimezone(UTC)
        timestamp = etree.SubElement(security, f"{{{WSU}}}Timestamp", {WSU_ID: "id-Timestamp"})
        etree.SubElement(timestamp, f"{{{WSU}}}Created").text = xml_datetime(created)
        etree.SubElement(timestamp, f"{{{WSU}}}Expires").text = xml_datetime(created + self.validity)

        # Canonicalise what the receiver will parse, not lxml's in-memory tree: for nodes built in
        # memory, libxml2's exclusive c14n leaves out in-scope namespaces that a PrefixList names
        # (seen with lxml 6.1), so the digests would not match the bytes on the wire.
        document = etree.fromstring(etree.tostring(envelope, encoding="UTF-8"), safe_parser())
        parsed_info = document.find(f".//{{{DS}}}SignedInfo")
        assert parsed_info is not None
        for reference, (ident, prefixes) in zip(parsed_info.iterfind(f"{{{DS}}}Reference"), SIGNED_PARTS,
                                               strict=True):
            value = reference.find(f"{{{DS}}}DigestValue")
            assert value is not None
            value.text = digest(_find_by_id(document, ident), prefixes)
        signed_bytes = exc_c14n(parsed_info, SIGNED_INFO_PREFIXES)
        raw = self.credentials.private_key.sign(signed_bytes, padding.PKCS1v15(), hashes.SHA256())
        signature_value = document.find(f".//{{{DS}}}SignatureValue")
        assert signature_value is not None
        signature_value.text = base64.b64encode(raw).decode("ascii")
        return etree.tostring(document, xml_declaration=True, encoding="UTF-8")
