"""Shared pieces of the Edubadges tests: a simulator seeded like a test institution, hand-written API
calls to it, and a harness that plans and delivers records the way the engine does (a real SQLite
store, WorkItems from its rows)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from mcsync.record import Issuer, MicrocredentialRecord
from mcsync.sandbox.base import mock_transport
from mcsync.sandbox.edubadges import EdubadgesSimulator
from mcsync.state import SqliteStateStore
from mcsync.state.store import DeliveryRow
from mcsync.targets.base import TargetContext, WorkItem
from mcsync.targets.edubadges import EdubadgesSettings, EdubadgesTarget

from .conftest import make_record

BC = "Xy9Zv1aFwREargJY47cO8w"           # conftest.make_definition's badge class
BC_NAME = "Data-analyse met Python"
BC2 = "Qw3Er5Ty7Ui9Op1As3Df5g"
BC2_NAME = "Statistiek voor professionals"
CLIENT_ID = "mcsync-hz"
CLIENT_SECRET = "hz-client-secret-3c1d9a"
API_URL = "https://api-test.edubadges.nl"
TOKEN_URL = "https://connect.test.surfconext.nl/oidc/token"
TEMPLATE = "{student_number}@student.hz.nl"
TARGET = "edubadges"


class Clock:
    """A settable clock for the simulator (its token lifetimes)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def simulator(**kwargs: Any) -> EdubadgesSimulator:
    return EdubadgesSimulator({BC: BC_NAME, BC2: BC2_NAME}, {CLIENT_ID: CLIENT_SECRET}, **kwargs)


def settings(**overrides: Any) -> EdubadgesSettings:
    data: dict[str, Any] = {"api_url": API_URL, "token_url": TOKEN_URL, "client_id": CLIENT_ID,
                            "client_secret": CLIENT_SECRET}
    data.update(overrides)
    return EdubadgesSettings.model_validate(data)


class Recorder(httpx.AsyncBaseTransport):
    """Keeps every request the target sends (method, url, headers, body), then passes it on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    def api(self) -> list[httpx.Request]:
        return [r for r in self.requests if not r.url.path.endswith("/oidc/token")]

    def bodies(self, path: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith(path)]


class Intercept(httpx.AsyncBaseTransport):
    """Calls `before(request)` for each request to a path ending in `path`, then passes it on. `before`
    may change the simulator (a learner or staff acting meanwhile) or raise (a request lost on the way)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, path: str, before: Callable[[httpx.Request], None]) -> None:
        self.inner = inner
        self.path = path
        self.before = before

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if request.url.path.endswith(self.path):
            self.before(request)
        return await self.inner.handle_async_request(request)


def lose(times: int) -> Callable[[httpx.Request], None]:
    """A `before` for Intercept: the first `times` requests time out on the way and never arrive."""
    left = [times]

    def before(request: httpx.Request) -> None:
        if left[0]:
            left[0] -= 1
            raise httpx.WriteTimeout("timed out while sending", request=request)

    return before


class Harness:
    """One institution's store and Edubadges target; `deliver()` works like one engine pass."""

    def __init__(self, store: SqliteStateStore, issuer: Issuer, sim: EdubadgesSimulator, *,
                 template: str | None = TEMPLATE, transport: httpx.AsyncBaseTransport | None = None,
                 **overrides: Any) -> None:
        self.store = store
        self.sim = sim
        self.sleeps: list[float] = []
        self.transport = Recorder(transport or mock_transport(sim))
        self.target = EdubadgesTarget(settings(**overrides), TargetContext(issuer=issuer, eppn_template=template),
                                      transport=self.transport, sleep=self._sleep)
        self.records: dict[str, MicrocredentialRecord] = {}

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def plan(self, *records: MicrocredentialRecord) -> int:
        for record in records:
            self.records[str(record.record_id)] = record
        return self.store.set_desired(TARGET, [(str(r.record_id), self.target.desired(r)) for r in records])

    def work(self) -> list[WorkItem]:
        return [WorkItem(key=row.key, state=row.state, desired_hash=row.desired_hash,
                         delivered_hash=row.delivered_hash, attempts=row.attempts, remote=row.remote,
                         record=self.records.get(row.key), note=row.note)
                for row in self.store.work(TARGET, datetime.now(UTC))]

    async def deliver_async(self) -> None:
        await self.target.deliver(self.work(), self.store.ledger(TARGET))

    def deliver(self) -> None:
        asyncio.run(self.deliver_async())

    def row(self, record: MicrocredentialRecord) -> DeliveryRow:
        return self.store.rows(TARGET, [str(record.record_id)])[str(record.record_id)]

    def close(self) -> None:
        asyncio.run(self.target.aclose())


# hand-written API calls (the reference's shapes, not mcsync's client) -----------------------------------------
JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def client(sim: EdubadgesSimulator) -> httpx.Client:
    return httpx.Client(base_url="https://api-test.edubadges.nl", transport=mock_transport(sim))


def token(http: httpx.Client, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> httpx.Response:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return http.post("/oidc/token", content=b"grant_type=client_credentials&scope=edubadges.nl/sis",
                     headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})


def auth(http: httpx.Client) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {token(http).json()['access_token']}"}


def bundle_body(*awards: dict[str, str], badgeclass: str = BC, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"badgeclass": badgeclass, "identifier_type": "eppn", "notify_recipients": True,
                               "batch_mode": False, "sis_user_id": "mcsync", "direct_awards": list(awards)}
    body.update(extra)
    return body


def simulator_create(sim: EdubadgesSimulator, learner_eppn: str, badgeclass: str = BC) -> str:
    """An award made outside mcsync (the Edubadges UI), straight through the simulator's API."""
    with client(sim) as http:
        answer = http.post("/directaward/create", headers=auth(http), json=bundle_body(
            {"eppn": learner_eppn, "recipient_email": learner_eppn}, badgeclass=badgeclass))
        assert answer.status_code == 201, answer.text
    return sim.direct_awards(eppn=learner_eppn, badgeclass=badgeclass)[-1].entity_id


def adopted(store: SqliteStateStore, issuer: Issuer,
            student_number: str) -> tuple[EdubadgesSimulator, Harness, MicrocredentialRecord, str]:
    """A learner who already had an unclaimed award made outside mcsync, then delivered by mcsync.
    Returns the simulator, the harness, the record and the earlier award's id."""
    sim = simulator()
    harness = Harness(store, issuer, sim)
    record = make_record(issuer, student_number)
    earlier = simulator_create(sim, eppn(record))
    harness.plan(record)
    harness.deliver()
    return sim, harness, record, earlier


def eppn(record: MicrocredentialRecord) -> str:
    return (record.learner.eppn or TEMPLATE.format(student_number=record.learner.student_number)).lower()


def create_calls(sim: EdubadgesSimulator) -> int:
    return sum(1 for c in sim.calls if c.path == "/directaward/create")

