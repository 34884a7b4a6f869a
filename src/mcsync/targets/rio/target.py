"""The RIO target: every microcredential definition as a unit plus an offering in DUO's RIO.

RIO holds no learners: this target syncs the catalogue, one delivery row per microcredential
(key "mc:<code>"). RIO is state-based (every `aanleveren_*` replaces the whole object) and
eventually consistent (an accepted write shows up in lookups later), so the flow is the SURF
mapper's: resolve → send in full → confirm by polling → next object.

The flow per microcredential (`_Flow.upsert`)
---------------------------------------------
1. Plan: build the unit and offering content from the definition (messages.plan). Whatever does
   not fit RIO (a fractional ECTS without hours, a name over 225 characters, no start_date, ...)
   parks the item with the reason before anything is sent.
2. Unit. Skip if RIO is known to show exactly this content. Otherwise:
   - no code known yet: look the unit up by its own key (`opvragen_rioIdentificatiecode`). Found:
     adopt the code and read the unit (`opvragen_opleidingseenheid`); if it already holds this
     content nothing is written. Not found: create it (no code in the message).
   - code known: send the full unit with its code (an update; RIO keeps the code).
   `ledger.begin()` before the write; on acceptance `ledger.submitted()` with the code RIO
   issued; then poll the own key with back-off (`poll_intervals`) until RIO shows that code, for
   at most `confirm_timeout` seconds. Not shown by then: the row stays `submitted` with a note
   saying so, and the next run polls again (RIO's queue does stall; the mapper calls it "RIO
   queue down"). Once shown, remote_id and the contract keys for the DUO target are stored.
3. Offering (`aangebodenOpleidingCode` is ours: a stable UUID, also sent as the kenmerk
   `eigenAangebodenOpleidingSleutel`): sent in full after the unit is shown, with the unit's code;
   confirmed the same way by its own key.
4. `ledger.confirm()` with the content hash: only when unit and offering are both confirmed.
A changed definition changes the content hash; each part whose content changed is sent again in
full with its known code; an unchanged one is never sent. Withdrawal (`_Flow.withdraw`, the
definition or its rio section is gone): delete the offering, wait until RIO no longer shows it,
delete the unit, wait, confirm with nothing delivered. A delete RIO accepted is never sent twice;
a definition that comes back while its withdrawal is under way is registered afresh once the
withdrawal is complete (RIO cannot undo a delete it has queued).

Errors (errors.py): permanent foutcodes park the item with DUO's code and text; other
rejections and SOAP faults are deferred and retried (parked after `max_attempts` writes); RIO
unreachable stops the target for this run (TargetUnavailable), the rest stays queued.

Crash table: what happens when the process dies around each remote write
-------------------------------------------------------------------------
Every write is preceded by `ledger.begin()` with a `pending` note (operation, content hash,
create or update, time; committed before the call) and followed by `submitted()`/`confirm()`,
so an unknown outcome always comes back as an `in_flight` row with that note. "Dies before the
call" means after begin() and before the request left; "after" means RIO may have applied it.

    write                          dies before the call             dies after it, before recording
    aanleveren_opleidingseenheid   in_flight; lookup by own key:    RIO has the unit (maybe not shown
      (create, no code)            not found; polled until          yet). Lookup finds it → code
                                   confirm_timeout after the        adopted, content read back, sent
                                   write, then created.             again only if it differs. Still
                                                                    hidden after confirm_timeout → the
                                                                    create is repeated and RIO answers
                                                                    P01081 (own key in use): treated
                                                                    as "ours, in RIO's queue", waited
                                                                    for. Never a second unit.
    aanleveren_opleidingseenheid   in_flight; lookup finds the      the same; the update is state-based,
      (update, code known)         code; content read back; sent    so sending it twice is harmless
                                   again with the code if it differs
    aanleveren_aangebodenOpleiding in_flight; lookup by own key;    the same: our own code makes the
                                   sent again (upsert by our code)  offering an upsert, never a copy;
                                                                    not re-sent when the lookup shows a
                                                                    first create landed
    verwijderen_aangebodenOpleiding in_flight; lookup: still there  RIO applies deletes late: polled
    verwijderen_opleidingseenheid  → deleted (again)                until gone, then deleted again if
                                                                    still there; A01020 = already gone
    lookups                        nothing to reconcile             nothing to reconcile

Timeouts and dropped connections after a write was sent are handled like "dies after the call":
the row stays in_flight (UnknownOutcome) and is reconciled by lookup on the next delivery.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar, Literal

import httpx

from ...errors import (
    ConfigError,
    DeliveryError,
    PermanentError,
    RetriableError,
    TargetUnavailable,
    UnknownOutcome,
)
from ...http import check_url
from ...record import MicrocredentialDefinition, MicrocredentialRecord, stable_hash
from ..base import DeliveryState, Ledger, RemoteRef, TargetContext, WorkItem
from . import errors as policy
from .client import Clock, RioClient, Sleep
from .messages import (
    AanleverenAangebodenOpleiding,
    AanleverenOpleidingseenheid,
    OpvragenOpleidingseenheid,
    OpvragenRioIdentificatiecode,
    Plan,
    PlanProblem,
    VerwijderenAangebodenOpleiding,
    VerwijderenOpleidingseenheid,
    plan,
)
from .progress import Part, Pending, Progress
from .responses import RioResponse, UnitSnapshot, holds, unit_snapshot
from .settings import RioSettings

log = logging.getLogger(__name__)

#: Warn when the client certificate expires within this many days.
EXPIRY_WARNING_DAYS = 30


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RioTarget:
    """Registers each microcredential in RIO as an opleidingseenheid plus an aangebodenOpleiding."""

    name: ClassVar[str] = "rio"
    unit: ClassVar[Literal["record", "microcredential"]] = "microcredential"
    depends_on: ClassVar[tuple[str, ...]] = ()
    Settings: ClassVar[type[RioSettings]] = RioSettings

    def __init__(self, settings: RioSettings, context: TargetContext, *,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None,
                 clock: Clock | None = None) -> None:
        check_url(settings.beheren_url, key="targets.rio.beheren_url")
        check_url(settings.raadplegen_url, key="targets.rio.raadplegen_url")
        issuer = context.issuer
        if issuer.oin is None:
            raise ConfigError("the rio target needs the sender OIN", key="institution.oin")
        if issuer.onderwijsaanbiedercode is None:
            raise ConfigError("the rio target needs the onderwijsaanbiedercode for its offerings",
                              key="institution.onderwijsaanbiedercode")
        self.settings = settings
        self.context = context
        self.sleep: Sleep = sleep or asyncio.sleep
        self.clock: Clock = clock or _utcnow
        self.client = RioClient(settings, sender_oin=issuer.oin, transport=transport, sleep=self.sleep,
                                clock=self.clock)
        credentials = self.client.credentials
        if credentials is not None:
            left = credentials.not_after - self.clock()
            if left.total_seconds() <= 0:
                raise ConfigError(f"the client certificate ({credentials.subject}) expired on "
                                  f"{credentials.not_after:%Y-%m-%d}", key="targets.rio.cert_file",
                                  hint="DUO refuses expired PKIoverheid certificates; install the renewed one")
            if left.days < EXPIRY_WARNING_DAYS:
                log.warning("RIO: the client certificate (%s) expires on %s, in %d days", credentials.subject,
                            f"{credentials.not_after:%Y-%m-%d}", left.days)

    def describe(self) -> list[str]:
        """What `mcsync validate` / `doctor` can show: endpoints, sender and the certificate's validity."""
        lines = [f"beheren {self.settings.beheren_url}, raadplegen {self.settings.raadplegen_url}",
                 f"sender OIN {self.context.issuer.oin}, recipient OIN {self.settings.recipient_oin}"]
        credentials = self.client.credentials
        if credentials is None:
            lines.append("no client certificate: requests are not signed (DUO requires a signature)")
        else:
            days = (credentials.not_after - self.clock()).days
            lines.append(f"client certificate {credentials.subject}, valid until "
                         f"{credentials.not_after:%Y-%m-%d} ({days} days)")
        return lines

    async def probe(self) -> str:
        """Ask RIO for an own key that cannot exist: an A01161 answer proves TLS, signature and OIN."""
        unknown = OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel=str(uuid.uuid4()))
        exchange = await self.client.call(unknown, what="a probe")
        response = exchange.response
        if response.has_code(policy.NOT_FOUND):
            return "RIO answered (signed lookup accepted)"
        raise policy.lookup_failure(response, what="a probe key")

    def desired(self, item: MicrocredentialRecord | MicrocredentialDefinition) -> str | None:
        if not isinstance(item, MicrocredentialDefinition):
            raise TypeError("the rio target works per microcredential definition, not per record")
        if item.rio is None:
            return None
        try:
            return plan(item, self.context.issuer).content_hash()
        except PlanProblem as problem:
            # not sendable: still a row, so the problem is reported; fixing the definition changes the hash
            return stable_hash({"unsendable": item.model_dump(mode="json"), "problems": problem.problems})

    async def deliver(self, items: Sequence[WorkItem], ledger: Ledger) -> None:
        if self.context.dry_run:
            for item in items:
                self._dry_run(item)
            return
        gate = asyncio.Semaphore(self.settings.concurrency)
        down: list[TargetUnavailable] = []

        async def one(item: WorkItem) -> None:
            async with gate:
                if down:
                    return  # RIO is unreachable: the rest stays queued for the next run
                try:
                    await _Flow(self, item, ledger).run()
                except TargetUnavailable as exc:
                    down.append(exc)

        results = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if down:
            raise down[0]

    def _dry_run(self, item: WorkItem) -> None:
        if item.desired_hash is None:
            log.info("RIO (dry run): %s would be withdrawn", item.key)
            return
        if item.definition is None:
            return
        try:
            plan(item.definition, self.context.issuer)
        except PlanProblem as problem:
            log.warning("RIO (dry run): %s", problem)
            return
        log.info("RIO (dry run): %s would be sent (unit and offering)", item.key)

    async def aclose(self) -> None:
        await self.client.aclose()


class _Flow:
    """One microcredential through RIO, recording every step in the ledger."""

    def __init__(self, target: RioTarget, item: WorkItem, ledger: Ledger) -> None:
        self.target = target
        self.settings = target.settings
        self.client = target.client
        self.item = item
        self.key = item.key
        self.ledger = ledger
        self.progress = Progress.from_remote(item.remote)
        self.writes = 0                 # begin() calls in this delivery
        self.correlation_id = item.remote.correlation_id
        self.label = item.key.removeprefix("mc:")

    # entry ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if self.item.desired_hash is None:
                await self.withdraw()
            elif self.item.definition is None or self.item.definition.rio is None:
                raise PermanentError(f"{self.key}: a RIO delivery was queued without its definition")
            else:
                await self.upsert(self.item.definition)
        except PlanProblem as problem:
            self._park(PermanentError(str(problem), hint="fix the mapping file; the microcredential is sent when "
                                      "its definition changes, or on `mcsync retry`"))
        except PermanentError as error:
            self._park(error)
        except UnknownOutcome as error:
            # the write may have been applied: stays in_flight with its pending note; looked up next time
            self.ledger.note(self.key, note=str(error))
            log.warning("RIO: %s: %s", self.label, error)
        except RetriableError as error:
            if self.writes and self.item.attempts + self.writes >= self.settings.max_attempts:
                self._park(PermanentError(f"{error.message} (gave up after {self.item.attempts + self.writes} "
                                          "attempts)", code=error.code, hint="look at DUO's answer; `mcsync retry` "
                                          "sends it again"))
            else:
                self._defer(error.message, error.retry_after)
        except TargetUnavailable as error:
            # raised for lookups, and for writes that never went out or were refused unprocessed (HTTP 4xx)
            self._defer(error.message, None)
            raise

    def _park(self, error: DeliveryError) -> None:
        self.progress.pending = None
        self.ledger.park(self.key, error=error, remote=self.remote())
        log.warning("RIO: parked %s: %s", self.label, error)

    def _defer(self, reason: str, retry_after: float | None) -> None:
        if self.progress.pending is not None and self.item.state is DeliveryState.IN_FLIGHT and not self.writes:
            # a write of an earlier run is still unresolved: keep the row in_flight
            self.ledger.note(self.key, note=reason)
            return
        self.progress.pending = None
        self.ledger.defer(self.key, reason=reason, retry_after=retry_after, remote=self.remote())
        log.info("RIO: %s deferred: %s", self.label, reason)

    def remote(self) -> RemoteRef:
        return self.progress.to_remote(correlation_id=self.correlation_id)

    def now(self) -> datetime:
        return self.target.clock()

    def _begin(self, op: Literal["unit", "offering", "delete_offering", "delete_unit"], *, hash: str | None = None,
               create: bool = False) -> None:
        self.progress.pending = Pending(op=op, hash=hash, create=create, at=self.now())
        self.ledger.begin([self.key], data=self.progress.begin_data())
        self.writes += 1

    def _submitted(self, note: str) -> None:
        self.ledger.submitted(self.key, remote=self.remote(), note=note)

    def _elapsed(self, since: datetime) -> float:
        return max(0.0, (self.now() - since).total_seconds())

    # lookups --------------------------------------------------------------------------------------
    async def resolve_unit(self) -> str | None:
        """RIO's opleidingseenheidcode for our own key, or None (A01161: not, or not yet, in RIO)."""
        key = self.progress.eigen_sleutel
        assert key is not None
        response = await self._lookup(OpvragenRioIdentificatiecode(eigen_opleidingseenheid_sleutel=key),
                                      what=f"the unit of {self.label} by its own key {key}")
        return response.opleidingseenheidcode if response is not None else None

    async def resolve_offering(self) -> str | None:
        """The aangebodenOpleidingCode RIO shows for our own offering key, or None."""
        code = self.progress.offering_code
        assert code is not None
        response = await self._lookup(OpvragenRioIdentificatiecode(eigen_aangeboden_opleiding_sleutel=code),
                                      what=f"the offering of {self.label} by its own key {code}")
        return response.aangeboden_opleiding_code if response is not None else None

    async def _lookup(self, request: OpvragenRioIdentificatiecode, *, what: str) -> RioResponse | None:
        response = (await self.client.call(request, what=what)).response
        if response.goedgekeurd and (response.opleidingseenheidcode or response.aangeboden_opleiding_code):
            return response
        if not response.goedgekeurd and response.has_code(policy.NOT_FOUND):
            return None
        if response.goedgekeurd:
            raise RetriableError(f"RIO answered the lookup of {what} without a code")
        raise policy.lookup_failure(response, what=what)

    async def poll(self, lookup: Literal["unit", "offering"], *, budget: float,
                   until_gone: bool = False) -> tuple[str | None, float]:
        """Look up the unit or offering until it shows (or is gone); (last answer, seconds waited)."""
        resolve = self.resolve_unit if lookup == "unit" else self.resolve_offering
        intervals = self.settings.poll_intervals
        waited, round_ = 0.0, 0
        while True:
            found = await resolve()
            if (found is None) == until_gone:
                return found, waited
            if waited >= budget:
                return found, waited
            pause = min(intervals[min(round_, len(intervals) - 1)], max(budget - waited, 0.0))
            await self.target.sleep(pause)
            waited += pause
            round_ += 1

    async def read_unit(self, code: str) -> UnitSnapshot | None:
        """RIO's copy of unit `code` (opvragen_opleidingseenheid), or None if RIO does not give it."""
        exchange = await self.client.call(OpvragenOpleidingseenheid(code), what=f"the unit of {self.label}")
        return unit_snapshot(exchange.response) if exchange.response.goedgekeurd else None

    # upsert ---------------------------------------------------------------------------------------
    async def upsert(self, definition: MicrocredentialDefinition) -> None:
        plan_ = plan(definition, self.target.context.issuer)
        if self.progress.withdrawing:
            # the definition came back while its withdrawal was under way: finish that, then start afresh
            if not await self.remove_from_rio():
                return
            self.progress = Progress()
        progress = self.progress
        if progress.eigen_sleutel not in (None, plan_.unit.eigen_sleutel):
            log.warning("RIO: %s now has own key %s instead of %s; it is registered as a new unit (the old "
                        "one stays in RIO)", self.label, plan_.unit.eigen_sleutel, progress.eigen_sleutel)
            self.progress = progress = Progress()
        if progress.unit_code and progress.unit_kind not in (None, plan_.unit.kind):
            raise PermanentError(
                f"{self.label} is registered in RIO as {progress.unit_kind} {progress.unit_code}; RIO cannot turn "
                f"it into a {plan_.unit.kind}",
                hint="keep rio.kind, or give the microcredential a new rio.eigen_sleutel and rio.offering_code "
                     "(the old unit then stays in RIO until someone deletes it)")
        if progress.offering_code not in (None, plan_.offering.code) and progress.offering is not None:
            log.warning("RIO: %s now has offering code %s instead of %s; the old offering stays in RIO",
                        self.label, plan_.offering.code, progress.offering_code)
            progress.offering = None
        progress.eigen_sleutel = plan_.unit.eigen_sleutel
        progress.offering_code = plan_.offering.code
        progress.unit_kind = plan_.unit.kind
        code = await self.ensure_unit(plan_)
        if code is None:
            return
        if not await self.ensure_offering(plan_, code):
            return
        self.ledger.confirm(self.key, delivered_hash=plan_.content_hash(), remote=self.remote(), note=None)
        log.info("RIO: %s is registered as unit %s with offering %s", self.label, code, plan_.offering.code)

    async def ensure_unit(self, plan_: Plan) -> str | None:
        progress = self.progress
        pending = progress.pending
        if pending is not None and pending.op == "unit":
            return await self.reconcile_unit(plan_, pending)
        if progress.unit is not None and progress.unit_code and progress.unit.hash == plan_.unit_hash:
            if progress.unit.visible:
                return progress.unit_code
            return await self.confirm_unit(progress.unit_code, since=progress.unit.at)
        if progress.unit_code is None:
            found = await self.resolve_unit()
            if found is not None:
                return await self.adopt_unit(plan_, found)
        return await self.write_unit(plan_, progress.unit_code)

    async def adopt_unit(self, plan_: Plan, code: str) -> str | None:
        """RIO shows a unit under our own key: take its code; write only if its content differs."""
        progress = self.progress
        if progress.unit_code not in (None, code):
            raise PermanentError(f"RIO shows the own key of {self.label} under unit {code}, but mcsync "
                                 f"registered it as {progress.unit_code}", hint="check both units in RIO")
        snapshot = await self.read_unit(code)
        if snapshot is not None and snapshot.kind != plan_.unit.kind:
            raise PermanentError(f"RIO holds a {snapshot.kind} ({code}) under the own key of {self.label}, which "
                                 f"is to be a {plan_.unit.kind}",
                                 hint="give the microcredential its own rio.eigen_sleutel, or fix rio.kind")
        progress.unit_code, progress.unit_seen, progress.pending = code, True, None
        if snapshot is not None and holds(snapshot, plan_.unit):
            progress.unit = Part(hash=plan_.unit_hash, visible=True, at=self.now())
            self.ledger.note(self.key, remote=self.remote(), note=f"unit {code} found in RIO with this content")
            return code
        return await self.write_unit(plan_, code)

    async def reconcile_unit(self, plan_: Plan, pending: Pending) -> str | None:
        """A unit write of an earlier run has no recorded outcome: look before sending anything."""
        found = await self.resolve_unit()
        if found is None and pending.create:
            remaining = self.settings.confirm_timeout - self._elapsed(pending.at)
            if remaining > 0:  # the create may sit in RIO's queue: give it the time a confirm would
                found, _ = await self.poll("unit", budget=remaining)
        if found is not None:
            return await self.adopt_unit(plan_, found)
        self.progress.pending = None
        if self.progress.unit_code and not pending.create:
            log.warning("RIO: unit %s of %s is no longer in RIO; registering it again", self.progress.unit_code,
                        self.label)
            self.progress.unit_code, self.progress.unit_seen, self.progress.unit = None, False, None
        return await self.write_unit(plan_, self.progress.unit_code)

    async def write_unit(self, plan_: Plan, code: str | None) -> str | None:
        progress = self.progress
        create = code is None
        # an earlier create of ours may have been applied without us learning its code
        earlier_create = create and progress.create_sent_at is not None and not progress.unit_seen
        if create:
            progress.create_sent_at = self.now()   # recorded by begin(), before the call
        self._begin("unit", hash=plan_.unit_hash, create=create)
        assert progress.pending is not None
        sent_at = progress.pending.at
        exchange = await self.client.call(AanleverenOpleidingseenheid(plan_.unit, code),
                                          what=f"the unit of {self.label}")
        self.correlation_id = exchange.identificatiecode
        response = exchange.response
        if not response.goedgekeurd:
            if earlier_create and response.has_code(policy.KEY_IN_USE):
                progress.pending = None
                self._submitted("RIO says the own key is in use: an earlier create of this unit is still being "
                                "processed; waiting until RIO shows it")
                found, waited = await self.poll("unit", budget=self.settings.confirm_timeout)
                if found is None:
                    self._submitted(f"RIO has not shown the unit after {waited:.0f} s although its own key is in "
                                    "use; looked up again on the next run")
                    return None
                return await self.adopt_unit(plan_, found)
            raise policy.rejection(response, what=f"the unit of {self.label}")
        new_code = response.opleidingseenheidcode or code
        progress.pending = None
        progress.unit = Part(hash=plan_.unit_hash, visible=False, at=sent_at)
        if new_code is None:  # accepted without a code: learn it from the lookup
            self._submitted("RIO accepted the unit without returning its code; waiting until it shows")
            found, _ = await self.poll("unit", budget=self.settings.confirm_timeout)
            if found is None:
                return None
            new_code = found
        progress.unit_code = new_code
        self._submitted(f"unit {new_code} sent; waiting until RIO shows it")
        log.info("RIO: %s: unit %s %s", self.label, new_code, "created" if create else "updated")
        return await self.confirm_unit(new_code, since=sent_at)

    async def confirm_unit(self, code: str, *, since: datetime) -> str | None:
        found, waited = await self.poll("unit", budget=self.settings.confirm_timeout)
        progress = self.progress
        if found is None:
            self._submitted(f"RIO accepted unit {code} at {since:%Y-%m-%d %H:%M:%S} UTC but has not shown it after "
                            f"{waited:.0f} s of waiting (RIO's queue may be slow); checked again on the next run")
            log.warning("RIO: unit %s of %s not visible after %.0f s", code, self.label, waited)
            return None
        if found != code:
            raise PermanentError(f"RIO accepted the unit of {self.label} as {code} but shows its own key under "
                                 f"{found}", hint="check both units in RIO")
        assert progress.unit is not None
        progress.unit = progress.unit.model_copy(update={"visible": True})
        progress.unit_seen = True
        self.ledger.note(self.key, remote=self.remote(), note=f"unit {code} visible in RIO")
        return code

    # offering -------------------------------------------------------------------------------------
    async def ensure_offering(self, plan_: Plan, code: str) -> bool:
        progress = self.progress
        offering_hash = plan_.offering_hash(code)
        pending = progress.pending
        if pending is not None and pending.op == "offering":
            found = await self.resolve_offering()
            progress.pending = None
            if found == plan_.offering.code and pending.create and pending.hash == offering_hash:
                progress.offering = Part(hash=offering_hash, visible=True, at=pending.at)
                return True
            return await self.write_offering(plan_, code, offering_hash)
        if progress.offering is not None and progress.offering.hash == offering_hash:
            if progress.offering.visible:
                return True
            return await self.confirm_offering(since=progress.offering.at)
        return await self.write_offering(plan_, code, offering_hash)

    async def write_offering(self, plan_: Plan, code: str, offering_hash: str) -> bool:
        progress = self.progress
        self._begin("offering", hash=offering_hash, create=progress.offering is None)
        assert progress.pending is not None
        sent_at = progress.pending.at
        exchange = await self.client.call(AanleverenAangebodenOpleiding(plan_.offering, code),
                                          what=f"the offering of {self.label}")
        self.correlation_id = exchange.identificatiecode
        if not exchange.response.goedgekeurd:
            raise policy.rejection(exchange.response, what=f"the offering of {self.label}")
        progress.pending = None
        progress.offering = Part(hash=offering_hash, visible=False, at=sent_at)
        self._submitted(f"offering {plan_.offering.code} sent; waiting until RIO shows it")
        return await self.confirm_offering(since=sent_at)

    async def confirm_offering(self, *, since: datetime) -> bool:
        found, waited = await self.poll("offering", budget=self.settings.confirm_timeout)
        progress = self.progress
        assert progress.offering is not None
        if found is None:
            self._submitted(f"RIO accepted offering {progress.offering_code} at {since:%Y-%m-%d %H:%M:%S} UTC but "
                            f"has not shown it after {waited:.0f} s of waiting; checked again on the next run")
            return False
        progress.offering = progress.offering.model_copy(update={"visible": True})
        return True

    # withdrawal -----------------------------------------------------------------------------------
    async def withdraw(self) -> None:
        progress = self.progress
        if progress.eigen_sleutel is None and progress.offering_code is None:
            self.ledger.confirm(self.key, delivered_hash=None, remote=self.remote(), note="nothing in RIO")
            return
        if not await self.remove_from_rio():
            return
        self.progress = Progress(eigen_sleutel=progress.eigen_sleutel, offering_code=progress.offering_code)
        self.ledger.confirm(self.key, delivered_hash=None, remote=self.remote(), note="withdrawn from RIO")
        log.info("RIO: %s withdrawn", self.label)

    async def remove_from_rio(self) -> bool:
        """Delete the offering, wait until RIO no longer shows it, then the same for the unit.

        False when RIO still shows something: the row is `submitted` and the next run goes on.
        """
        progress = self.progress
        progress.withdrawing = True
        pending = progress.pending
        if progress.offering_code is not None and not await self.delete_offering(pending):
            return False
        return progress.eigen_sleutel is None or await self.delete_unit(pending)

    async def delete_offering(self, pending: Pending | None) -> bool:
        found = await self.resolve_offering()
        if found is not None and "offering" not in self.progress.deleted:
            if pending is not None and pending.op == "delete_offering":
                # a delete of an earlier run may have been applied: give it the confirm time first
                remaining = self.settings.confirm_timeout - self._elapsed(pending.at)
                found, _ = await self.poll("offering", budget=max(remaining, 0.0), until_gone=True)
            if found is not None:
                self._begin("delete_offering")
                exchange = await self.client.call(VerwijderenAangebodenOpleiding(found),
                                                  what=f"the offering of {self.label}")
                self.correlation_id = exchange.identificatiecode
                response = exchange.response
                if not response.goedgekeurd and not response.has_code(policy.OFFERING_UNKNOWN):
                    raise policy.rejection(response, what=f"deleting the offering of {self.label}")
                self.progress.pending, self.progress.offering = None, None
                self.progress.deleted.append("offering")
                self._submitted("offering deleted; waiting until RIO no longer shows it")
        if found is not None:
            still, waited = await self.poll("offering", budget=self.settings.confirm_timeout, until_gone=True)
            if still is not None:
                self._submitted(f"RIO still shows the deleted offering after {waited:.0f} s; checked again on "
                                "the next run")
                return False
        self.progress.offering = None
        return True

    async def delete_unit(self, pending: Pending | None) -> bool:
        found = await self.resolve_unit()
        if pending is not None and "unit" not in self.progress.deleted:
            # a delete of an earlier run may still be applied, or a create may still appear
            remaining = max(self.settings.confirm_timeout - self._elapsed(pending.at), 0.0)
            if found is not None and pending.op == "delete_unit":
                found, _ = await self.poll("unit", budget=remaining, until_gone=True)
            elif found is None and pending.op == "unit" and pending.create:
                found, _ = await self.poll("unit", budget=remaining)
        if found is not None and "unit" not in self.progress.deleted:
            self._begin("delete_unit")
            exchange = await self.client.call(VerwijderenOpleidingseenheid(found), what=f"the unit of {self.label}")
            self.correlation_id = exchange.identificatiecode
            if not exchange.response.goedgekeurd:
                raise policy.rejection(exchange.response, what=f"deleting unit {found} of {self.label}")
            progress = self.progress
            progress.pending, progress.unit, progress.unit_seen, progress.unit_code = None, None, False, None
            progress.deleted.append("unit")
            self._submitted(f"unit {found} deleted; waiting until RIO no longer shows it")
        if found is not None:
            still, waited = await self.poll("unit", budget=self.settings.confirm_timeout, until_gone=True)
            if still is not None:
                self._submitted(f"RIO still shows deleted unit {found} after {waited:.0f} s; checked again on "
                                "the next run")
                return False
        return True
