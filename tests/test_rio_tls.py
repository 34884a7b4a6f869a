"""The whole flow over real HTTPS with mutual TLS on 127.0.0.1, and what happens without a client certificate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcsync.errors import TargetUnavailable
from mcsync.sandbox.base import SandboxServer, SimRequest, SimResponse
from mcsync.sandbox.rio import RioSimulator
from mcsync.state.sqlite import SqliteStateStore
from mcsync.state.store import DeliveryRow
from mcsync.targets.base import DeliveryState, catalogue_key
from mcsync.targets.rio import RioTarget

from .rio_helpers import SENDER_OIN, Pki, context, definition, make_pki, server_tls, settings, sync

KEY = catalogue_key("MC-DATA01")


async def brief(seconds: float) -> None:
    """Real waiting, capped: the retry back-off of seconds would only slow the tests down."""
    await asyncio.sleep(min(seconds, 0.05))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class PeerRecorder:
    """Notes the TLS client certificate of every request, then hands it to the simulator."""

    def __init__(self, inner: RioSimulator) -> None:
        self.inner = inner
        self.peers: list[dict | None] = []

    def handle(self, request: SimRequest) -> SimResponse:
        self.peers.append(request.client_cert)
        return self.inner.handle(request)


def run_sync(target: RioTarget, state: Path) -> tuple[DeliveryRow, TargetUnavailable | None]:
    """One sync of MC-DATA01 with a fresh state file: the row as it ends up, and why RIO was unavailable."""
    store = SqliteStateStore(state)

    async def go() -> None:
        try:
            await sync(target, store, {"MC-DATA01": definition()})
        finally:
            await target.aclose()

    try:
        try:
            asyncio.run(go())
            unavailable = None
        except TargetUnavailable as exc:
            unavailable = exc
        return store.rows("rio", [KEY])[KEY], unavailable
    finally:
        store.close()


@pytest.fixture
def served(pki: Pki) -> Iterator[tuple[SandboxServer, RioSimulator, PeerRecorder]]:
    sim = RioSimulator(visibility_delay=0.05)
    recorder = PeerRecorder(sim)
    server = SandboxServer({"/rio": recorder}, tls=server_tls(pki)).start()
    try:
        yield server, sim, recorder
    finally:
        server.stop()


def test_full_flow_over_mutual_tls(served, pki: Pki, tmp_path: Path) -> None:
    server, sim, recorder = served
    assert server.url.startswith("https://127.0.0.1:")
    target = RioTarget(settings(pki, beheren_url=f"{server.url}/rio/beheren4.0",
                                raadplegen_url=f"{server.url}/rio/raadplegen4.0", poll_intervals=[0.05],
                                confirm_timeout=5.0), context(), sleep=brief)
    row, unavailable = run_sync(target, tmp_path / "state.db")
    assert unavailable is None
    assert row.state is DeliveryState.SYNCED
    assert sim.is_known_unit_code(row.remote.remote_id or "")
    assert [c.operation for c in sim.writes()] == ["aanleveren_opleidingseenheid", "aanleveren_aangebodenOpleiding"]
    subjects = [dict(pair[0] for pair in peer["subject"]) for peer in recorder.peers if peer]
    assert len(subjects) == len(recorder.peers) and subjects
    assert {s["commonName"] for s in subjects} == {"mcsync.hz.example"}
    assert {s["serialNumber"] for s in subjects} == {SENDER_OIN}


def test_without_a_client_certificate_rio_is_unavailable(served, pki: Pki, tmp_path: Path) -> None:
    server, sim, _ = served
    target = RioTarget(settings(pki, beheren_url=f"{server.url}/rio/beheren4.0",
                                raadplegen_url=f"{server.url}/rio/raadplegen4.0", cert_file=None, key_file=None,
                                sign=False, call_attempts=2, poll_intervals=[0.01]), context(), sleep=brief)
    row, unavailable = run_sync(target, tmp_path / "state.db")
    assert unavailable is not None
    assert row.state is DeliveryState.PENDING
    assert sim.calls == []


def test_an_untrusted_server_is_refused(served, pki: Pki, tmp_path: Path) -> None:
    server, sim, _ = served
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(pki.client_cert.read_bytes())     # not the CA that signed the server
    target = RioTarget(settings(pki, beheren_url=f"{server.url}/rio/beheren4.0",
                                raadplegen_url=f"{server.url}/rio/raadplegen4.0", ca_file=other_ca,
                                call_attempts=1), context(), sleep=brief)
    row, unavailable = run_sync(target, tmp_path / "state.db")
    assert unavailable is not None and "cannot be reached" in unavailable.message
    assert row.state is DeliveryState.PENDING
    assert sim.calls == []
