"""The common shape of the local simulators of the national systems, and how they are served.

A simulator is a plain object with `handle(SimRequest) -> SimResponse`, holding its state in
memory behind a lock. The same object can be

- served over real HTTP(S) on loopback by `SandboxServer` (the `mcsync sandbox` command, the
  end-to-end tests, the benchmark), several simulators on one port under path prefixes; or
- plugged straight into an httpx client with `mock_transport()` for fast unit tests.

Simulators behave like the real systems as `../shared/reference` documents them: status codes,
error bodies, duplicate rules, delays; they are not shaped to please mcsync's client.
`Faults` puts seeded latency and failures in front of every simulator: 5xx, 429 with Retry-After,
timeouts, and writes that are applied before the connection drops.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx


class Headers(dict[str, str]):
    """Case-insensitive header lookup (keys stored lower-case)."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        super().__init__({k.lower(): v for k, v in (items or {}).items()})

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class SimRequest:
    method: str
    path: str                                   # below the simulator's mount prefix, no query
    query: dict[str, list[str]]
    headers: Headers
    body: bytes
    client_cert: dict[str, Any] | None = None   # peer certificate (mutual TLS), as ssl.getpeercert()

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class SimResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False   # apply the write, then cut the connection without answering
    hold: float = 0.0               # seconds to wait before answering (past the client's timeout: a timeout)

    @classmethod
    def json(cls, status: int, data: Any, headers: dict[str, str] | None = None) -> SimResponse:
        return cls(status, json.dumps(data).encode("utf-8"),
                   {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def xml(cls, status: int, text: str | bytes, headers: dict[str, str] | None = None,
            content_type: str = "application/xml; charset=utf-8") -> SimResponse:
        body = text.encode("utf-8") if isinstance(text, str) else text
        return cls(status, body, {"Content-Type": content_type, **(headers or {})})


class Simulator(Protocol):
    def handle(self, request: SimRequest) -> SimResponse: ...


FaultKind = Literal["error", "throttle", "timeout", "drop", "gateway"]

#: What a proxy in front of the real systems answers when it gives up (the body a client gets on a 5xx).
_GATEWAY_PAGE = {
    500: b"<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>",
    502: b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
    503: b"<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>",
    504: b"<html><head><title>504 Gateway Time-out</title></head><body><h1>Gateway Time-out</h1></body></html>",
}


@dataclass
class Faults:
    """Latency and failures in front of simulators, drawn per request from one seeded random stream.

    While `enabled`, every request first waits `latency` plus up to `jitter` seconds, then draws one
    number that decides its fault, if any. The rates are shares of all requests (their sum is at most 1):

        error_rate     answered `error_status` (one of them, if several) with `retry_after`; nothing
                       is applied (an overloaded server, or a proxy in front of a dead one)
        throttle_rate  answered 429 with Retry-After `throttle_after` seconds, as delta-seconds or,
                       for `http_date_share` of them, as an HTTP-date; nothing is applied
        timeout_rate   held `timeout_hold` seconds, longer than the client waits (set it above the
                       client's timeout); `timeout_applied` of them were applied and answered late,
                       the rest answered 504 late without being applied
        drop_rate      applied, then the connection is cut without an answer
        gateway_rate   applied, then answered 502 by a proxy that gave up on the server

    `mounts` gives a mount prefix (e.g. "/edubadges") its own Faults instead; `enabled` of the outer
    one switches all of them. The fields may be changed while requests are served (a test raises or
    lowers rates between runs); `off()` lets a test end with a clean, fault-free recovery. With the
    same seed and the same order of requests, the same requests get the same faults. `injected`
    counts what was done, per kind.
    """

    latency: float = 0.0
    jitter: float = 0.0
    error_rate: float = 0.0
    error_status: int | tuple[int, ...] = 503
    retry_after: str | None = "1"
    throttle_rate: float = 0.0
    throttle_after: float = 1.0
    http_date_share: float = 0.5
    timeout_rate: float = 0.0
    timeout_hold: float = 65.0
    timeout_applied: float = 0.5
    drop_rate: float = 0.0
    gateway_rate: float = 0.0
    seed: int = 0
    enabled: bool = True
    mounts: dict[str, Faults] = field(default_factory=dict)
    injected: Counter[str] = field(init=False, default_factory=Counter)
    _random: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        total = self.error_rate + self.throttle_rate + self.timeout_rate + self.drop_rate + self.gateway_rate
        if total > 1.0 + 1e-9 or min(self.error_rate, self.throttle_rate, self.timeout_rate, self.drop_rate,
                                     self.gateway_rate) < 0:
            raise ValueError(f"fault rates must be shares between 0 and 1 that add up to at most 1 (they add "
                             f"up to {total:g})")

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Faults from "drop=0.05,error=0.02,throttle=0.02,timeout=0.01,latency=0.05,seed=7" (`mcsync sandbox
        --faults`): the kinds without "_rate", and any other field by its name."""
        numbers: dict[str, Any] = {}
        known = {f.name for f in fields(cls) if f.init and f.name != "mounts"}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if f"{name}_rate" in known:
                name = f"{name}_rate"
            if not sep or name not in known:
                raise ValueError(f"{part!r}: expected NAME=VALUE with NAME one of error, throttle, timeout, "
                                 "drop, gateway, latency, jitter, timeout_hold, throttle_after, seed")
            try:
                if name == "seed":
                    numbers[name] = int(value)
                elif name == "error_status":
                    numbers[name] = tuple(int(v) for v in value.split("/"))
                elif name == "retry_after":
                    numbers[name] = value.strip() or None
                elif name == "enabled":
                    numbers[name] = value.strip().lower() in ("1", "true", "yes", "on")
                else:
                    numbers[name] = float(value)
            except ValueError:
                raise ValueError(f"{part!r}: {value!r} is not a number") from None
        return cls(**numbers)

    def on(self) -> None:
        self.enabled = True

    def off(self) -> None:
        self.enabled = False

    def reseed(self, seed: int) -> None:
        with self._lock:
            self.seed = seed
            self._random = random.Random(seed)

    def for_mount(self, prefix: str) -> Faults | None:
        """The Faults for requests below `prefix`; None while switched off."""
        if not self.enabled:
            return None
        return self.mounts.get(prefix, self)

    def draw(self) -> tuple[FaultKind | None, float]:
        """Wait the latency, then pick this request's fault (None: none) and a number for its details."""
        with self._lock:   # one draw of three numbers per request, whatever it gets: the stream stays aligned
            wait = self.latency + self._random.random() * self.jitter
            roll, pick = self._random.random(), self._random.random()
            kind: FaultKind | None = None
            for name, rate in (("error", self.error_rate), ("throttle", self.throttle_rate),
                               ("timeout", self.timeout_rate), ("drop", self.drop_rate),
                               ("gateway", self.gateway_rate)):
                if roll < rate:
                    kind = name  # type: ignore[assignment]
                    self.injected[name] += 1
                    break
                roll -= rate
        if wait > 0:
            time.sleep(wait)
        return kind, pick

    def serve(self, simulator: Simulator, request: SimRequest) -> SimResponse:
        """Handle `request` with `simulator`, with this request's fault."""
        kind, pick = self.draw()
        if kind is None:
            return simulator.handle(request)
        if kind == "error":
            statuses = self.error_status if isinstance(self.error_status, tuple) else (self.error_status,)
            status = statuses[int(pick * len(statuses)) % len(statuses)]
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return _gateway_answer(status, headers)
        if kind == "throttle":
            if pick < self.http_date_share:
                moment = datetime.now(UTC) + timedelta(seconds=self.throttle_after)
                after = format_datetime(moment, usegmt=True)
            else:
                after = f"{self.throttle_after:g}"
            return SimResponse(429, b"Too Many Requests", {"Content-Type": "text/plain", "Retry-After": after})
        if kind == "timeout" and pick >= self.timeout_applied:
            return replace(_gateway_answer(504, {}), hold=self.timeout_hold)
        response = simulator.handle(request)
        if kind == "timeout":
            return replace(response, hold=self.timeout_hold)
        if kind == "drop":
            return SimResponse(response.status, drop_connection=True)
        return _gateway_answer(502, {})


def _gateway_answer(status: int, headers: dict[str, str]) -> SimResponse:
    page = _GATEWAY_PAGE.get(status, _GATEWAY_PAGE[502])
    return SimResponse(status, page, {"Content-Type": "text/html", **headers})


class _Mounts:
    def __init__(self, mounts: Mapping[str, Simulator], faults: Faults | None) -> None:
        # longest prefix first, so "/rio/raadplegen" wins over "/rio"
        self.mounts = sorted(((p.rstrip("/"), s) for p, s in mounts.items()), key=lambda m: -len(m[0]))
        self.faults = faults

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes,
                 client_cert: dict[str, Any] | None) -> SimResponse:
        parts = urlsplit(target)
        for prefix, sim in self.mounts:
            if parts.path == prefix or parts.path.startswith(prefix + "/"):
                request = SimRequest(method, parts.path[len(prefix):] or "/", parse_qs(parts.query),
                                     Headers(headers), body, client_cert)
                faults = self.faults.for_mount(prefix) if self.faults is not None else None
                return faults.serve(sim, request) if faults is not None else sim.handle(request)
        return SimResponse.json(404, {"detail": "Not found."})


def mock_transport(simulator: Simulator | Mapping[str, Simulator], prefix: str = "",
                   faults: Faults | None = None) -> httpx.MockTransport:
    """An httpx transport that hands requests straight to `simulator` (sync and async clients).

    `simulator` may also be a mapping of mount prefixes to simulators (as `SandboxServer` takes them).
    A response with `drop_connection` raises httpx.RemoteProtocolError after the simulator applied
    the write, like a connection cut before the answer arrives. A response held longer than the
    request's read timeout (a `Faults` timeout) raises httpx.ReadTimeout at once: in-process tests
    do not wait the timeout out.
    """
    mounts = _Mounts(simulator if isinstance(simulator, Mapping) else {prefix or "": simulator}, faults)

    def respond(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode("ascii")
        result = mounts.dispatch(request.method, target, dict(request.headers), request.read(), None)
        if result.hold:
            timeout = (request.extensions.get("timeout") or {}).get("read")
            if timeout is None or result.hold > timeout:
                raise httpx.ReadTimeout("The read operation timed out", request=request)
            time.sleep(result.hold)
        if result.drop_connection:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(result.status, headers=result.headers, content=result.body)

    async def respond_async(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await asyncio.to_thread(respond, request)

    class _Transport(httpx.MockTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await respond_async(request)

    return _Transport(respond)


class _QuietServer(ThreadingHTTPServer):
    """A client that went away mid-request (killed, or timed out) is no error of the sandbox's."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class SandboxServer:
    """Serve simulators over HTTP(S) on loopback in a background thread.

        server = SandboxServer({"/edubadges": sim}, port=0).start()
        server.url  # "http://127.0.0.1:PORT"
        server.stop()

    With `tls` (an SSLContext with a server certificate, optionally `verify_mode=CERT_REQUIRED`
    for mutual TLS) it serves HTTPS and hands the peer certificate to the simulators.
    """

    def __init__(self, mounts: Mapping[str, Simulator], *, host: str = "127.0.0.1", port: int = 0,
                 faults: Faults | None = None, tls: ssl.SSLContext | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self._mounts = _Mounts(mounts, faults)
        self._tls = tls
        handler = self._handler_class(log)
        self._server = _QuietServer((host, port), handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{port}"

    def start(self) -> SandboxServer:
        self._serving = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        self._server.serve_forever()

    def stop(self) -> None:
        if self._serving:          # shutdown() waits for serve_forever(): never for one that never ran
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self, log: Callable[[str], None] | None) -> type[BaseHTTPRequestHandler]:
        mounts = self._mounts

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body leave in two writes; with Nagle on, the body waits for the client's
            # delayed ACK (~40 ms) on every keep-alive request, far more than any latency we simulate
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                cert = None
                if isinstance(self.connection, ssl.SSLSocket):
                    cert = self.connection.getpeercert() or None
                try:
                    result = mounts.dispatch(self.command, self.path, dict(self.headers.items()), body, cert)
                except Exception as exc:  # a simulator bug must look like a 500, as a real server's would
                    result = SimResponse(500, f"simulator error: {exc!r}".encode(), {"Content-Type": "text/plain"})
                if result.hold:
                    time.sleep(result.hold)          # the client gives up meanwhile (a timeout)
                if result.drop_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                try:
                    self.send_response(result.status)
                    for name, value in result.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(result.body)))
                    self.end_headers()
                    self.wfile.write(result.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True     # the client left (it timed out, or was killed)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                if log is not None:
                    log(format % args)

        return Handler
