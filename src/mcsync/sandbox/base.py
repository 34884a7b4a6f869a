"""The common shape of the local simulators of the national systems, and how they are served.

A simulator is a plain object with `handle(SimRequest) -> SimResponse`, holding its state in
memory behind a lock. The same object can be

- served over real HTTP(S) on loopback by `SandboxServer` (the `mcsync sandbox` command, the
  end-to-end tests, the benchmark), several simulators on one port under path prefixes; or
- plugged straight into an httpx client with `mock_transport()` for fast unit tests.

Simulators behave like the real systems as `../shared/reference` documents them: status codes,
error bodies, duplicate rules, delays; they are not shaped to please mcsync's client.
`Faults` lets a test or the benchmark add latency and failures in front of any simulator.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
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


@dataclass
class Faults:
    """Latency and failures in front of a simulator (deterministic with a seed)."""

    latency: float = 0.0                 # seconds added to every request
    error_rate: float = 0.0              # share of requests answered with `error_status`
    error_status: int = 503
    retry_after: str | None = "1"
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def before(self) -> SimResponse | None:
        if self.latency:
            time.sleep(self.latency)
        if self.error_rate and self._random.random() < self.error_rate:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return SimResponse(self.error_status, b"", headers)
        return None


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
                if self.faults is not None and (fault := self.faults.before()) is not None:
                    return fault
                request = SimRequest(method, parts.path[len(prefix):] or "/", parse_qs(parts.query),
                                     Headers(headers), body, client_cert)
                return sim.handle(request)
        return SimResponse.json(404, {"detail": "Not found."})


def mock_transport(simulator: Simulator, prefix: str = "", faults: Faults | None = None) -> httpx.MockTransport:
    """An httpx transport that hands requests straight to `simulator` (sync and async clients).

    A response with `drop_connection` raises httpx.RemoteProtocolError after the simulator applied
    the write, like a connection cut before the answer arrives.
    """
    mounts = _Mounts({prefix or "": simulator}, faults)

    def respond(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode("ascii")
        result = mounts.dispatch(request.method, target, dict(request.headers), request.read(), None)
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
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{host}:{port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
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
                if result.drop_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(result.status)
                for name, value in result.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(result.body)))
                self.end_headers()
                self.wfile.write(result.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                if log is not None:
                    log(format % args)

        return Handler
