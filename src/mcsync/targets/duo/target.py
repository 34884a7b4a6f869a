"""The DUO register target: awarded microcredentials go to the register in batch deliveries.

The register (duo-register.md) takes a `<levering>` of up to 1000 records under a leveringId the
client chooses, answers 202, processes it later and then serves a report with one `regel` per
record. It is idempotent by leveringId: the same bytes posted again are the same delivery. And it
is state-based by recordId: a record is registered once, the latest accepted version wins. mcsync
builds on both: whatever happens, a record is in at most one open delivery, and a delivery that may
have reached the register is only ever looked up or re-posted byte for byte, never re-sent under a
new leveringId.

Algorithm (one `deliver()` call)
--------------------------------
1. Deliveries that the register took in an earlier run (items `submitted`) are polled first (step 5):
   their reports are ready.
2. Items `in_flight` belong to a delivery whose POST may or may not have arrived (a crash, a
   connection that never answered). Per leveringId: `GET /leveringen/{id}`; 200 → the register has
   it: the items become `submitted` and are polled; 404 → it never arrived: the identical body,
   kept in the ledger, is posted again under the same leveringId. Should that body be gone, each
   record is compared with `GET /resultaten/{recordId}` instead (same content → done; else it goes
   again in a new delivery, which the 404 proved safe).
3. Items `pending` are prepared without any call. A withdrawal (accepted before, no longer passed)
   becomes an `<intrekking>`. Everything else needs an identity the register knows (BSN passing the
   elfproef, onderwijsnummer, or student number with date of birth), else it is parked with what to
   add where; and a unit reference: the opleidingseenheidcode RIO confirmed (read from the rio
   target's ledger row), else the record waits (`pending`, with the reason) until RIO has it; with
   RIO disabled, the unit's own key, which the register answers with R102 (parked as such).
4. The prepared records go in batches of at most `batch_size` records and `max_body_bytes`, each
   checked against the register's schema (a record that does not fit is parked, not sent). Per
   batch (`concurrency` of them on their way at a time, so the next body is built while the register
   reads the last): a fresh leveringId (uuid4); `ledger.begin()` stores it with the exact body *before* the
   POST; the POST is retried with the identical bytes on 429/503, 5xx and transport trouble
   (`client.py`; the policy per answer is the table in `errors.py`); 202 →
   `submitted`. 413 and XSD errors split the batch (a lone culprit is parked); 409 is a bug signal
   (logged at ERROR, parked, never re-sent); 401/403 stop the target for the run.
5. The deliveries posted in this run are kept without their records until their reports are read:
   at the start of each later chunk, those whose report may be ready (asked once, without waiting;
   a delivery still in processing is asked again after its Retry-After), and all the rest in
   `finish()`, which the engine calls after its last chunk and which waits for them. Reading them
   as they come keeps the work of the last chunk small (and the due work each chunk streams
   through), instead of applying every report of a long run at its end. The reports are asked for
   `concurrency` at a time (read-only), so the next ones arrive while one is applied. Waiting honours
   Retry-After, until `verwerkt` or until `poll_budget` seconds of waiting are spent in this run;
   what is left is read back on the next run. Per `regel`:
   accepted (R000, R301) → confirmed; R900 → sent again later in a new delivery; R401 on an
   intrekking → done (nothing was held); every other rejection → parked with code and text.

Crash table (the process dies ...)
----------------------------------
    before begin()                    pending     nothing was sent; it goes normally next run
    after begin(), before the POST    in_flight   GET → 404 → the stored body is re-posted under the
                                                  same leveringId: one delivery
    during the POST / before 202      in_flight   GET → 200 (it arrived: polled) or 404 (re-posted
                                                  byte for byte; a late arrival makes it idempotent)
    after 202, before submitted()     in_flight   GET → 200 → submitted → polled
    while polling                     submitted   polled on the next run; the report stays there
    while applying a report           submitted   one transaction: all of the report or none of it
                                                  is applied; the rest is polled again
Within a run, a POST without an answer is retried with the identical bytes (same leveringId), and
after the attempts the items stay in_flight for the next run. A delivery the register has forgotten
(404 for a `submitted` one) is reconciled per record through `GET /resultaten/{recordId}`.

The body is stored compressed in the first item's ledger row (every item keeps the leveringId, the
body's SHA-256 and which row holds it), and dropped once the register has taken it. Re-building it
from the records instead would not be safe: a record may change between a crash and the restart,
and a changed body under the same leveringId is refused (409).

Known limit: the unit reference enters `desired()` as "this unit's RIO code", not the code itself
(the code is only known at delivery); RIO codes are stable, and a changed own key changes the hash.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import ClassVar, Literal
from uuid import uuid4

import httpx
from lxml import etree
from pydantic import BaseModel, ConfigDict, ValidationError

from ...errors import ConfigError, PermanentError, TargetUnavailable
from ...http import Sleep
from ...record import MicrocredentialDefinition, MicrocredentialRecord, stable_hash
from ..base import DeliveryState, Ledger, RemoteRef, TargetContext, TargetSettings, WorkItem, catalogue_key
from . import messages, payload
from ...personal_numbers import redact
from .client import Answer, RegisterClient, RetryPolicy
from .errors import Action, Outcome, regel_outcome, signal_rule
from .messages import MessageError, Signaal, Verwerkingsverslag
from .payload import Eenheid, Unsendable
from .settings import DuoSettings

log = logging.getLogger("mcsync.targets.duo")

Kind = Literal["resultaat", "intrekking"]


class Sent(BaseModel):
    """What an item's ledger row keeps while its delivery is open (RemoteRef.data)."""

    model_config = ConfigDict(extra="ignore")

    levering_id: str
    body_sha256: str
    holder: str                        # key of the row that keeps the body until the register took it
    kind: Kind
    sent_hash: str | None = None       # the desired_hash that went out (None: an intrekking)
    unit: str | None = None            # the unit reference that went out
    body: str | None = None            # zlib + base64 of the exact body (holder row only)

    @classmethod
    def of(cls, item: WorkItem) -> Sent | None:
        return cls.parse(item.remote.data)

    @classmethod
    def parse(cls, data: dict[str, object]) -> Sent | None:
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None


#: An item in an open delivery, with what was sent for it.
_Open = tuple[WorkItem, Sent]


@dataclass
class _Entry:
    """One record ready to go: its element and what the ledger must remember about it."""

    item: WorkItem
    kind: Kind
    el: etree._Element
    sent_hash: str | None
    unit: str | None
    _xml: bytes | None = field(default=None, repr=False)

    @property
    def xml(self) -> bytes:
        """The element on its own (`messages.serialized`): measured for batching, then joined into the
        body (`messages.levering_of`), so it is serialized once."""
        if self._xml is None:
            self._xml = messages.serialized(self.el)
        return self._xml

    @property
    def size(self) -> int:
        return len(self.xml)    # = messages.element_size(self.el)


@dataclass(frozen=True)
class _Hold:
    """An item that cannot go now: wait (defer) or park, with the text a person reads."""

    reason: str
    park_code: str | None = None       # None: wait; else park with this code


def _slim(item: WorkItem) -> WorkItem:
    """An open item as kept until its report is read: without its record (memory stays flat)."""
    return replace(item, record=None)


def _pack(body: bytes) -> str:
    # Level 1: the packed body only lives in the ledger until the register has taken the delivery
    # (submitted() drops it), and compresses about 2.5x faster than level 6 for ~25% more bytes.
    # Any level unpacks the same way, so bodies packed before stay readable.
    return base64.b64encode(zlib.compress(body, 1)).decode("ascii")


def _unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class DuoRegisterTarget:
    """Delivers awarded microcredentials to the DUO-style register (see the module docstring)."""

    name: ClassVar[str] = "duo"
    chunk_size: ClassVar[int] = 20_000   # 20 deliveries posted, then their reports polled together
    unit: ClassVar[Literal["record", "microcredential"]] = "record"
    depends_on: ClassVar[tuple[str, ...]] = ("rio",)
    Settings: ClassVar[type[TargetSettings]] = DuoSettings

    def __init__(self, settings: TargetSettings, context: TargetContext, *,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None) -> None:
        if not isinstance(settings, DuoSettings):
            settings = DuoSettings.model_validate(settings.model_dump())
        issuer = context.issuer
        if not issuer.oin:
            raise ConfigError("the duo target needs the institution's OIN", key="institution.oin",
                              hint="set oin = \"...\" (20 characters) under [institution]")
        if not issuer.onderwijsaanbiedercode:
            raise ConfigError("the duo target needs the institution's onderwijsaanbiedercode",
                              key="institution.onderwijsaanbiedercode", hint="e.g. \"110A133\", from RIO")
        if not settings.api_url:
            raise ConfigError("api_url is required", key="targets.duo.api_url")
        self.settings = settings
        self.context = context
        self.oin: str = issuer.oin
        self.aanbiedercode: str = issuer.onderwijsaanbiedercode
        self.brin = issuer.brin
        self.rio_enabled = bool(context.extra.get("rio_enabled", True))
        self._sleep: Sleep = sleep or asyncio.sleep
        self._register = RegisterClient(
            settings.api_url, timeout=settings.timeout, ca_file=settings.ca_file, cert_file=settings.cert_file,
            key_file=settings.key_file, transport=transport, sleep=self._sleep,
            retry=RetryPolicy(settings.retry_attempts, settings.retry_initial, settings.retry_max))
        self._waited = 0.0                # seconds this run spent waiting for reports (poll_budget)
        self._opened: dict[str, list[_Open]] = {}    # this run's deliveries whose reports are not read yet
        self._ask_at: dict[str, float] = {}          # ... when to ask for each one's report (time.monotonic)
        self._codes: dict[str, str] = {}              # record id → microcredential code (RIO disabled only)
        self._units: dict[str, Eenheid | str] = {}   # per deliver() call: unit code → reference or reason

    # the payload hash -----------------------------------------------------------------------------------
    def desired(self, item: MicrocredentialRecord | MicrocredentialDefinition) -> str | None:
        if not isinstance(item, MicrocredentialRecord) or not item.awardable:
            return None
        return stable_hash(payload.hash_view(item, onderwijsaanbiedercode=self.aanbiedercode, brin=self.brin,
                                             rio_enabled=self.rio_enabled))

    async def aclose(self) -> None:
        await self._register.aclose()

    # deliver ---------------------------------------------------------------------------------------
    async def deliver(self, items: Sequence[WorkItem], ledger: Ledger) -> None:
        if self.context.dry_run:
            log.info("dry run: %d items would be brought in line with the DUO register", len(items))
            return
        self._units.clear()               # RIO may have confirmed units since the last call
        opened: dict[str, list[_Open]] = defaultdict(list)      # posted in this run: read in finish()
        earlier: dict[str, list[_Open]] = defaultdict(list)
        orphans: list[WorkItem] = []
        for state in (DeliveryState.SUBMITTED, DeliveryState.IN_FLIGHT):
            groups: dict[str, list[_Open]] = defaultdict(list)
            for item in items:
                if item.state is state:
                    sent = Sent.of(item)
                    if sent is None:
                        orphans.append(item)
                    else:
                        groups[sent.levering_id].append((item, sent))
            for levering_id, group in groups.items():
                if state is DeliveryState.SUBMITTED:
                    earlier[levering_id].extend(group)
                else:
                    opened.update(await self._recover(levering_id, group, ledger))
        if earlier:            # posted in an earlier run: their reports are ready, read them now (with records)
            await self._poll(earlier, ledger)
        if orphans:
            await self._reconcile(orphans, ledger, why="the ledger does not say which delivery holds it")
        await self._read_ready(ledger)     # posted in earlier chunks of this run: what is processed by now
        entries: list[_Entry] = []
        held: Counter[str] = Counter()
        for item in items:
            if item.state is DeliveryState.PENDING:
                built = self._prepare(item, ledger)
                if isinstance(built, _Hold):
                    held["parked" if built.park_code else "waiting"] += 1
                elif built is not None:
                    entries.append(built)
        if held:
            log.info("DUO register: %d records waiting (see `mcsync status`), %d parked (see `mcsync failures`)",
                     held["waiting"], held["parked"])
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def send(batch: list[_Entry]) -> None:
            async with gate:     # the next body is built while earlier ones are on their way
                opened.update(await self._send(batch, ledger))

        try:
            async with asyncio.TaskGroup() as group:
                for batch in self._batches(entries):
                    group.create_task(send(batch))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None       # TargetUnavailable, ShutdownRequested: as raised
        finally:
            asked = time.monotonic()     # read at the start of the next chunk, or in finish()
            for levering_id, group_items in opened.items():
                # extend: one delivery's items may come in several chunks
                self._opened.setdefault(levering_id, []).extend((_slim(item), sent) for item, sent in group_items)
                self._ask_at.setdefault(levering_id, asked)
                if not self.rio_enabled:                       # for the R102 text: which unit went by own key
                    self._codes.update((item.key, item.record.microcredential.code)
                                       for item, _ in group_items if item.record is not None)

    async def finish(self, ledger: Ledger) -> None:
        """After the last deliver() of a run: read the reports of every delivery still open, waiting
        for them (honouring Retry-After) at most `poll_budget` seconds; the rest is read next run."""
        opened, self._opened, self._ask_at = self._opened, {}, {}
        await self._poll(opened, ledger)

    # 2. recovery ------------------------------------------------------------------------------------
    async def _recover(self, levering_id: str, group: list[_Open], ledger: Ledger) -> dict[str, list[_Open]]:
        """Settle a delivery whose POST may have arrived; the deliveries now open at the register."""
        answer = await self._register.get(f"/leveringen/{levering_id}")
        if answer.action is Action.OK:
            log.info("delivery %s had reached the register before mcsync stopped; reading its report", levering_id)
            with ledger.transaction():
                for item, sent in group:
                    self._submitted(item, sent, ledger)
            return {levering_id: group}
        body = self._stored_body(levering_id, group, ledger)
        if body is None:
            await self._reconcile([item for item, _ in group], ledger,
                                  why=f"delivery {levering_id} never reached the register and its body is no "
                                      "longer stored")
            return {}
        elements = {el.get("recordId"): el for el in messages.parse_xml(body)}
        entries = [_Entry(item, sent.kind, elements[item.key], sent.sent_hash, sent.unit)
                   for item, sent in group if item.key in elements]
        missing = [item for item, _ in group if item.key not in elements]
        if missing:
            await self._reconcile(missing, ledger, why=f"delivery {levering_id} does not hold this record")
        if not entries:
            return {}
        log.warning("delivery %s never reached the register; posting the identical body again", levering_id)
        return await self._send(entries, ledger, reuse=(levering_id, body))

    def _stored_body(self, levering_id: str, group: list[_Open], ledger: Ledger) -> bytes | None:
        first = group[0][1]
        packed = next((sent.body for item, sent in group if item.key == first.holder and sent.body), None)
        if packed is None:
            found = ledger.lookup(self.name, first.holder)
            if found is not None and found[2].correlation_id == levering_id:
                holder = Sent.parse(found[2].data)
                packed = holder.body if holder else None
        if packed is None:
            return None
        body = _unpack(packed)
        if _sha256(body) != first.body_sha256:
            log.error("the stored body of delivery %s does not match its SHA-256; it is not posted again", levering_id)
            return None
        return body

    # 3. preparing -------------------------------------------------------------------------------------
    def _prepare(self, item: WorkItem, ledger: Ledger) -> _Entry | _Hold | None:
        """A pending item's entry; or the hold applied to it; None when there is nothing to do."""
        if item.desired_hash is None and item.delivered_hash is None:
            ledger.confirm(item.key, delivered_hash=None, remote=item.remote)  # nothing wanted, nothing held
            return None
        built = self._build(item, ledger)
        if isinstance(built, _Hold):
            self._hold(item, built, ledger)
        return built

    def _build(self, item: WorkItem, ledger: Ledger) -> _Entry | _Hold:
        """The element an item needs at the register now, or why it cannot go (no calls, no writes)."""
        if item.wants_withdrawal:
            entry = payload.intrekking(item.key, item.record, item.withdraw_reason)
            return _Entry(item, "intrekking", messages.element(entry), None, None)
        record = item.record
        if record is None:
            return _Hold("the record is missing from the state store; run `mcsync sync` again", "no-record")
        try:
            person = payload.deelnemer(record.learner)  # identity problems first: a person must act on those
            unit = self._unit(record, ledger)
            if isinstance(unit, str):
                return _Hold(unit)
            entry = payload.resultaat(record, unit, onderwijsaanbiedercode=self.aanbiedercode, person=person)
            element = messages.element(entry)
        except Unsendable as exc:
            return _Hold(exc.message, exc.code)
        except ValueError:  # lxml refuses text XML cannot carry; never echo it (it may be personal data)
            return _Hold(f"a field of student {record.learner.student_number}'s record holds characters XML cannot "
                         "carry; correct the source export or the learners directory", "invalid-data")
        return _Entry(item, "resultaat", element, item.desired_hash, unit.label)

    def _unit(self, record: MicrocredentialRecord, ledger: Ledger) -> Eenheid | str:
        """The unit reference to send, or the reason to wait for RIO."""
        code = record.microcredential.code
        if code not in self._units:
            self._units[code] = self._lookup_unit(record, ledger)
        return self._units[code]

    def _lookup_unit(self, record: MicrocredentialRecord, ledger: Ledger) -> Eenheid | str:
        code = record.microcredential.code
        if not self.rio_enabled:
            return Eenheid(eigen_sleutel=payload.own_unit_key(record, self.brin))
        found = ledger.lookup("rio", catalogue_key(code))
        if found is not None:
            remote = found[2]
            for candidate in (remote.remote_id, remote.data.get("opleidingseenheidcode")):
                if isinstance(candidate, str) and payload.UNIT_CODE.match(candidate):
                    return Eenheid(code=candidate)
        reason = f"waiting for RIO to confirm unit {code} (opleidingseenheidcode)"
        if found is None:
            return reason + "; RIO has no entry for it yet"
        if found[0] is DeliveryState.FAILED:
            return reason + "; RIO has parked it: see `mcsync failures --target rio`"
        return reason

    def _hold(self, item: WorkItem, hold: _Hold, ledger: Ledger) -> None:
        if hold.park_code is None:
            if item.note != hold.reason or item.state is not DeliveryState.PENDING:
                ledger.defer(item.key, reason=hold.reason)
            log.debug("record %s waits: %s", item.key, hold.reason)
        else:
            ledger.park(item.key, error=PermanentError(hold.reason, code=hold.park_code))
            log.debug("record %s parked: %s", item.key, hold.reason)

    def _batches(self, entries: list[_Entry]) -> list[list[_Entry]]:
        envelope = messages.envelope_size(str(uuid4()), self.oin)
        batches: list[list[_Entry]] = []
        batch: list[_Entry] = []
        size = envelope
        for entry in entries:
            grows = entry.size
            if batch and (len(batch) >= self.settings.batch_size or size + grows > self.settings.max_body_bytes):
                batches.append(batch)
                batch, size = [], envelope
            batch.append(entry)
            size += grows
        if batch:
            batches.append(batch)
        return batches

    # 4. sending ----------------------------------------------------------------------------------------
    async def _send(self, entries: list[_Entry], ledger: Ledger, *,
                    reuse: tuple[str, bytes] | None = None) -> dict[str, list[_Open]]:
        """Post one delivery (fresh, or `reuse`d byte for byte); the open deliveries it leaves."""
        if reuse is None:
            levering_id = str(uuid4())
            body = messages.levering_of(levering_id, self.oin, datetime.now(UTC), [e.xml for e in entries])
            errors = messages.schema_errors(messages.parse_xml(body))
            if errors:
                return await self._drop_misfits(entries, ledger, errors[0])
            sents = self._sents(levering_id, _sha256(body), entries)
            self._begin(levering_id, body, entries, sents, ledger)
            log.info("delivery %s: posting %d records (%d bytes)", levering_id, len(entries), len(body))
        else:
            levering_id, body = reuse
            sents = self._sents(levering_id, _sha256(body), entries)
        answer = await self._register.post_levering(levering_id, body)
        n = len(entries)
        if answer.action is Action.SUBMITTED:
            opened = [(e.item, sent) for e, sent in zip(entries, sents, strict=True)]
            with ledger.transaction():
                for item, sent in opened:
                    self._submitted(item, sent, ledger)
            return {levering_id: opened}
        if answer.action is Action.SPLIT:
            if n == 1:
                self._park_all(entries, ledger, f"the register refused this record ({answer.describe()})",
                               answer.code or str(answer.status), levering_id)
                return {}
            log.warning("delivery %s refused (%s); splitting its %d records", levering_id, answer.describe(), n)
            opened = await self._send(entries[: n // 2], ledger)
            opened.update(await self._send(entries[n // 2:], ledger))
            return opened
        if answer.action is Action.BUG:
            log.error("BUG SIGNAL: the register answered %s for delivery %s: it holds a different body under this "
                      "leveringId. mcsync never changes a body it posted, so this is a bug or another client "
                      "reuses our leveringIds. The %d records are parked, not sent again.",
                      answer.describe(), levering_id, n)
            self._park_all(entries, ledger, f"the register holds a different body under delivery {levering_id} "
                           "(LEV409); mcsync parked the record instead of sending it again: report this as a bug; "
                           "`mcsync retry` then sends it in a new delivery", "LEV409", levering_id)
            return {}
        if answer.action is Action.PARK:
            self._park_all(entries, ledger, f"the register refused delivery {levering_id} ({answer.describe()})",
                           answer.code or str(answer.status), levering_id)
            return {}
        if answer.action is Action.UNKNOWN:
            for e in entries:
                ledger.note(e.item.key, note=f"no answer from the register for delivery {levering_id}; it is looked "
                                             "up before anything is sent again")
            raise TargetUnavailable(f"the register did not answer delivery {levering_id} ({answer.describe()})",
                                    code=answer.code)
        # STOP, BACK_OFF: the register stored nothing
        with ledger.transaction():
            for e in entries:
                ledger.defer(e.item.key, reason=f"the register did not take delivery {levering_id} "
                                                f"({answer.describe()}); it goes again on the next run",
                             retry_after=answer.retry_after, remote=self._not_taken(e.item, levering_id))
        if answer.action is Action.STOP:
            raise TargetUnavailable(f"the register refused us ({answer.describe()})", code=answer.code,
                                    hint="check [targets.duo] cert_file and key_file, and that the certificate "
                                         "carries [institution] oin; the work stays queued")
        raise TargetUnavailable(f"the register cannot take deliveries now ({answer.describe()})", code=answer.code)

    async def _drop_misfits(self, entries: list[_Entry], ledger: Ledger, first_error: str) -> dict[str, list[_Open]]:
        """Park the records that do not fit the schema (found one by one), then send the rest."""
        probe_id = str(uuid4())
        fits, misfits = [], []
        for e in entries:
            one = messages.levering_of(probe_id, self.oin, datetime.now(UTC), [e.xml])
            errors = messages.schema_errors(messages.parse_xml(one))
            (misfits if errors else fits).append((e, errors))
        if not misfits:  # the envelope itself is wrong: a configuration problem, not a record's
            raise ConfigError(f"the delivery does not match the register's schema: {first_error}",
                              key="institution.oin")
        for e, errors in misfits:
            ledger.park(e.item.key, error=PermanentError(
                f"the record does not match the register's schema ({errors[0]}); correct the data", code="XSD001"))
        return await self._send([e for e, _ in fits], ledger) if fits else {}

    @staticmethod
    def _sents(levering_id: str, digest: str, entries: list[_Entry]) -> list[Sent]:
        """What the row of each entry records about the delivery (without the body; see _begin)."""
        holder = entries[0].item.key
        return [Sent(levering_id=levering_id, body_sha256=digest, holder=holder, kind=e.kind,
                     sent_hash=e.sent_hash, unit=e.unit) for e in entries]

    @staticmethod
    def _begin(levering_id: str, body: bytes, entries: list[_Entry], sents: list[Sent], ledger: Ledger) -> None:
        """Store the leveringId and the exact body before the POST (one commit); the holder (first
        entry) keeps the body, the other rows hold `body: None` (None removes stale keys)."""
        packed = _pack(body)
        begin = ledger.begin      # looked up once: the engine's ledger wrapper forwards it by __getattr__
        with ledger.transaction():
            for e, sent in zip(entries, sents, strict=True):
                data = sent.model_dump()
                if e.item.key == sent.holder:
                    data["body"] = packed
                begin([e.item.key], correlation_id=levering_id, data=data)

    def _submitted(self, item: WorkItem, sent: Sent, ledger: Ledger) -> None:
        data = sent.model_dump(exclude={"body"}, exclude_none=True)  # the body is dropped once the register has it
        ledger.submitted(item.key, remote=RemoteRef(remote_id=item.key, correlation_id=sent.levering_id, data=data),
                         note=f"in delivery {sent.levering_id}; waiting for the register's report")

    def _park_all(self, entries: list[_Entry], ledger: Ledger, message: str, code: str, levering_id: str) -> None:
        with ledger.transaction():
            for e in entries:
                ledger.park(e.item.key, error=PermanentError(redact(message), code=code),
                            remote=self._not_taken(e.item, levering_id))

    @staticmethod
    def _not_taken(item: WorkItem, levering_id: str) -> RemoteRef:
        """The remote reference of an item whose delivery the register did not take: the body goes."""
        return RemoteRef(remote_id=item.key, correlation_id=levering_id, data={"levering_id": levering_id})

    # 5. reports --------------------------------------------------------------------------------------
    async def _poll(self, opened: dict[str, list[_Open]], ledger: Ledger) -> None:
        """Read each open delivery's report until processed, waiting at most `poll_budget` seconds per
        run (the engine calls deliver() per chunk; the budget is this instance's, i.e. the run's)."""
        due = dict.fromkeys(opened, 0.0)   # when to ask next, in seconds from the start of this poll
        elapsed = 0.0
        while due:
            await self._ask([lid for lid, at in due.items() if at <= elapsed], opened, due, elapsed, ledger)
            if not due:
                return
            wake = min(due.values())
            if self._waited + (wake - elapsed) > self.settings.poll_budget:
                log.info("%d deliveries are still being processed by the register; their reports are read on "
                         "the next run", len(due))
                return
            await self._sleep(wake - elapsed)
            self._waited += wake - elapsed
            elapsed = wake

    async def _read_ready(self, ledger: Ledger) -> None:
        """Between chunks: read the reports of this run's deliveries that are due to be asked, once
        each and without waiting; one still in processing is asked again after its Retry-After (or
        `poll_interval`), at a later chunk or in finish()."""
        now = time.monotonic()
        ready = [lid for lid, at in self._ask_at.items() if at <= now]
        if not ready:
            return
        due = dict.fromkeys(ready, 0.0)
        await self._ask(ready, self._opened, due, 0.0, ledger)
        for levering_id in ready:
            if levering_id in due:           # still in processing: seconds from now until it may be done
                self._ask_at[levering_id] = now + due[levering_id]
            else:                            # its report is applied (or the register no longer knows it)
                del self._opened[levering_id], self._ask_at[levering_id]

    async def _ask(self, ready: list[str], opened: dict[str, list[_Open]], due: dict[str, float], elapsed: float,
                   ledger: Ledger) -> None:
        """Ask once for the reports of `ready` deliveries and apply those processed (see _read_reports)."""
        answers = self._fetch_reports(ready)
        try:
            await self._read_reports(ready, answers, opened, due, elapsed, ledger)
        finally:
            for fetch in answers.values():      # a failure stops the rest: no request is left running
                fetch.cancel()
            await asyncio.gather(*answers.values(), return_exceptions=True)

    def _fetch_reports(self, levering_ids: list[str]) -> dict[str, asyncio.Future[Answer]]:
        """Ask for these deliveries' reports, `concurrency` at a time (read-only requests): while one
        report is applied, the next ones are on their way instead of waiting their turn."""
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def fetch(levering_id: str) -> Answer:
            async with gate:
                return await self._register.get(f"/leveringen/{levering_id}")

        return {levering_id: asyncio.ensure_future(fetch(levering_id)) for levering_id in levering_ids}

    async def _read_reports(self, ready: list[str], answers: dict[str, asyncio.Future[Answer]],
                            opened: dict[str, list[_Open]], due: dict[str, float], elapsed: float,
                            ledger: Ledger) -> None:
        """Apply the reports of `ready` deliveries in order; those still processing get a next time in `due`."""
        for levering_id in ready:
            answer = await answers[levering_id]
            if answer.action is Action.NOT_FOUND:
                del due[levering_id]
                items = [item for item, _ in opened[levering_id]]
                if any(item.record is None and item.desired_hash is not None for item in items):
                    # kept without their records (finish()): they stay submitted and are compared
                    # with the register, record by record, when the next run brings them with records
                    log.warning("the register no longer knows delivery %s; its %d records are checked "
                                "one by one on the next run", levering_id, len(items))
                    continue
                await self._reconcile(items, ledger, why=f"the register no longer knows delivery {levering_id}")
                continue
            assert answer.response is not None
            try:
                report = messages.parse_verslag(answer.response.content)
            except MessageError as exc:
                raise TargetUnavailable(f"the register's report of delivery {levering_id} is unreadable: "
                                        f"{redact(str(exc))}") from exc
            if report.verwerkt:
                del due[levering_id]
                self._apply(report, opened[levering_id], ledger)
            else:
                due[levering_id] = elapsed + (answer.retry_after or self.settings.poll_interval)

    def _apply(self, report: Verwerkingsverslag, items: list[_Open], ledger: Ledger) -> None:
        """Apply a processed report to its items, in one transaction."""
        lines = {r.record_id: r for r in report.regels}
        tally: Counter[str] = Counter()
        with ledger.transaction():
            for item, sent in items:
                line = lines.get(item.key)
                if line is None:
                    ledger.defer(item.key, reason=f"the report of delivery {report.levering_id} has no line for this "
                                                  "record; it goes again in a new delivery")
                    tally["missing"] += 1
                    continue
                outcome, signals = regel_outcome(line, sent.kind)
                codes = [s.code for s in line.signalen]
                remote = RemoteRef(remote_id=item.key, correlation_id=report.levering_id,
                                   data={"levering_id": report.levering_id, "signalen": codes, "unit": sent.unit})
                tally[outcome.value] += 1
                if outcome is Outcome.ACCEPTED:
                    note = "R301: identical to what the register holds" if "R301" in codes else None
                    ledger.confirm(item.key, delivered_hash=sent.sent_hash, remote=remote, note=note)
                elif outcome is Outcome.NOT_HELD:
                    ledger.confirm(item.key, delivered_hash=None, remote=remote,
                                   note="R401: the register did not hold the record; nothing to withdraw")
                elif outcome is Outcome.RETRY:
                    self._retry_later(item, signals, ledger, remote)
                else:
                    ledger.park(item.key, error=PermanentError(self._rejection(item, sent, signals),
                                                               code=signals[0].code if signals else "afgekeurd"),
                                remote=remote)
        log.info("delivery %s processed: %s", report.levering_id,
                 ", ".join(f"{n} {what}" for what, n in sorted(tally.items())) or "no records")

    def _retry_later(self, item: WorkItem, signals: tuple[Signaal, ...], ledger: Ledger, remote: RemoteRef) -> None:
        tries = item.attempts + (1 if item.state is DeliveryState.PENDING else 0)
        text = "; ".join(f"{s.code} {redact(s.tekst)}" for s in signals)
        if tries >= self.settings.r900_max_attempts:
            ledger.park(item.key, remote=remote, error=PermanentError(
                f"{text}: {tries} deliveries in a row ended in a temporary failure at the register; ask DUO, "
                "then `mcsync retry`", code="R900"))
        else:
            ledger.defer(item.key, reason=f"{text}: it goes again in a new delivery",
                         retry_after=self.settings.r900_retry_after, remote=remote)

    def _rejection(self, item: WorkItem, sent: Sent, signals: tuple[Signaal, ...]) -> str:
        """The text `mcsync failures` shows for a rejected record: codes, the register's texts, what to do."""
        if not signals:
            return "the register rejected the record without a signal; ask DUO, then `mcsync retry`"
        text = "; ".join(f"{s.code} {redact(s.tekst)}" for s in signals)
        first = signals[0].code
        if first == "R102" and not self.rio_enabled:
            unit = item.record.microcredential.code if item.record else self._codes.get(item.key, "of this record")
            return (f"{text}: RIO is disabled in this configuration, so unit {unit} went by its own key and the "
                    "register requires its RIO code; enable [targets.rio] so RIO registers the unit, the record "
                    "then goes by itself")
        return f"{text}: {signal_rule(first).hint}"

    # reconciliation -----------------------------------------------------------------------------------
    async def _reconcile(self, items: list[WorkItem], ledger: Ledger, *, why: str) -> None:
        """Settle items by what the register holds now (`GET /resultaten/{recordId}`)."""
        for item in items:
            answer = await self._register.get(f"/resultaten/{item.key}")
            held = None
            if answer.action is Action.OK and answer.response is not None:
                try:
                    found = messages.parse_geregistreerd(answer.response.content)
                except MessageError as exc:
                    raise TargetUnavailable(f"the register's answer for record {item.key} is unreadable: "
                                            f"{redact(str(exc))}") from exc
                held = found if found.status == "geregistreerd" else None
            wanted = None if item.desired_hash is None else self._build(item, ledger)
            if wanted is None:
                if held is None:
                    ledger.confirm(item.key, delivered_hash=None, remote=RemoteRef(remote_id=item.key),
                                   note=f"{why}; the register holds nothing for it")
                else:
                    ledger.defer(item.key, reason=f"{why}; the register still holds it, so the intrekking goes again")
            elif isinstance(wanted, _Hold):
                self._hold(item, wanted, ledger)
            elif held is not None and held.inhoud == messages.inhoud(wanted.el):
                ledger.confirm(item.key, delivered_hash=item.desired_hash,
                               remote=RemoteRef(remote_id=item.key, correlation_id=held.levering_id,
                                                data={"levering_id": held.levering_id, "unit": wanted.unit}),
                               note=f"{why}; the register holds this content (delivery {held.levering_id})")
            else:
                ledger.defer(item.key, reason=f"{why}; the register does not hold this version, so it goes again in "
                                              "a new delivery")
