"""The access token: OAuth2 client credentials at SURFconext, cached until shortly before it expires.

Edubadges introspects the bearer token on every request and has no refresh tokens (edubadges-api.md §2):
fetch one with HTTP Basic `client_id:client_secret` and `grant_type=client_credentials&scope=...`, keep
it, fetch a new one `RENEW_BEFORE` seconds before `expires_in` runs out, and once more when Edubadges
refuses it (403) — the client calls `invalidate()` for that. Concurrent callers share one fetch.

The secret and the token never appear in a log line or an error text: errors name the client id only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ...errors import DeliveryError, RetriableError, TargetUnavailable
from ...http import parse_retry_after
from .errors import classify_transport
from .settings import EdubadgesSettings

log = logging.getLogger(__name__)

RENEW_BEFORE = 60.0          # seconds before expiry at which a cached token is replaced
DEFAULT_LIFETIME = 300.0     # when the token endpoint does not say (`expires_in` is optional in RFC 6749)
_REFUSALS = ("invalid_client", "unauthorized_client", "invalid_scope", "invalid_grant", "unsupported_grant_type")


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float


class TokenSource:
    """Hands out a valid access token; `invalidate()` drops one Edubadges refused."""

    def __init__(self, settings: EdubadgesSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._token: _Token | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.fetched = 0

    async def token(self, http: httpx.AsyncClient) -> str:
        """A valid token; `http` fetches a new one if needed."""
        current = self._token
        if current is not None and self._clock() < current.renew_at:
            return current.value
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:     # a lock serves one event loop only
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            current = self._token
            if current is None or self._clock() >= current.renew_at:
                current = self._token = await self._fetch(http)
            return current.value

    def invalidate(self, value: str) -> None:
        """Forget `value` if it is still the cached token (another caller may have renewed it already)."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def _fetch(self, http: httpx.AsyncClient) -> _Token:
        settings = self._settings
        started = self._clock()
        try:
            response = await http.post(
                settings.token_url,
                auth=httpx.BasicAuth(settings.client_id, settings.client_secret.get_secret_value()),
                data={"grant_type": "client_credentials", "scope": settings.scope},
                headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise classify_transport(exc, creating=False, what="token endpoint unreachable") from None
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            data = response.json()
            value = data["access_token"]
            lifetime = float(data.get("expires_in") or DEFAULT_LIFETIME)
        except (ValueError, KeyError, TypeError):
            raise TargetUnavailable(f"the token endpoint {settings.token_url} answered 200 without an "
                                    "access_token", hint="check token_url") from None
        if not isinstance(value, str) or not value:
            raise TargetUnavailable(f"the token endpoint {settings.token_url} gave an empty access_token",
                                    hint="check token_url")
        self.fetched += 1
        margin = RENEW_BEFORE if lifetime > 2 * RENEW_BEFORE else lifetime / 2
        log.info("edubadges: new access token for client %s, valid %.0f s", settings.client_id, lifetime)
        return _Token(value, started + lifetime - margin)

    def _refusal(self, response: httpx.Response) -> DeliveryError:
        settings = self._settings
        try:
            error = str(response.json().get("error", ""))
        except (ValueError, AttributeError):
            error = ""
        status = response.status_code
        if status == 429 or status >= 500:
            return RetriableError(f"the token endpoint answered {status}", code=str(status),
                                  retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if error in _REFUSALS or status in (400, 401, 403):
            return TargetUnavailable(
                f"the token endpoint refused client {settings.client_id!r} ({status} {error or 'no error code'})",
                code=error or str(status),
                hint="check client_id and client_secret, and that SURFconext allows this client the "
                     f"client_credentials grant with scope {settings.scope!r}")
        return TargetUnavailable(f"the token endpoint answered {status}", code=str(status),
                                 hint="check token_url")
