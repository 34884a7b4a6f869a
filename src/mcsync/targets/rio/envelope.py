"""The SOAP 1.1 envelope with the WS-Addressing headers DUO requires (rio.md §2, PvE §6.4.8).

Shape and prefixes follow the requests DUO accepted from the SURF mapper (recorded exchanges):

    <soapenv:Envelope xmlns:soapenv xmlns:duo="<service schema ns>" xmlns:wsu>
      <soapenv:Header xmlns:wsa>
        (wsse:Security: added by the signer, first in the header)
        <wsa:Action wsu:Id="id-Action">  contract ns + "/" + operation; equals the HTTP SOAPAction
        <wsa:From wsu:Id="id-From"><wsa:Address> anonymous?oin=<sender OIN>
        <wsa:MessageID wsu:Id="id-MessageID"> a fresh UUID per message
        <wsa:To wsu:Id="id-To"> https://duo.nl/RIO/services/<service>?oin=<DUO's OIN>
      <soapenv:Body wsu:Id="id-Body"> the request element

Every header and the body carry a wsu:Id because each is signed on its own. The namespace
prefixes matter: the signature's InclusiveNamespaces PrefixLists name `duo`, `soapenv`, `wsa`.
"""

from __future__ import annotations

from lxml import etree

from .contract import SOAP_ENV, WSA, WSA_ANONYMOUS, WSU, Service

WSU_ID = f"{{{WSU}}}Id"


def build_envelope(body: etree._Element, *, service: Service, action: str, message_id: str, to: str,
                   sender_oin: str) -> etree._Element:
    """The unsigned envelope around `body` (moved into it)."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope",
                             nsmap={"soapenv": SOAP_ENV, "duo": service.schema_ns, "wsu": WSU})
    header = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Header", nsmap={"wsa": WSA})
    etree.SubElement(header, f"{{{WSA}}}Action", {WSU_ID: "id-Action"}).text = action
    sender = etree.SubElement(header, f"{{{WSA}}}From", {WSU_ID: "id-From"})
    etree.SubElement(sender, f"{{{WSA}}}Address").text = f"{WSA_ANONYMOUS}?oin={sender_oin}"
    etree.SubElement(header, f"{{{WSA}}}MessageID", {WSU_ID: "id-MessageID"}).text = message_id
    etree.SubElement(header, f"{{{WSA}}}To", {WSU_ID: "id-To"}).text = to
    soap_body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body", {WSU_ID: "id-Body"})
    soap_body.append(body)
    # the body was built on its own and declares xmlns:duo again; the envelope already does
    etree.cleanup_namespaces(envelope, top_nsmap={"soapenv": SOAP_ENV, "duo": service.schema_ns, "wsu": WSU})
    return envelope


def serialize(envelope: etree._Element) -> bytes:
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
