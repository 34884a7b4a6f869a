"""`mcsync doctor`: can this machine reach each enabled target, and will it go on doing so?

For every enabled target, in order, one line per check, each OK, WARN or FAIL:

    config       the target's settings validate (secret files read, paths resolved)
    dns          each host in the target's URLs resolves
    tls          each https endpoint completes a TLS handshake that verifies the server against the
                 configured trust anchor (`ca_file`, else the system store); shows the server
                 certificate's expiry. A plain http:// URL (loopback only: the sandbox) gets a TCP check.
    clock        the server's Date header against our clock. WS-Security timestamps (RIO: valid for
                 10 minutes) and tokens are time-bound: WARN above 10 s, FAIL above 5 minutes.
    certificate  the client certificate (`cert_file`, rio and duo): readable, matching `key_file`,
                 valid now; WARN within 30 days of expiry, FAIL when expired or not yet valid.
    token        edubadges: the token endpoint hands out an access token for the client id.
    access       one harmless authenticated read: edubadges lists the institution's badge classes;
                 RIO answers a signed lookup of a key that cannot exist (`RioTarget.probe`); the DUO
                 register answers 404 for a record that cannot exist. A third-party target is
                 asked through its own `probe()` if it has one.

Checks that depend on an endpoint that failed are not tried (the failure above says why). Doctor
sends reads only, one attempt each with a short timeout, and never prints a secret or a token.
Exit code: 1 if any line is FAIL, else 0.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.x509.oid import NameOID

from . import log as logs, plugins
from .config import Config, plugin_settings
from .errors import McsyncError
from .http import make_client, ssl_context
from .targets.base import TargetContext, TargetSettings

TIMEOUT = 15.0                 # seconds per network step
CERT_WARN_DAYS = 30
SKEW_WARN = 10.0               # seconds
SKEW_FAIL = 300.0


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    target: str
    name: str
    level: Level
    detail: str

    def line(self) -> str:
        return f"{self.level.value:<4}  {self.target:<10} {self.name:<11} {logs.redact(self.detail)}"


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname or "", port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Doctor:
    """Runs the checks above; `report` gets each Check as soon as it is known."""

    def __init__(self, config: Config, *, report: Callable[[Check], None], clock: Clock = _utcnow,
                 timeout: float = TIMEOUT) -> None:
        self.config = config
        self.report = report
        self.clock = clock
        self.timeout = timeout
        self.checks: list[Check] = []

    def _add(self, target: str, name: str, level: Level, detail: str) -> Check:
        check = Check(target, name, level, detail)
        self.checks.append(check)
        self.report(check)
        return check

    async def run(self) -> list[Check]:
        targets = self.config.enabled_targets()
        if not targets:
            self._add("-", "config", Level.WARN, "no target is enabled in the configuration")
        for name in targets:
            await self._target(name)
        return self.checks

    # ------------------------------------------------------------------ one target
    async def _target(self, name: str) -> None:
        try:
            cls = plugins.load(plugins.TARGET_GROUP, name)
            settings = plugin_settings(cls.Settings, dict(self.config.target_table(name) or {}),
                                       config=self.config, key=f"targets.{name}")
        except McsyncError as exc:
            self._add(name, "config", Level.FAIL, str(exc))
            return
        settings = _one_quick_attempt(settings, self.timeout)
        urls = [value for key, value in sorted(vars(settings).items())
                if key.endswith("_url") and isinstance(value, str)]
        reachable = True
        for endpoint in dict.fromkeys(Endpoint.of(url) for url in urls):
            reachable = await self._reach(name, endpoint, settings) and reachable
        if reachable and urls:
            await self._clock(name, urls[0], settings)
        cert_file = getattr(settings, "cert_file", None)
        if cert_file is not None:
            self._certificate(name, cert_file, getattr(settings, "key_file", None))
        if reachable:
            await self._access(name, cls, settings)

    async def _reach(self, name: str, endpoint: Endpoint, settings: TargetSettings) -> bool:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM),
                                           self.timeout)
        except (OSError, TimeoutError) as exc:
            self._add(name, "dns", Level.FAIL, f"{endpoint.host} does not resolve: {exc or 'timed out'}")
            return False
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._add(name, "dns", Level.OK, f"{endpoint.host} → {', '.join(addresses[:3])}")
        if endpoint.scheme != "https":
            return await self._tcp(name, endpoint)
        return await self._tls(name, endpoint, settings)

    async def _tcp(self, name: str, endpoint: Endpoint) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), self.timeout)
        except (OSError, TimeoutError) as exc:
            self._add(name, "tcp", Level.FAIL, f"cannot connect to {endpoint}: {exc or 'timed out'}")
            return False
        await _close(writer)
        self._add(name, "tcp", Level.OK, f"{endpoint} accepts connections (plain http: loopback only, "
                                         "the sandbox)")
        return True

    async def _tls(self, name: str, endpoint: Endpoint, settings: TargetSettings) -> bool:
        try:
            context = _context(settings)
        except (OSError, ssl.SSLError) as exc:
            self._add(name, "tls", Level.FAIL, f"cannot load the TLS files: {exc}")
            return False
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=context, server_hostname=endpoint.host), self.timeout)
        except ssl.SSLCertVerificationError as exc:
            self._add(name, "tls", Level.FAIL, f"{endpoint}: the server certificate is not trusted "
                      f"({exc.verify_message}); set ca_file to the right trust anchor")
            return False
        except (OSError, TimeoutError) as exc:
            self._add(name, "tls", Level.FAIL, f"no TLS connection to {endpoint}: {exc or 'timed out'}")
            return False
        tls = writer.get_extra_info("ssl_object")
        try:
            der = tls.getpeercert(binary_form=True) if tls is not None else None
            version = tls.version() if tls is not None else "TLS"
        except ValueError:  # the server hung up during the handshake
            await _close(writer)
            self._add(name, "tls", Level.FAIL, f"{endpoint} ended the TLS handshake: it may refuse our client "
                      "certificate (check cert_file and key_file)")
            return False
        await _close(writer)
        detail = f"{endpoint} {version}, server certificate verified"
        if der:
            until = x509.load_der_x509_certificate(der).not_valid_after_utc
            detail += f", valid until {until:%Y-%m-%d} ({(until - self.clock()).days} days)"
        self._add(name, "tls", Level.OK, detail)
        return True

    async def _clock(self, name: str, url: str, settings: TargetSettings) -> None:
        try:
            async with _client(url, settings) as client:
                sent = time.time()
                response = await client.get(url)
                received = time.time()
        except httpx.HTTPError as exc:
            self._add(name, "clock", Level.FAIL, f"no HTTP answer from {url}: {type(exc).__name__}: {exc}")
            return
        except (OSError, ssl.SSLError) as exc:
            self._add(name, "clock", Level.FAIL, f"cannot set up the HTTP client: {exc}")
            return
        date = response.headers.get("Date")
        try:
            theirs = parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            theirs = None
        if theirs is None:
            self._add(name, "clock", Level.WARN, f"{url} sent no readable Date header; clock not compared")
            return
        # the server stamped its Date somewhere between sending and receiving; Date has whole seconds
        ours = self.clock().timestamp() - (received - sent) / 2
        skew = theirs - ours
        margin = 1.0 + (received - sent) / 2
        level = Level.OK
        if abs(skew) > SKEW_FAIL + margin:
            level = Level.FAIL
        elif abs(skew) > SKEW_WARN + margin:
            level = Level.WARN
        if abs(skew) <= margin:
            detail = f"the server's clock agrees with ours (within {margin:.0f} s)"
        else:
            detail = f"the server's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} ours"
        if level is not Level.OK:
            detail += " (signatures and tokens are time-bound: check NTP, e.g. `timedatectl`)"
        self._add(name, "clock", level, detail)

    def _certificate(self, name: str, cert_file: Path, key_file: Path | None) -> None:
        try:
            cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        except (OSError, ValueError) as exc:
            self._add(name, "certificate", Level.FAIL, f"cannot read {cert_file}: {type(exc).__name__}: {exc}")
            return
        try:
            ssl_context(cert_file=cert_file, key_file=key_file)
        except (OSError, ssl.SSLError) as exc:
            self._add(name, "certificate", Level.FAIL,
                      f"{cert_file} and {key_file or 'its key'} do not load as a pair: {exc}")
            return
        now = self.clock()
        subject = cert.subject.rfc4514_string({NameOID.SERIAL_NUMBER: "serialNumber"})
        until = cert.not_valid_after_utc
        days = (until - now).days
        if now < cert.not_valid_before_utc:
            self._add(name, "certificate", Level.FAIL,
                      f"{subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        elif now >= until:
            self._add(name, "certificate", Level.FAIL, f"{subject} expired on {until:%Y-%m-%d}: renew it")
        elif days < CERT_WARN_DAYS:
            self._add(name, "certificate", Level.WARN,
                      f"{subject} expires in {days} days ({until:%Y-%m-%d}): renew it now")
        else:
            self._add(name, "certificate", Level.OK, f"{subject}, valid until {until:%Y-%m-%d} ({days} days)")

    # ------------------------------------------------------------------ authenticated reads
    async def _access(self, name: str, cls: Any, settings: TargetSettings) -> None:
        check: Awaitable[None]
        if name == "edubadges":
            check = self._edubadges(settings)
        elif name == "duo":
            check = self._duo(settings)
        elif callable(getattr(cls, "probe", None)):
            check = self._probe(name, cls, settings)
        else:
            self._add(name, "access", Level.WARN, "this target has no probe(); only reachability was checked")
            return
        try:
            await check
        except McsyncError as exc:
            self._add(name, "access", Level.FAIL, str(exc))
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            self._add(name, "access", Level.FAIL, f"{type(exc).__name__}: {exc}")

    async def _edubadges(self, settings: TargetSettings) -> None:
        from .targets.edubadges.auth import TokenSource
        from .targets.edubadges.client import EdubadgesClient
        from .targets.edubadges.settings import EdubadgesSettings

        assert isinstance(settings, EdubadgesSettings)
        tokens = TokenSource(settings)
        async with make_client(settings.api_url, timeout=settings.timeout, ca_file=settings.ca_file) as http:
            try:
                await tokens.token(http)
            except McsyncError as exc:
                self._add("edubadges", "token", Level.FAIL, str(exc))
                return
        self._add("edubadges", "token", Level.OK,
                  f"{settings.token_url} gave an access token to client {settings.client_id!r}")
        async with EdubadgesClient(settings, tokens) as client:
            classes = await client.badge_classes()
        self._add("edubadges", "access", Level.OK,
                  f"{settings.api_url} accepts the token ({len(classes)} badge classes visible)")

    async def _duo(self, settings: TargetSettings) -> None:
        from .targets.duo.client import RegisterClient, RetryPolicy
        from .targets.duo.errors import Action
        from .targets.duo.settings import DuoSettings

        assert isinstance(settings, DuoSettings) and settings.api_url is not None
        register = RegisterClient(settings.api_url, timeout=settings.timeout, ca_file=settings.ca_file,
                                  cert_file=settings.cert_file, key_file=settings.key_file,
                                  retry=RetryPolicy(1, 1.0, 1.0), sleep=asyncio.sleep)
        try:
            answer = await register.get(f"/resultaten/{uuid.uuid4()}")
        finally:
            await register.aclose()
        if answer.action is Action.NOT_FOUND:
            whom = "us with our client certificate" if settings.cert_file else "us"
            self._add("duo", "access", Level.OK, f"the register answered a lookup (404 for a record that "
                                                 f"cannot exist): it serves {whom}")
        else:
            self._add("duo", "access", Level.WARN, f"the register answered a lookup of a record that cannot "
                                                   f"exist with {answer.describe()}")

    async def _probe(self, name: str, cls: Any, settings: TargetSettings) -> None:
        issuer = self.config.settings.institution.issuer()
        target = cls(settings, TargetContext(issuer=issuer, eppn_template=self.config.settings.institution.eppn_template,
                                             extra={"rio_enabled": "rio" in self.config.enabled_targets()}))
        try:
            said = await target.probe()
        finally:
            await target.aclose()
        self._add(name, "access", Level.OK, str(said))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    except (OSError, ssl.SSLError, TimeoutError):   # a server that cuts a probe short changes nothing
        pass


def _one_quick_attempt(settings: TargetSettings, timeout: float) -> TargetSettings:
    """The same settings with one attempt per call and a short timeout: doctor must answer quickly."""
    fields = type(settings).model_fields
    update: dict[str, Any] = {key: 1 for key in ("max_attempts", "call_attempts", "retry_attempts") if key in fields}
    if "timeout" in fields:
        update["timeout"] = min(float(getattr(settings, "timeout", timeout)), timeout)
    return settings.model_copy(update=update)


def _context(settings: TargetSettings) -> ssl.SSLContext:
    return ssl_context(ca_file=getattr(settings, "ca_file", None), cert_file=getattr(settings, "cert_file", None),
                       key_file=getattr(settings, "key_file", None))


def _client(url: str, settings: TargetSettings) -> httpx.AsyncClient:
    return make_client(url, timeout=float(getattr(settings, "timeout", TIMEOUT)),
                       ca_file=getattr(settings, "ca_file", None), cert_file=getattr(settings, "cert_file", None),
                       key_file=getattr(settings, "key_file", None))


def run_doctor(config: Config, *, out: Callable[[str], None] = print, clock: Clock = _utcnow) -> int:
    """Print one line per check; 1 if any failed."""
    checks = asyncio.run(Doctor(config, report=lambda c: out(c.line()), clock=clock).run())
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
