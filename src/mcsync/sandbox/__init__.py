"""The local sandbox of the three national systems, on one loopback port.

    /edubadges/...          Edubadges API and its OIDC token endpoint (sandbox/edubadges.py)
    /rio/beheren4.0         RIO Beheren (write) and Raadplegen (read) SOAP services (sandbox/rio.py)
    /rio/raadplegen4.0
    /duo/rmc/v1/...         the DUO-style register of awarded microcredentials (sandbox/duo.py)

`Sandbox.from_config` seeds the simulators from an mcsync configuration (badge classes from the
mapping files, the Edubadges client from `[targets.edubadges]`), so `mcsync sandbox` and a sync
with the same configuration fit together. The register asks the RIO simulator which unit codes
exist, as the real register asks RIO.

`faults` (a `base.Faults`) puts seeded latency and failures in front of all three, over the network
and through `transport()`, the same simulators in-process (`mcsync sandbox --faults SPEC`).
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any

import httpx

from ..config import Config
from ..mapping import load_mapping
from ..record import pick_language
from .base import Faults, SandboxServer, SimRequest, SimResponse, Simulator, mock_transport
from .duo import DuoRegisterSimulator
from .edubadges import EdubadgesSimulator
from .rio import RioSimulator

EDUBADGES = "/edubadges"
RIO = "/rio"
DUO = "/duo/rmc/v1"
STATS = "/_sandbox"
DEMO_CLIENT = ("mcsync-demo", "demo-secret-not-for-production")


class _Stats:
    """`GET /_sandbox/stats`: what the sandbox counted, as JSON (the benchmark reads it over HTTP)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def handle(self, request: SimRequest) -> SimResponse:
        if request.method != "GET" or request.path != "/stats":
            return SimResponse.json(404, {"detail": "Not found."})
        counters = self.sandbox.counters
        return SimResponse.json(200, {
            "write_requests": self.sandbox.write_requests(),
            "requests": {name: c.requests for name, c in counters.items()},
            "writes": {name: c.writes for name, c in counters.items()},
            "summary": self.sandbox.summary()})


class CountingSimulator:
    """Counts the requests that may change something at the remote (for 'zero write requests')."""

    def __init__(self, inner: Simulator) -> None:
        self.inner = inner
        self.writes = 0
        self.requests = 0

    def handle(self, request: SimRequest) -> SimResponse:
        self.requests += 1
        if _is_write(request):
            self.writes += 1
        return self.inner.handle(request)


def _is_write(request: SimRequest) -> bool:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return False
    if request.path.endswith("/oidc/token"):
        return False
    action = request.headers.get("SOAPAction", "") or ""
    return "opvragen" not in action and "/raadplegen" not in request.path


class Sandbox:
    """The three simulators behind one SandboxServer."""

    def __init__(self, *, badgeclasses: dict[str, str], clients: dict[str, str], host: str = "127.0.0.1",
                 port: int = 0, latency: float = 0.0, rio_visibility_delay: float = 0.2,
                 duo_processing_delay: float = 0.2, unknown_bsns: set[str] | None = None,
                 faults: Faults | None = None) -> None:
        self.edubadges = EdubadgesSimulator(badgeclasses=badgeclasses, clients=clients)
        self.rio = RioSimulator(visibility_delay=rio_visibility_delay, require_signature=True)
        self.duo = DuoRegisterSimulator(processing_delay=duo_processing_delay,
                                        known_unit_codes=self.rio.is_known_unit_code,
                                        unknown_bsns=unknown_bsns or set())
        self.counters = {name: CountingSimulator(sim) for name, sim in
                         (("edubadges", self.edubadges), ("rio", self.rio), ("duo", self.duo))}
        self.mounts: dict[str, Simulator] = {EDUBADGES: self.counters["edubadges"], RIO: self.counters["rio"],
                                             DUO: self.counters["duo"]}
        self.mounts[STATS] = _Stats(self)     # GET /_sandbox/stats: counters, for a harness in another process
        if faults is None and latency:
            faults = Faults(latency=latency)
        self.faults = faults      # switch them with faults.on()/off(); change rates while serving
        self.server = SandboxServer(self.mounts, host=host, port=port, faults=faults)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_config(cls, config: Config | None, **kwargs: Any) -> Sandbox:
        badgeclasses: dict[str, str] = {}
        clients = dict([DEMO_CLIENT])
        if config is not None:
            for source in config.settings.sources:
                try:
                    mapping = load_mapping(config.resolve(source.mapping))
                except Exception:
                    continue  # a broken mapping is the sync's problem to report, not the sandbox's
                for definition in mapping.definitions.values():
                    if definition.edubadges:
                        badgeclasses[definition.edubadges.badgeclass] = pick_language(definition.title, "en", "nl")
            table = config.target_table("edubadges") or {}
            if table.get("client_id") and table.get("client_secret"):
                clients[str(table["client_id"])] = str(table["client_secret"])
        return cls(badgeclasses=badgeclasses, clients=clients, **kwargs)

    # serving ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.server.url

    def endpoints(self) -> dict[str, str]:
        return {"edubadges api_url": self.url + EDUBADGES,
                "edubadges token_url": self.url + EDUBADGES + "/oidc/token",
                "rio beheren_url": self.url + RIO + "/beheren4.0",
                "rio raadplegen_url": self.url + RIO + "/raadplegen4.0",
                "duo api_url": self.url + DUO}

    def start(self) -> Sandbox:
        self.server.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def transport(self) -> httpx.MockTransport:
        """The same simulators and faults in-process, without the network (`Engine(transports=...)`)."""
        return mock_transport(self.mounts, faults=self.faults)

    # for the demo and tests --------------------------------------------------------------------
    def write_requests(self) -> int:
        return sum(c.writes for c in self.counters.values())

    def summary(self) -> str:
        return (f"Edubadges {self.edubadges.summary()}; RIO {self.rio.summary()}; "
                f"DUO register {self.duo.summary()}")

    def point_config_here(self, config: Config, *, state_path: Path) -> Config:
        """A copy of `config` whose targets talk to this sandbox (and whose state is `state_path`)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mcsync-sandbox-")
        return point_config(config, self.url, state_path=state_path, signing_dir=Path(self._tmp.name))

def point_config(config: Config, url: str, *, state_path: Path, signing_dir: Path) -> Config:
    """A copy of `config` whose targets talk to the sandbox at `url`, with its state at `state_path`.

    RIO requests are signed, so a throw-away signing certificate is made in `signing_dir`.
    """
    targets = {name: dict(table) for name, table in config.settings.targets.items()}
    if "edubadges" in targets:
        targets["edubadges"].update(api_url=url + EDUBADGES, token_url=url + EDUBADGES + "/oidc/token")
        targets["edubadges"].setdefault("client_id", DEMO_CLIENT[0])
        targets["edubadges"].setdefault("client_secret", DEMO_CLIENT[1])
    if "rio" in targets:
        cert, key = signing_pair(signing_dir)
        targets["rio"].update(beheren_url=url + RIO + "/beheren4.0", raadplegen_url=url + RIO + "/raadplegen4.0",
                              cert_file=str(cert), key_file=str(key))
        targets["rio"].pop("ca_file", None)
    if "duo" in targets:
        targets["duo"].update(api_url=url + DUO)
        for key_name in ("cert_file", "key_file", "ca_file"):
            targets["duo"].pop(key_name, None)
    settings = config.settings.model_copy(update={
        "targets": targets, "state": config.settings.state.model_copy(update={"path": state_path})})
    return Config(settings=settings, path=config.path, base_dir=config.base_dir)


def signing_pair(folder: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate and key for the sandbox's RIO (valid for a year)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcsync sandbox"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, "0000000700030GB00000")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "sandbox-client.pem", folder / "sandbox-client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


__all__ = ["Sandbox", "Faults", "SandboxServer", "SimRequest", "SimResponse", "Simulator"]
