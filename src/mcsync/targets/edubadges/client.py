"""The Edubadges API calls mcsync makes, one method each, with headers, token, errors and retries.

Every call sends `Authorization: Bearer`, `Content-Type: application/json` and `Accept: application/json`
(GET included: Edubadges answers errors as JSON only to JSON requests, and renders `application/ld+json`
unless asked). `X-Requested-With` is never sent: Edubadges then skips the OIDC token check.

A 403 renews the token once and repeats the call once; Edubadges checks the token before anything else,
so a refused call changed nothing. Calls are retried (`retry_async`: back-off, Retry-After) only on
errors that show nothing was applied, or where a repeat cannot create an award (reads, withdrawals).
A create whose answer was lost raises UnknownOutcome and is never repeated here. When the retries run
out, or the credentials are refused twice, the client raises TargetUnavailable: the target stops for
this run with its work queued.

A client lives for one `deliver()` call (`async with`): its connections belong to that call's event
loop and are closed with it. The token outlives it (TokenSource, kept by the target).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from ...errors import AuthError, PermanentError, RetriableError, TargetUnavailable, UnknownOutcome
from ...http import Sleep, make_client, parse_retry_after, retry_async
from .auth import TokenSource
from .errors import classify, classify_transport
from .models import AwardRequest, BadgeClassRow, Bundle, BundleCreated, DeleteResult, ListedAward, create_request
from .settings import EdubadgesSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_LISTED = TypeAdapter(list[ListedAward])
_BADGE_CLASSES = TypeAdapter(list[BadgeClassRow])


#: What json.dumps(body, ensure_ascii=False, separators=(",", ":")) uses, made once: json.dumps makes
#: a new encoder on every call with options.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(body: Any) -> bytes:
    """The exact bytes sent for a JSON body (AwardRequest.encoded_size counts an award's share of it)."""
    return _ENCODER.encode(body).encode("utf-8")


class _Borrowed(httpx.AsyncBaseTransport):
    """A transport the caller owns (tests, the engine's sandbox): used, never closed here."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)


class EdubadgesClient:
    def __init__(self, settings: EdubadgesSettings, tokens: TokenSource, *,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None) -> None:
        self._settings = settings
        self._http = make_client(settings.api_url, timeout=settings.timeout, ca_file=settings.ca_file,
                                 transport=_Borrowed(transport) if transport is not None else None,
                                 max_connections=max(2, settings.concurrency * 2))
        self.tokens = tokens
        self._sleep = sleep

    async def __aenter__(self) -> EdubadgesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # the calls ------------------------------------------------------------------------------------------
    async def create_bundle(self, badgeclass: str, awards: Sequence[AwardRequest]) -> BundleCreated:
        body = create_request(badgeclass, list(awards), notify=self._settings.notify_recipients)
        response = await self._retrying(lambda: self._call("POST", "/directaward/create", body=body,
                                                           creating=True))
        return self._read(BundleCreated, response, creating=True)

    async def bundle(self, bundle_id: str) -> Bundle | None:
        """The bundle's awards and claimed assertions; None if Edubadges does not know the bundle."""
        response = await self._reading(lambda: self._call("GET", f"/directaward/bundle/{bundle_id}",
                                                          accept=(200, 404)))
        if response.status_code == 404:
            return None
        return self._read(Bundle, response)

    async def listed(self, status: str) -> list[ListedAward]:
        """GET /queries/direct-awards?status=unclaimed|deleted: all of the institution, unpaginated."""
        response = await self._reading(lambda: self._call("GET", "/queries/direct-awards",
                                                          params={"status": status}))
        try:
            return _LISTED.validate_json(response.content)
        except ValidationError as exc:
            raise self._unreadable(response, exc) from None

    async def badge_classes(self) -> list[BadgeClassRow]:
        """GET /queries/badge-classes: the institution's badge classes with their claim counts."""
        response = await self._reading(lambda: self._call("GET", "/queries/badge-classes"))
        try:
            return _BADGE_CLASSES.validate_json(response.content)
        except ValidationError as exc:
            raise self._unreadable(response, exc) from None

    async def delete_direct_awards(self, entity_ids: Sequence[str]) -> DeleteResult:
        body = {"revocation_reason": self._settings.revocation_reason,
                "direct_awards": [{"entity_id": entity_id} for entity_id in entity_ids]}
        response = await self._retrying(lambda: self._call("PUT", "/directaward/delete-direct-awards",
                                                           body=body))
        return self._read(DeleteResult, response)

    async def revoke_assertions(self, entity_ids: Sequence[str]) -> None:
        """Revoke claimed badges. Edubadges stops at the first failure; earlier ones stay revoked."""
        body = {"revocation_reason": self._settings.revocation_reason,
                "assertions": [{"entity_id": entity_id} for entity_id in entity_ids]}
        await self._retrying(lambda: self._call("POST", "/issuer/revoke-assertions", body=body))

    # plumbing -------------------------------------------------------------------------------------------
    async def _reading(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read mcsync cannot do without: a refusal stops the target for this run, like an outage."""
        try:
            return await self._retrying(call)
        except PermanentError as exc:
            raise TargetUnavailable(f"Edubadges refused a lookup: {exc.message}", code=exc.code,
                                    hint="the work stays queued; report it if it persists") from exc

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        settings = self._settings

        def waiting(state: Any) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("edubadges: attempt %d failed (%s); trying again", state.attempt_number, exc)

        try:
            return await retry_async(call, attempts=settings.max_attempts, sleep=self._sleep,
                                     before_sleep=waiting)
        except RetriableError as exc:
            raise TargetUnavailable(f"Edubadges is unavailable after {settings.max_attempts} attempts: "
                                    f"{exc.message}", code=exc.code) from exc

    async def _call(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                    creating: bool = False, accept: tuple[int, ...] = (200, 201)) -> httpx.Response:
        """One call: token, headers, one renewal on 403; a non-accepted answer raises its error class."""
        content = encode(body) if body is not None else None
        for renewed in (False, True):
            token = await self.tokens.token(self._http)
            response = await self._send(method, path, content, params, token, creating)
            if response.status_code in accept:
                return response
            error = classify(response, creating=creating,
                             retry_after=parse_retry_after(response.headers.get("Retry-After")))
            if not isinstance(error, AuthError):
                raise error
            if renewed:
                raise TargetUnavailable(f"Edubadges refused a fresh token for client "
                                        f"{self._settings.client_id!r}: {error.message}",
                                        code=error.code, hint=error.hint)
            log.info("edubadges: %s %s refused the token; renewing it once", method, path)
            self.tokens.invalidate(token)
        raise AssertionError("unreachable: the second refusal raises")

    async def _send(self, method: str, path: str, content: bytes | None, params: dict[str, str] | None,
                    token: str, creating: bool) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        try:
            return await self._http.request(method, path, content=content, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise classify_transport(exc, creating=creating, what=f"{method} {path}") from None

    def _read(self, model: type[M], response: httpx.Response, *, creating: bool = False) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            error = self._unreadable(response, exc)
            if creating:  # it was applied, but we cannot tell which bundle it made
                raise UnknownOutcome(error.message, hint="the awards are looked up before anything is sent "
                                                         "again") from None
            raise error from None

    @staticmethod
    def _unreadable(response: httpx.Response, exc: ValidationError) -> TargetUnavailable:
        where = "invalid"
        for error in exc.errors()[:1]:
            where = f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        return TargetUnavailable(
            f"Edubadges answered {response.status_code} to {response.request.method} "
            f"{response.request.url.path} in a shape mcsync cannot read ({where})",
            hint="Edubadges may have changed its API; report it")
