"""HTTP plumbing shared by every target: clients, TLS, Retry-After and the retry loop.

- `make_client` builds an `httpx.AsyncClient` with TLS verification always on, an optional client
  certificate (mutual TLS, through an `ssl.SSLContext`, as httpx 0.28 wants), and the rule that
  plain `http://` is accepted for loopback hosts only.
- `parse_retry_after` reads both forms of the header (seconds, HTTP date).
- `retry_async` runs a coroutine with tenacity: only `RetriableError`s are retried, waiting
  max(Retry-After, exponential back-off with jitter), both capped. Whether a call is *safe* to
  retry is decided by whoever raises: a target raises RetriableError only where a second attempt
  cannot create a second award.
- `observe_requests` lets the metrics and the daemon's watchdog see every answered request of every
  client made here (event hooks): its URL and the seconds until the response headers arrived.
  Requests that get no answer are not reported (their error is the caller's to handle).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential_jitter

from . import __version__
from .errors import ConfigError, RetriableError

T = TypeVar("T")

USER_AGENT = f"mcsync/{__version__}"
MAX_RETRY_AFTER = 300.0

#: Called with (request, response, seconds until the response headers arrived) for every answered request.
RequestObserver = Callable[[httpx.Request, httpx.Response, float], None]
_observers: list[RequestObserver] = []
_STARTED = "mcsync.started"   # request extension holding the perf_counter() at sending
_log = logging.getLogger(__name__)


def observe_requests(observer: RequestObserver) -> Callable[[], None]:
    """Report every answered request of every client from `make_client` to `observer`; returns the undo."""
    _observers.append(observer)

    def remove() -> None:
        if observer in _observers:
            _observers.remove(observer)

    return remove


async def _on_request(request: httpx.Request) -> None:
    if _observers:
        request.extensions[_STARTED] = time.perf_counter()


async def _on_response(response: httpx.Response) -> None:
    started = response.request.extensions.get(_STARTED)
    if started is None:
        return
    report_request(response.request, response, time.perf_counter() - started)


def report_request(request: httpx.Request, response: httpx.Response, seconds: float) -> None:
    """Tell every observer of an answered request (also one answered in a delivery process, mcsync.lanes)."""
    for observer in list(_observers):
        try:
            observer(request, response, seconds)
        except Exception:  # an observer must never break a delivery
            _log.exception("a request observer failed")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, key: str) -> str:
    """Accept https://, and http:// for loopback hosts only (the sandbox and tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url.rstrip("/")
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return url.rstrip("/")
    raise ConfigError(f"{url!r} is not an https:// URL", key=key,
                      hint="plain http:// is accepted for loopback hosts (the sandbox) only")


def ssl_context(*, ca_file: Path | None = None, cert_file: Path | None = None,
                key_file: Path | None = None) -> ssl.SSLContext:
    """A verifying TLS context: system trust store or `ca_file`, plus a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}


def _file_stamp(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return (str(path), -1, -1)           # ssl_context() reports the missing file
    return (str(path), info.st_mtime_ns, info.st_size)


def shared_ssl_context(*, ca_file: Path | None = None, cert_file: Path | None = None,
                       key_file: Path | None = None) -> ssl.SSLContext:
    """`ssl_context`, made once per set of files and reused by every client: loading the system
    trust store costs tens of milliseconds, and a target makes a client per delivery. A file that
    changes (a renewed certificate) gives a new context."""
    key = (_file_stamp(ca_file), _file_stamp(cert_file), _file_stamp(key_file))
    context = _contexts.get(key)
    if context is None:
        context = ssl_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        if len(_contexts) > 32:
            _contexts.clear()
        _contexts[key] = context
    return context


def make_client(base_url: str, *, timeout: float = 30.0, ca_file: Path | None = None,
                cert_file: Path | None = None, key_file: Path | None = None,
                transport: httpx.AsyncBaseTransport | None = None,
                headers: dict[str, str] | None = None, max_connections: int = 8) -> httpx.AsyncClient:
    """An AsyncClient for one remote; `transport` replaces the network in tests."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        verify=shared_ssl_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        transport=transport,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
        event_hooks={"request": [_on_request], "response": [_on_response]},
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None,
                      cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, min(seconds, cap))


class wait_retry_after(wait_base):
    """Wait what the remote asked for (RetriableError.retry_after), at least the back-off."""

    def __init__(self, fallback: wait_base, cap: float = MAX_RETRY_AFTER) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = self.fallback(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if asked is None:
            return backoff
        return min(max(float(asked), backoff), self.cap)


Sleep = Callable[[float], Awaitable[None]]


async def retry_async(call: Callable[[], Awaitable[T]], *, attempts: int = 5, initial: float = 1.0,
                      maximum: float = 60.0, sleep: Sleep | None = None,
                      before_sleep: Callable[[RetryCallState], None] | None = None) -> T:
    """Run `call`, retrying RetriableError (and subclasses) with back-off; re-raise the last one."""
    kwargs = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(RetriableError),
        wait=wait_retry_after(wait_exponential_jitter(multiplier=initial, max=maximum)),
        stop=stop_after_attempt(attempts),
        reraise=True,
        before_sleep=before_sleep,
        **kwargs,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")
