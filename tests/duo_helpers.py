"""Shared pieces of the DUO register tests.

- `register_schema()`: the contract's XSD, read from ../shared (not the product's copy).
- `Clock`: a test clock for the simulator whose `sleep` is the target's injected sleep, so waiting
  for the register's processing costs no real time and every wait is recorded.
- `Harness`: plays the engine's part (set_desired → work → deliver) over a real SqliteStateStore,
  with the target talking to a `DuoRegisterSimulator` through `mock_transport`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from lxml import etree

from mcsync.record import Issuer, MicrocredentialRecord
from mcsync.sandbox.base import mock_transport
from mcsync.sandbox.duo import MOUNT, DuoRegisterSimulator
from mcsync.state import SqliteStateStore
from mcsync.targets.base import DeliveryState, RemoteRef, TargetContext, WorkItem, catalogue_key
from mcsync.targets.duo import DuoRegisterTarget, DuoSettings

from .conftest import SHARED

XSD = SHARED / "duo-register.xsd"
UNIT_CODE = "1234O5678"
API_URL = "http://127.0.0.1" + MOUNT


def asynctest(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function with asyncio.run (fixtures still resolve through the signature)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


@functools.cache
def register_schema() -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.parse(str(XSD), parser))


def assert_valid(body: bytes) -> etree._Element:
    """Parse `body` and assert it is valid against ../shared/reference/duo-register.xsd."""
    root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))
    schema = register_schema()
    assert schema.validate(root), [f"line {e.line}: {e.message}" for e in schema.error_log]
    return root


def bsns(count: int, start: int = 100000000) -> list[str]:
    """`count` distinct 9-digit numbers passing the BSN elfproef (computed, not hard-coded)."""
    found: list[str] = []
    n = start
    while len(found) < count:
        text = f"{n:09d}"
        total = sum(int(d) * w for d, w in zip(text, (9, 8, 7, 6, 5, 4, 3, 2, -1), strict=True))
        if total % 11 == 0:
            found.append(text)
        n += 1
    return found


def failing_elfproef(valid: str) -> str:
    """A 9-digit number one digit away from `valid`, which therefore fails the elfproef."""
    last = (int(valid[-1]) + 1) % 10
    return valid[:-1] + str(last)


class Clock:
    """A settable UTC clock; `sleep` (async, for the target) advances it and records the wait."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        self.waits: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.advance(seconds)


class Harness:
    """The engine's part for one target over a real state store (tests drive it step by step)."""

    def __init__(self, store: SqliteStateStore, issuer: Issuer, *, sim: DuoRegisterSimulator | None = None,
                 clock: Clock | None = None, rio_enabled: bool = True,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Coroutine[Any, Any, None]] | None = None, network: bool = False,
                 **settings: Any) -> None:
        self.store = store
        self.issuer = issuer
        self.clock = clock or Clock()
        self.sim = sim or DuoRegisterSimulator(processing_delay=2.0, clock=self.clock,
                                               known_unit_codes={UNIT_CODE})
        self.rio_enabled = rio_enabled
        self.settings = DuoSettings(api_url=settings.pop("api_url", API_URL), **settings)
        # network=True: the target's own HTTP(S) client (TLS settings apply); else straight to the simulator
        self.transport = None if network else transport or mock_transport(self.sim, prefix=MOUNT)
        self.sleep = sleep or self.clock.sleep
        self.records: dict[str, MicrocredentialRecord] = {}
        self.target = self.new_target()

    def new_target(self) -> DuoRegisterTarget:
        context = TargetContext(issuer=self.issuer, extra={"rio_enabled": self.rio_enabled})
        return DuoRegisterTarget(self.settings, context, transport=self.transport, sleep=self.sleep)

    # the engine's steps -----------------------------------------------------------------------------
    def plan(self, *records: MicrocredentialRecord) -> None:
        """What the engine's plan step does: the desired hash per record into the outbox."""
        for record in records:
            self.records[str(record.record_id)] = record
        self.store.set_desired("duo", [(str(r.record_id), self.target.desired(r)) for r in records])

    def work(self, *, later: float = 0.0) -> list[WorkItem]:
        now = datetime.now(UTC) + timedelta(seconds=later)
        return [WorkItem(key=row.key, state=row.state, desired_hash=row.desired_hash,
                         delivered_hash=row.delivered_hash, attempts=row.attempts, remote=row.remote,
                         record=self.records.get(row.key), note=row.note)
                for row in self.store.work("duo", now)]

    async def deliver(self, *, later: float = 0.0, chunk: int | None = None, ledger: Any = None) -> list[WorkItem]:
        """One deliver step over all due work (in chunks like the engine, if `chunk`)."""
        items = self.work(later=later)
        size = chunk or max(len(items), 1)
        ledger = ledger or self.store.ledger("duo")
        for start in range(0, len(items), size):
            await self.target.deliver(items[start:start + size], ledger)
        await self.target.finish(ledger)
        return items

    def confirm_rio(self, code: str = "MC-DATA01", unit_code: str = UNIT_CODE) -> None:
        """The RIO target's row for unit `code`, confirmed with its opleidingseenheidcode."""
        key = catalogue_key(code)
        self.store.set_desired("rio", [(key, "rio-hash")])
        self.store.ledger("rio").confirm(key, delivered_hash="rio-hash", remote=RemoteRef(
            remote_id=unit_code, data={"opleidingseenheidcode": unit_code}))

    # looking -------------------------------------------------------------------------------------
    def row(self, record: MicrocredentialRecord | str) -> Any:
        key = record if isinstance(record, str) else str(record.record_id)
        return self.store.rows("duo", [key])[key]

    def state(self, record: MicrocredentialRecord | str) -> DeliveryState:
        return self.row(record).state

    def states(self) -> dict[str, DeliveryState]:
        return {key: self.state(key) for key in self.records}

    def bodies(self) -> list[bytes]:
        return [self.sim.delivery_body(lid) for lid in self.sim.deliveries_received]

    async def aclose(self) -> None:
        await self.target.aclose()


def with_learner(record: MicrocredentialRecord, **changes: Any) -> MicrocredentialRecord:
    """The record with learner fields changed, as the engine builds it after a directory update."""
    learner = record.learner.model_copy(update=changes)
    return record.model_copy(update={"learner": learner})


def keys(records: Sequence[MicrocredentialRecord]) -> list[str]:
    return [str(r.record_id) for r in records]

