"""One RIO call: build, check, sign, send over mutual TLS, read the answer.

Per call (`RioClient.call`), and again for every retry:
  1. a fresh `identificatiecodeBedrijfsdocument` and wsa:MessageID (DUO rejects re-used ones);
  2. the body from the request object, checked against mcsync's copy of DUO's schema: a body the
     schema rejects is never sent (PermanentError: the data needs fixing);
  3. the envelope with WS-Addressing, signed (signing.py), POSTed with `SOAPAction` equal to
     wsa:Action and `Content-Type: text/xml; charset=utf-8`, over an httpx client with the
     configured client certificate and CA (http.make_client);
  4. the answer parsed (responses.py).

What can go wrong, and what it means for a write (reads are simply retried):

    connection refused / TLS / DNS,   not sent: retried; then TargetUnavailable (not applied)
    a refused client certificate
    a lookup without any answer       retried; then TargetUnavailable (RIO does not answer)
    SOAP fault (HTTP 500)             not processed: retried with back-off; then TargetUnavailable,
                                      except DK0004 (this message's content): RetriableError
    HTTP 429/503                      not processed: retried, honouring Retry-After
    other HTTP 4xx                    configuration (URL, gateway): TargetUnavailable
    timeout after sending, dropped    UnknownOutcome: never retried blindly; the target looks
    connection, 5xx without a fault,  the item up by its own key on the next delivery
    wsa:RelatesTo of another message

A `requestGoedgekeurd=false` answer is a normal response here; errors.py decides what it means.
Nothing here logs keys, certificates or envelopes; DEBUG logs operation and message ids only.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

import httpx

from ...errors import PermanentError, RetriableError, TargetUnavailable, UnknownOutcome
from ...http import make_client, parse_retry_after, retry_async
from . import errors as policy
from .contract import operation, schema_errors
from .envelope import build_envelope, serialize
from .messages import Bedrijfsdocument, Request
from .responses import MalformedResponse, RioResponse, SoapFault, parse_envelope
from .settings import RioSettings
from .signing import Credentials, Signer

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


#: What to check when a fault persists (PvE §6.5).
FAULT_HINTS = {
    "DK0002": "DUO has not authorised this client for the service; ask DUO to authorise the OIN",
    "EK0030": "the TLS client certificate carries no OIN DUO accepts; use the PKIoverheid certificate",
    "EK0031": "DUO rejects the WS-Security signature; check cert_file/key_file and the system clock",
    "DK0050": "DUO's service has an error; the work stays queued for the next run",
    "DK0051": "DUO's service is unavailable; the work stays queued for the next run",
}


class NotSent(RetriableError):
    """The request never reached RIO (connect, TLS or DNS failure): nothing was applied."""


class NoAnswer(RetriableError):
    """A lookup got no HTTP answer at all (connection closed, e.g. a refused TLS 1.3 client certificate)."""


@dataclass(frozen=True)
class Exchange:
    """A call RIO answered: its response and the ids of the message that got it."""

    response: RioResponse
    message_id: str
    identificatiecode: str


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RioClient:
    def __init__(self, settings: RioSettings, *, sender_oin: str,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.sender_oin = sender_oin
        self._sleep = sleep
        self._clock = clock or _utcnow
        self._signer: Signer | None = None
        self.credentials: Credentials | None = None
        if settings.cert_file is not None and settings.key_file is not None:
            self.credentials = Credentials.load(settings.cert_file, settings.key_file)
        if settings.sign:
            assert self.credentials is not None  # RioSettings requires cert_file and key_file with sign
            self._signer = Signer(self.credentials)
        self._http = make_client(settings.beheren_url, timeout=settings.timeout, ca_file=settings.ca_file,
                                 cert_file=settings.cert_file, key_file=settings.key_file, transport=transport)
        self._urls = {"Beheren": settings.beheren_url, "Raadplegen": settings.raadplegen_url}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, request: Request, *, what: str) -> Exchange:
        """Send `request` (retrying what is safe to retry); `what` names it in errors."""
        op = operation(request.operation)

        async def attempt() -> Exchange:
            return await self._send(request, what=what)

        try:
            return await retry_async(attempt, attempts=self.settings.call_attempts, initial=1.0, maximum=30.0,
                                     sleep=self._sleep)
        except (NotSent, NoAnswer) as exc:
            raise TargetUnavailable(f"RIO cannot be reached at {self._urls[op.service.name]}: {exc.message}",
                                    hint="check the URL, the network and the client certificate (a refused "
                                         "client certificate shows as a closed connection); the work stays "
                                         "queued") from None
        except policy.RioFault as exc:
            if not exc.target_wide:
                raise
            raise TargetUnavailable(f"{exc.message} ({self.settings.call_attempts} tries)",
                                    hint=FAULT_HINTS.get(exc.code or "", "DUO's service refused the message; "
                                                         "the work stays queued for the next run")) from None

    async def _send(self, request: Request, *, what: str) -> Exchange:
        op = operation(request.operation)
        now = self._clock()
        document = Bedrijfsdocument(str(uuid.uuid4()), self.sender_oin, self.settings.recipient_oin, now)
        body = request.body(document)
        problems = schema_errors(body, op.service)
        if problems:
            raise PermanentError(f"the {op.name} request for {what} does not conform to RIO's schema: "
                                 + "; ".join(problems[:5]), hint="the data in the mapping file needs fixing")
        message_id = str(uuid.uuid4())
        envelope = build_envelope(body, service=op.service, action=op.soap_action, message_id=message_id,
                                  to=self.settings.to_address(op.service.path), sender_oin=self.sender_oin)
        content = self._signer.sign(envelope, now=now) if self._signer else serialize(envelope)
        headers = {"SOAPAction": op.soap_action, "Content-Type": "text/xml; charset=utf-8"}
        log.debug("RIO %s for %s: message %s, document %s", op.name, what, message_id, document.identificatiecode)
        url = self._urls[op.service.name]
        try:
            answer = await self._http.post(url, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            raise NotSent(f"{type(exc).__name__}: {exc}") from None
        except ssl.SSLError as exc:
            # httpcore lets a TLS alert that arrives while reading through unwrapped (TLS 1.3 refuses a
            # client certificate after the handshake): the server did not take the request
            if "CERTIFICATE" in str(exc.reason or exc).upper() or not op.writes:
                raise NotSent(f"TLS: {exc.reason or exc}") from None
            self._unknown(op.writes, f"{op.name} for {what}: TLS error while reading the answer")
        except httpx.TransportError as exc:
            if not op.writes:
                raise NoAnswer(f"{op.name} for {what}: no answer ({type(exc).__name__})") from None
            self._unknown(op.writes, f"{op.name} for {what}: no answer ({type(exc).__name__})")

        status = answer.status_code
        if status in (429, 503):
            raise RetriableError(f"RIO is busy (HTTP {status}) for {op.name}",
                                 retry_after=parse_retry_after(answer.headers.get("Retry-After")))
        if 400 <= status < 500:
            raise TargetUnavailable(f"RIO answered HTTP {status} to {op.name} at {url}",
                                    hint="check beheren_url/raadplegen_url and the client certificate")
        try:
            response = parse_envelope(answer.content, http_status=status)
        except SoapFault as exc:
            raise policy.fault(exc, what=f"{op.name} for {what}") from None
        except MalformedResponse as exc:
            self._unknown(op.writes, f"{op.name} for {what}: HTTP {status}, {exc}")
        if status != 200:
            self._unknown(op.writes, f"{op.name} for {what}: HTTP {status} with a RIO response")
        if response.operation != op.name:
            self._unknown(op.writes, f"{op.name} for {what}: the answer is a {response.operation} response")
        if response.relates_to is not None and response.relates_to != message_id:
            self._unknown(op.writes, f"{op.name} for {what}: the answer relates to another message")
        return Exchange(response, message_id, document.identificatiecode)

    @staticmethod
    def _unknown(writes: bool, text: str) -> NoReturn:
        if writes:
            raise UnknownOutcome(f"outcome unknown: {text}",
                                 hint="the next delivery looks the item up in RIO before sending again")
        raise RetriableError(text)
