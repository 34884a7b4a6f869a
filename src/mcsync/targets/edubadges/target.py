"""The Edubadges target: passed results become direct awards the learner claims in Edubadges.

What Edubadges holds per record is one award of the record's badge class to the learner's eppn
(awards.py). It cannot be edited, only withdrawn: an unclaimed direct award is deleted
(`PUT /directaward/delete-direct-awards`), a claimed badge (assertion) revoked (`POST /issuer/revoke-assertions`).

Algorithm of one `deliver(items, ledger)`
-----------------------------------------
1. Reconcile. Items that arrive `in_flight` had a write under way when a run ended; the row's remote data
   holds the `attempt` (what was sent, and, once Edubadges answered, the bundle it made and whether it
   refused this award). A create is looked up before anything is sent again: in its bundle if the 201
   was recorded, else among the institution's unclaimed awards by (eppn, badge class). Found → confirmed
   with the ids found. Refused as "already exists" → adopted (below). Not found although the bundle was
   made → confirmed as created (it expired, or the learner claimed it under another eppn: never re-sent).
   Not found and no bundle: sent again only if nothing suggests it was created, i.e. no direct award of
   that badge class has been claimed since the attempt (the claim count read before the POST is
   unchanged); else parked for a person. An in_flight withdrawal is checked again: withdrawing is idempotent.
2. Route what is known: desired == delivered → nothing; desired None → withdraw; delivered None →
   create; both set but different (another badge class or eppn) → withdraw the old award, then create.
3. Withdraw. Each award is located first (bundle, else the unclaimed/deleted lists), so an award the
   learner claimed in the meantime is revoked rather than "deleted". Unclaimed ones go in bulk to
   delete-direct-awards; per-award failures are settled by looking again (already deleted = done).
   Claimed ones go in bulk to revoke-assertions, which stops at the first failure: then one by one,
   "already revoked" = done. A replaced award the learner already claimed is kept when only the eppn
   changed (they hold this badge), and parked when the badge class changed (revoking an issued badge
   because a mapping changed is a person's decision).
4. Create. Records that cannot be sent (no eppn, an eppn that does not fit the pattern, no e-mail
   address) are parked with what to add where, without a call. The claim count of each badge class is
   read once (`/queries/badge-classes`), then the rest go per badge class in bundles (`max_bundle_size`,
   bodies under 4 MiB, one award per eppn: records that share an eppn share its outcome). One begin()
   commit marks them all in_flight; then `concurrency` bundles at a time: POST /directaward/create →
   note the bundle id and each award's refusal → GET the bundle → confirm each award with its direct
   award id (or assertion id). Bundles not posted because Edubadges went down or the run stopped go
   back to pending (known not sent), so only a bundle that may have arrived is looked up next run. "already exists
   for badgeclass" means the learner already has an unclaimed award of this badge class: it is looked up
   in /queries/direct-awards and adopted, not failed. Field errors of single awards park those awards and
   the rest of the bundle is sent again (nothing was created).

Crash table (what the next run finds, and does)
-----------------------------------------------
| the run ended ...                                  | row        | next run                                |
|----------------------------------------------------|------------|-----------------------------------------|
| before begin()                                     | pending    | sends it                                |
| after begin(), before the POST reached Edubadges   | in_flight  | lookup finds nothing, claim count       |
|                                                    |            |   unchanged → sends it again; if the    |
|                                                    |            |   result was corrected meanwhile:       |
|                                                    |            |   settled as holding nothing, no call   |
| POST applied, answer lost (timeout, dropped        | in_flight  | lookup finds the unclaimed award →      |
|   connection, 5xx from a gateway, crash)           |            |   confirmed with its id, nothing sent   |
|                                                    |            |   (then withdrawn, if corrected)        |
| ... and the learner claimed it before the lookup   | in_flight  | not listed, claim count grew → parked   |
|                                                    |            |   (outcome_unknown), nothing sent; the  |
|                                                    |            |   hint says send or revoke by hand      |
| after the 201 and note()                           | in_flight  | GET bundle → confirmed (claimed ones    |
|                                                    | + bundle   |   with their assertion id); refused     |
|                                                    |            |   awards adopted or parked as answered  |
| after confirm()                                    | synced     | nothing                                 |
| withdrawal sent, answer lost                       | in_flight  | located again: gone → confirmed; still  |
|                                                    |            |   there → withdrawn again (idempotent)  |
Residual window: a create whose 201 was lost leaves no trace a SIS client can find once the learner
claims it (the direct award row is deleted, the assertion is listed only in the lost bundle), and
Edubadges blocks a second award only while the first is still Unaccepted. What does show is the badge
class's claim count (directAwardedAssertionsCount, revoked included, so it never shrinks): mcsync reads
it before each POST and sends again only if it has not grown. A claim by any learner of that badge class
in between parks the item (the safe side: a person checks; code `outcome_unknown`, with a hint to send
it by `mcsync retry` if the learner has none, or, when the result was corrected meanwhile, to revoke the
badge by hand). Left over: the learner *rejected* the lost award, or staff deleted it, before the
lookup; then a new offer goes out (an offer, not a second badge). The same blind spot makes an award
known only from the unclaimed list (adopted, or found after a lost 201) unfindable once claimed: its
withdrawal is parked (`award_not_found`) for a person to revoke by hand.
400 answers to a create are safe to read as "nothing created": Edubadges creates a bundle in one
atomic transaction and every exception in it rolls the bundle back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, ClassVar, Literal

import httpx

from ...errors import ConfigError, DeliveryError, PermanentError, RetriableError, TargetUnavailable, UnknownOutcome
from ...record import MicrocredentialDefinition, MicrocredentialRecord
from ...http import Sleep
from ..base import DeliveryState, Ledger, RemoteRef, TargetContext, TargetSettings, WorkItem
from .auth import TokenSource
from .awards import AwardBuilder, Unsendable, badgeclass_of, desired_hash
from .client import EdubadgesClient, encode
from .errors import EdubadgesRejection, Meaning, describe_field_errors, parse_rejections, text_rule
from .models import AwardRequest, create_request
from .remote import AwardRef, BundleIndex, Held, Located, RemoteView
from .settings import EdubadgesSettings

log = logging.getLogger(__name__)

#: Edubadges refuses bodies over 5 MiB (DATA_UPLOAD_MAX_MEMORY_SIZE); stay well under it.
BODY_LIMIT = 4 * 1024 * 1024
#: The code of a park whose create may have been applied and claimed: what the learner holds is unknown.
OUTCOME_UNKNOWN = "outcome_unknown"
#: What a person does about it. The record may change while the item waits, so the hint covers both cases.
LOST_CREATE_HINT = ("look the learner up in Edubadges (mcsync cannot see a badge whose create was never answered). "
                    "If their result still passes: no badge of this badge class → `mcsync retry` sends it; a badge "
                    "→ leave this item, a retry would send a second one. If it no longer passes: revoke the badge "
                    "if they hold one, then `mcsync retry` closes the item")
#: The code of a park of a withdrawal whose award mcsync can no longer find: a person revokes it by hand.
AWARD_NOT_FOUND = "award_not_found"


def _isoformat(at: datetime) -> str:
    """`at.isoformat()`; the attempts of one step share their `at`, so each is written once."""
    return _isoformat_at(at, at.utcoffset())


@lru_cache(maxsize=8)
def _isoformat_at(at: datetime, offset: timedelta | None) -> str:
    # keyed by the offset too: datetimes in different time zones are equal when they are the same instant
    return at.isoformat()


@dataclass(frozen=True)
class Attempt:
    """A write under way, kept in the row's remote data under "attempt" (written by begin())."""

    op: Literal["create", "withdraw"]
    at: datetime
    badgeclass: str
    eppn: str | None
    email: str | None = None
    hash: str | None = None          # create: the desired hash sent
    claims: int | None = None        # create: the badge class's claim count read before the POST
    bundle: str | None = None        # create: the bundle Edubadges made (from its 201)
    rejected: str | None = None      # create: Edubadges' reason for not creating this award

    def as_data(self) -> dict[str, Any]:
        # every key is written (None included) so that begin()'s JSON merge leaves nothing stale behind;
        # spelled out (in field order; a test holds it to the fields) because it runs twice per award
        return {"attempt": {"op": self.op, "at": _isoformat(self.at), "badgeclass": self.badgeclass,
                            "eppn": self.eppn, "email": self.email, "hash": self.hash, "claims": self.claims,
                            "bundle": self.bundle, "rejected": self.rejected}}

    def answered(self, bundle: str, rejected: str | None) -> Attempt:
        """This create once Edubadges answered it (a third of what dataclasses.replace costs, per award)."""
        return Attempt(self.op, self.at, self.badgeclass, self.eppn, self.email, self.hash, self.claims,
                       bundle, rejected)

    @classmethod
    def of(cls, remote: RemoteRef) -> Attempt | None:
        data = remote.data.get("attempt")
        if not isinstance(data, dict) or data.get("op") not in ("create", "withdraw"):
            return None
        try:
            at = datetime.fromisoformat(data["at"])
            return cls(op=data["op"], at=at, badgeclass=data["badgeclass"], eppn=data.get("eppn"),
                       email=data.get("email"), hash=data.get("hash"), claims=data.get("claims"),
                       bundle=data.get("bundle"), rejected=data.get("rejected"))
        except (KeyError, TypeError, ValueError):
            return None

    def ref(self) -> AwardRef:
        return AwardRef(badgeclass=self.badgeclass, eppn=self.eppn, email=self.email, bundle_id=self.bundle)


class Intent(StrEnum):
    WITHDRAW = "withdraw"    # desired None: make the award go away
    REPLACE = "replace"      # badge class or eppn changed: the old award goes, then the new one is created
    VERIFY = "verify"        # a withdrawal was under way but the record wants the award again: check


@dataclass(frozen=True)
class Member:
    """One item in a bundle, with the award it asks for."""

    item: WorkItem
    award: AwardRequest


@dataclass
class Plan:
    withdrawals: list[tuple[WorkItem, Intent]] = field(default_factory=list)
    creates: list[WorkItem] = field(default_factory=list)


class Delivery:
    """One `deliver()` call: the algorithm in the module docstring."""

    def __init__(self, client: EdubadgesClient, builder: AwardBuilder, settings: EdubadgesSettings,
                 ledger: Ledger, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client
        self.builder = builder
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.down: TargetUnavailable | None = None
        self.counts: Counter[str] = Counter()

    async def run(self, items: Sequence[WorkItem]) -> None:
        plan = Plan()
        unsettled = [i for i in items if i.state in (DeliveryState.IN_FLIGHT, DeliveryState.SUBMITTED)]
        for item in items:
            if item.state is DeliveryState.PENDING:
                self.route(plan, item)
        if unsettled:
            await self.reconcile(plan, unsettled)
        if plan.withdrawals and self.down is None:
            plan.creates += await self.withdraw(plan.withdrawals)
        if plan.creates and self.down is None:
            await self.create(plan.creates)
        done = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())) or "nothing settled"
        log.info("edubadges: %s%s", done, " (stopped early: Edubadges unavailable)" if self.down else "")
        if self.down is not None:
            raise self.down

    # ledger steps ------------------------------------------------------------------------------------------
    def stop(self, exc: TargetUnavailable) -> None:
        if self.down is None:
            log.warning("edubadges: stopping for this run: %s", exc)
            self.down = exc

    def confirm(self, item: WorkItem, delivered: str | None, remote: RemoteRef, note: str | None = None) -> None:
        self.ledger.confirm(item.key, delivered_hash=delivered, remote=remote, note=note)
        self.counts["withdrawn" if delivered is None else "confirmed"] += 1

    def park(self, item: WorkItem, error: DeliveryError) -> None:
        self.ledger.park(item.key, error=error)
        self.counts["parked"] += 1

    def route(self, plan: Plan, item: WorkItem, *, verify: bool = False) -> None:
        if item.desired_hash == item.delivered_hash:
            if verify and item.delivered_hash is not None:
                plan.withdrawals.append((item, Intent.VERIFY))
            elif item.state is not DeliveryState.SYNCED:
                self.confirm(item, item.delivered_hash, item.remote)
        elif item.desired_hash is None:
            plan.withdrawals.append((item, Intent.WITHDRAW))
        elif item.delivered_hash is None:
            plan.creates.append(item)
        else:
            plan.withdrawals.append((item, Intent.REPLACE))

    # 1. reconcile -----------------------------------------------------------------------------------------
    async def reconcile(self, plan: Plan, items: Sequence[WorkItem]) -> None:
        view = RemoteView(self.client)
        adopt: list[tuple[WorkItem, Attempt]] = []
        for item in items:
            attempt = Attempt.of(item.remote)
            if attempt is None:
                self.park(item, PermanentError(
                    "a write to Edubadges was under way, but mcsync has no record of what it sent",
                    hint="check the learner's awards in Edubadges; `mcsync retry` sends the award if it is missing"))
            elif attempt.op == "withdraw":
                self.route(plan, item, verify=True)
            elif attempt.rejected is not None:
                self.refused_award(item, attempt, attempt.rejected, adopt)
            else:
                try:
                    located = await view.locate(attempt.ref())
                    claims = await view.claims(attempt.badgeclass) \
                        if located.held is Held.ABSENT and attempt.bundle is None else None
                except TargetUnavailable as exc:
                    self.stop(exc)
                    return
                self.settle_create(plan, item, attempt, located, claims)
        if adopt:
            await self.adopt(adopt)

    def settle_create(self, plan: Plan, item: WorkItem, attempt: Attempt, located: Located,
                      claims: int | None) -> None:
        """An in_flight create, after the lookup (`claims`: the badge class's claim count now)."""
        ref = attempt.ref()
        if located.held is not Held.ABSENT or attempt.bundle is not None:
            note = None if located.held is not Held.ABSENT else (
                f"created in bundle {attempt.bundle}, but no longer listed there: it expired, or the learner "
                "claimed it under another eppn")
            remote = ref.remote(located, note=note)
            self.confirm(item, attempt.hash, remote, note="settled by a lookup after an unanswered create")
            if item.desired_hash != attempt.hash:
                self.route(plan, replace(item, delivered_hash=attempt.hash, remote=remote,
                                         state=DeliveryState.PENDING))
            return
        if attempt.claims is not None and claims == attempt.claims:
            # nothing was made (or nothing anyone can still claim): the learner holds nothing of it
            if item.desired_hash is None:      # and the record no longer wants an award (a correction)
                self.confirm(item, None, ref.remote(located), note="an unanswered create left no trace, and the "
                             "record no longer leads to an award: nothing sent")
                return
            log.info("edubadges: %s: an unanswered create left no trace; sending it again", item.key)
            plan.creates.append(item)
            return
        grown = "an unknown number of" if attempt.claims is None or claims is None else str(claims - attempt.claims)
        lost = (f"a create sent to Edubadges at {attempt.at:%Y-%m-%d %H:%M:%S} UTC got no answer, no unclaimed award "
                f"of badge class {attempt.badgeclass} for {attempt.eppn} is listed now, and {grown} awards of that "
                "badge class were claimed since: this learner may have claimed the lost award")
        wanted = ("the record no longer leads to an award" if item.desired_hash is None
                  else "the record still leads to this award")
        self.park(item, UnknownOutcome(f"{lost}; when this was parked, {wanted}", code=OUTCOME_UNKNOWN,
                                       hint=LOST_CREATE_HINT))

    # 3. withdraw ------------------------------------------------------------------------------------------
    async def withdraw(self, pairs: Sequence[tuple[WorkItem, Intent]]) -> list[WorkItem]:
        """Withdraw (or check) the awards; returns the items to create afterwards."""
        view = RemoteView(self.client)
        follow: list[WorkItem] = []
        deletes: list[tuple[WorkItem, Intent, AwardRef]] = []
        revokes: list[tuple[WorkItem, Intent, AwardRef]] = []
        for item, intent in pairs:
            ref = AwardRef.from_remote(item.remote)
            if ref is None:
                self.park(item, PermanentError(
                    "mcsync does not know which Edubadges award to withdraw",
                    hint="withdraw it in Edubadges by hand if the learner has it"))
                continue
            try:
                located = await view.locate(ref)
            except TargetUnavailable as exc:
                self.stop(exc)
                return follow
            ref = replace(ref, entity_id=located.entity_id or ref.entity_id, kind=located.kind or ref.kind)
            if not located.holds and located.held is not Held.ABSENT:
                self.gone(item, intent, ref, located, follow)
            elif intent is Intent.VERIFY and located.holds:
                self.confirm(item, item.delivered_hash, ref.remote(located))
            elif located.held is Held.ABSENT:
                why = ("it expired unclaimed, or the learner claimed it under another eppn" if ref.bundle_id else
                       "mcsync knows it only from the list of unclaimed awards, not from its bundle (its create was "
                       "never answered, or it was made outside mcsync), so once the learner claims it or it "
                       "expires, mcsync cannot see it")
                self.park(item, PermanentError(
                    f"the award to withdraw (badge class {ref.badgeclass}, {ref.eppn}) is no longer listed in "
                    f"Edubadges: {why}", code=AWARD_NOT_FOUND,
                    hint="look the learner up in Edubadges and revoke the badge there if they hold it"))
            elif located.held is Held.CLAIMED and intent is Intent.REPLACE:
                self.keep_or_park(item, ref, located)
            elif located.kind == "assertion":
                revokes.append((item, intent, ref))
            else:
                deletes.append((item, intent, ref))
        for chunk in _chunks(deletes, self.settings.max_bundle_size):
            if self.down is None:
                revokes += await self.delete(chunk, follow)
        for chunk in _chunks(revokes, self.settings.max_bundle_size):
            if self.down is None:
                await self.revoke(chunk, follow)
        return follow

    def gone(self, item: WorkItem, intent: Intent, ref: AwardRef, located: Located,
             follow: list[WorkItem]) -> None:
        """The award is withdrawn (or declined): nothing held any more."""
        remote = ref.remote(located)
        self.confirm(item, None, remote)
        if intent is not Intent.WITHDRAW and item.desired_hash is not None:
            follow.append(replace(item, delivered_hash=None, remote=remote, state=DeliveryState.PENDING))

    def keep_or_park(self, item: WorkItem, ref: AwardRef, located: Located) -> None:
        """The award to replace was claimed already."""
        badgeclass = badgeclass_of(item.record) if item.record else None
        if badgeclass == ref.badgeclass:
            self.confirm(item, item.desired_hash, ref.remote(located),
                         note="the learner claimed this badge already; a new eppn changes nothing for it")
            return
        self.park(item, PermanentError(
            f"the learner already claimed badge class {ref.badgeclass}, but the record now maps to "
            f"{badgeclass}; an issued badge cannot be moved",
            hint="if the new badge class is right, revoke the old badge in Edubadges, then `mcsync retry`"))

    async def delete(self, chunk: Sequence[tuple[WorkItem, Intent, AwardRef]],
                     follow: list[WorkItem]) -> list[tuple[WorkItem, Intent, AwardRef]]:
        """Delete unclaimed awards; returns those the learner claimed meanwhile (to revoke)."""
        self.begin_withdrawals(chunk)
        failure = ""
        try:
            result = await self.client.delete_direct_awards([ref.entity_id or "" for _, _, ref in chunk])
            if not result.un_successful_direct_awards:
                for item, intent, ref in chunk:
                    self.gone(item, intent, ref, Located(Held.WITHDRAWN, "direct_award", ref.entity_id, "Deleted"),
                              follow)
                return []
            failure = "; ".join(r.error for r in result.un_successful_direct_awards)
        except TargetUnavailable as exc:
            self.stop(exc)
            return []
        except EdubadgesRejection as exc:
            failure = exc.remote_text
        view = RemoteView(self.client)          # settle by looking: the answer does not say which award failed
        claimed: list[tuple[WorkItem, Intent, AwardRef]] = []
        for item, intent, ref in chunk:
            try:
                located = await view.locate(ref)
            except TargetUnavailable as exc:
                self.stop(exc)
                return claimed
            if not located.holds and located.held is not Held.ABSENT:
                self.gone(item, intent, ref, located, follow)
            elif located.held is Held.CLAIMED and intent is Intent.REPLACE:
                self.keep_or_park(item, ref, located)
            elif located.held is Held.CLAIMED:
                claimed.append((item, intent, replace(ref, entity_id=located.entity_id, kind="assertion")))
            else:
                self.park(item, EdubadgesRejection(
                    f"Edubadges did not delete the award ({located.held.value}): {failure}",
                    meaning=Meaning.REFUSED, status=400,
                    hint="withdraw it in Edubadges by hand, or `mcsync retry` to try again"))
        return claimed

    async def revoke(self, chunk: Sequence[tuple[WorkItem, Intent, AwardRef]], follow: list[WorkItem]) -> None:
        self.begin_withdrawals(chunk)
        try:
            await self.client.revoke_assertions([ref.entity_id or "" for _, _, ref in chunk])
            singles = False
        except TargetUnavailable as exc:
            self.stop(exc)
            return
        except EdubadgesRejection:
            singles = True                      # it stopped at the first failure: go one by one
        for item, intent, ref in chunk:
            if singles:
                try:
                    await self.client.revoke_assertions([ref.entity_id or ""])
                except TargetUnavailable as exc:
                    self.stop(exc)
                    return
                except EdubadgesRejection as exc:
                    if exc.meaning is not Meaning.ALREADY_DONE:
                        self.park(item, exc)
                        continue
            self.gone(item, intent, ref, Located(Held.WITHDRAWN, "assertion", ref.entity_id, "revoked"), follow)

    def begin_withdrawals(self, chunk: Sequence[tuple[WorkItem, Intent, AwardRef]]) -> None:
        now = self.clock()
        with self.ledger.transaction():
            for item, _, ref in chunk:
                attempt = Attempt("withdraw", now, ref.badgeclass, ref.eppn, ref.email)
                self.ledger.begin([item.key], data=attempt.as_data())

    # 4. create --------------------------------------------------------------------------------------------
    async def create(self, items: Sequence[WorkItem]) -> None:
        by_badgeclass: dict[str, list[Member]] = {}
        for item in items:
            badgeclass = badgeclass_of(item.record) if item.record is not None else None
            if item.record is None or badgeclass is None:
                self.park(item, PermanentError("the record has no Edubadges badge class any more",
                                               hint="set edubadges.badgeclass in the mapping file"))
                continue
            award = self.builder.build(item.record)
            if isinstance(award, Unsendable):
                self.park(item, PermanentError(award.reason, hint=award.hint))
                continue
            by_badgeclass.setdefault(badgeclass, []).append(Member(item, award))
        if not by_badgeclass:
            return
        view = RemoteView(self.client)
        try:    # before any POST: the baseline that tells a later lookup whether a lost award was claimed
            claims = {badgeclass: await view.claims(badgeclass) for badgeclass in by_badgeclass}
        except TargetUnavailable as exc:
            self.stop(exc)
            return
        bundles = [(badgeclass, bundle) for badgeclass, members in by_badgeclass.items()
                   for bundle in self.bundles(badgeclass, members)]
        now = self.clock()
        attempts = {m.item.key: Attempt("create", now, badgeclass, m.award.eppn, m.award.recipient_email,
                                        m.item.desired_hash, claims[badgeclass])
                    for badgeclass, bundle in bundles for m in bundle}
        begin = self.ledger.begin           # looked up once: the ledger may be a wrapper resolving it per access
        with self.ledger.transaction():     # one commit marks every bundle in_flight before the first POST
            for key, attempt in attempts.items():
                begin([key], data=attempt.as_data())
        gate = asyncio.Semaphore(self.settings.concurrency)
        async with asyncio.TaskGroup() as group:
            for badgeclass, bundle in bundles:
                group.create_task(self.send(badgeclass, bundle, attempts, gate))

    def bundles(self, badgeclass: str, members: Sequence[Member]) -> Iterator[list[Member]]:
        """Bundles of at most max_bundle_size eppns and BODY_LIMIT bytes; one award per eppn."""
        by_eppn: dict[str, list[Member]] = {}
        for member in members:
            by_eppn.setdefault(member.award.eppn, []).append(member)
        empty = len(encode(create_request(badgeclass, [], notify=self.settings.notify_recipients)))
        bundle: list[Member] = []
        count, size = 0, empty
        for sharing in by_eppn.values():
            grows = sharing[0].award.encoded_size() + 1
            if bundle and (count >= self.settings.max_bundle_size or size + grows > BODY_LIMIT):
                yield bundle
                bundle, count, size = [], 0, empty
            bundle += sharing
            count, size = count + 1, size + grows
        if bundle:
            yield bundle

    async def send(self, badgeclass: str, members: list[Member], begun: dict[str, Attempt],
                   gate: asyncio.Semaphore) -> None:
        """Post a bundle whose members are in_flight already (`begun`); again while Edubadges names
        awards to drop from it (then nothing was made, and the rest goes again)."""
        unsent = members         # known not to be at Edubadges: not posted yet, or posted and refused whole
        again = False
        try:
            async with gate:
                while unsent and self.down is None:
                    attempts = {m.item.key: begun[m.item.key] for m in unsent}
                    if again:
                        now = self.clock()
                        attempts = {key: replace(a, at=now) for key, a in attempts.items()}
                        with self.ledger.transaction():
                            for key, attempt in attempts.items():
                                self.ledger.begin([key], data=attempt.as_data())
                    members, unsent, again = unsent, [], True    # in hand: not known to be unsent
                    unsent = await self.post(badgeclass, members, attempts)
        finally:
            if unsent:                # Edubadges went down, or the run stopped, before these went: queued again
                with self.ledger.transaction():
                    for member in unsent:
                        self.ledger.defer(member.item.key, reason="not sent in this run: "
                                          + (self.down.message if self.down else "the run stopped first"))

    async def post(self, badgeclass: str, members: list[Member], attempts: dict[str, Attempt]) -> list[Member]:
        """Send one bundle whose members are in_flight with these `attempts`; returns the members to send
        again (refused fields of others, nothing made)."""
        awards = list({m.award.eppn: m.award for m in members}.values())
        try:
            created = await self.client.create_bundle(badgeclass, awards)
        except TargetUnavailable as exc:                  # nothing was applied: back in the queue
            with self.ledger.transaction():
                for member in members:
                    self.ledger.defer(member.item.key, reason=f"not sent: {exc.message}")
            self.stop(exc)
            return []
        except UnknownOutcome as exc:
            log.warning("edubadges: bundle of %d awards for %s: %s", len(awards), badgeclass, exc)
            with self.ledger.transaction():
                for member in members:
                    self.ledger.note(member.item.key, note=f"outcome unknown, looked up before sending again: "
                                                           f"{exc.message}")
            self.counts["unknown outcome"] += len(members)
            return []
        except EdubadgesRejection as exc:
            return await self.refused(badgeclass, members, awards, attempts, exc)
        bundle_id = created.entity_id
        refusals = {r.eppn: r.error for r in created.un_successful_direct_award if r.eppn}
        note = self.ledger.note
        with self.ledger.transaction():
            for member in members:
                key = member.item.key
                attempt = attempts[key] = attempts[key].answered(bundle_id, refusals.get(member.award.eppn))
                note(key, remote=RemoteRef(correlation_id=bundle_id, data=attempt.as_data()))
        log.info("edubadges: bundle %s for %s: %d awards sent, %d refused", bundle_id, badgeclass, len(awards),
                 len(refusals))
        try:
            bundle = await self.client.bundle(bundle_id)
        except TargetUnavailable as exc:              # made; read on the next run (the bundle id is noted)
            self.stop(exc)
            return []
        adopt: list[tuple[WorkItem, Attempt]] = []
        index = BundleIndex(bundle) if bundle is not None else None
        with self.ledger.transaction():               # one commit for the whole bundle
            for member in members:
                attempt = attempts[member.item.key]
                if attempt.rejected is not None:
                    self.refused_award(member.item, attempt, attempt.rejected, adopt)
                    continue
                ref = attempt.ref()
                located = (index.find(ref) if index is not None else None) or Located(Held.ABSENT)
                note = (None if located.held is not Held.ABSENT
                        else f"created in bundle {bundle_id} but not listed in it")
                self.confirm(member.item, attempt.hash, ref.remote(located, note=note))
        if adopt:
            await self.adopt(adopt)
        return []

    async def refused(self, badgeclass: str, members: list[Member], awards: list[AwardRequest],
                      attempts: dict[str, Attempt], exc: EdubadgesRejection) -> list[Member]:
        """A 400 to the whole bundle: nothing was created. Settle award by award where Edubadges says how."""
        if exc.meaning is Meaning.INVALID:
            per_award = exc.field_errors.get("direct_awards")
            if set(exc.field_errors) == {"direct_awards"} and isinstance(per_award, list) \
                    and len(per_award) == len(awards):
                bad = {awards[i].eppn: describe_field_errors(errors)
                       for i, errors in enumerate(per_award) if isinstance(errors, dict) and errors}
                if bad:
                    for member in members:
                        if member.award.eppn in bad:
                            self.park(member.item, EdubadgesRejection(
                                f"Edubadges refused the award: {bad[member.award.eppn]}", meaning=Meaning.INVALID,
                                status=exc.status, code=exc.code, hint=exc.hint))
                    return [m for m in members if m.award.eppn not in bad]
        elif exc.meaning is Meaning.ALL_REJECTED:
            entries = parse_rejections(exc.remote_text) or []
            texts = {str(e["eppn"]).lower(): str(e.get("error")) for e in entries if e.get("eppn")}
            adopt: list[tuple[WorkItem, Attempt]] = []
            for member in members:
                text = texts.get(member.award.eppn, exc.remote_text)
                self.refused_award(member.item, attempts[member.item.key], text, adopt)
            if adopt:
                await self.adopt(adopt)
            return []
        for member in members:
            self.park(member.item, exc)
        return []

    def refused_award(self, item: WorkItem, attempt: Attempt, text: str,
                      adopt: list[tuple[WorkItem, Attempt]]) -> None:
        """Edubadges did not create this one award, for the reason in `text`."""
        rule = text_rule(text)
        if rule.meaning is Meaning.ALREADY_OFFERED:
            adopt.append((item, attempt))
        elif issubclass(rule.error, RetriableError):
            self.ledger.defer(item.key, reason=f"Edubadges could not create the award this time: {text}")
            self.counts["deferred"] += 1
        else:
            self.park(item, EdubadgesRejection(f"Edubadges refused the award: {text}", meaning=rule.meaning,
                                               status=400, hint=rule.hint))

    async def adopt(self, pairs: Sequence[tuple[WorkItem, Attempt]]) -> None:
        """"already exists": the learner has an unclaimed award of this badge class; record that one."""
        view = RemoteView(self.client)      # fresh: it must list what Edubadges holds now
        for item, attempt in pairs:
            try:
                row = await view.unclaimed(attempt.badgeclass, attempt.eppn)
            except TargetUnavailable as exc:
                self.stop(exc)
                return
            if row is None:
                self.park(item, PermanentError(
                    f"Edubadges said an unclaimed award of badge class {attempt.badgeclass} for {attempt.eppn} "
                    "exists, but it is no longer listed as unclaimed: it was claimed, deleted or expired meanwhile",
                    hint="check the learner's badges in Edubadges; if there is none, `mcsync retry` sends the award"))
                continue
            ref = AwardRef(attempt.badgeclass, attempt.eppn, attempt.email, entity_id=row.entity_id,
                           kind="direct_award")
            self.confirm(item, attempt.hash, ref.remote(Located(Held.OFFERED, "direct_award", row.entity_id,
                                                                "unclaimed")),
                         note="Edubadges already had an unclaimed award of this badge class for the learner; "
                              "mcsync took it over")


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class EdubadgesTarget:
    """Direct awards in SURF Edubadges, one per passed record with a badge class (entry point `edubadges`)."""

    name: ClassVar[str] = "edubadges"
    chunk_size: ClassVar[int] = 10_000   # full bundles (500 awards) for up to 20 badge classes per call
    unit: ClassVar[Literal["record", "microcredential"]] = "record"
    depends_on: ClassVar[tuple[str, ...]] = ()
    Settings: ClassVar[type[TargetSettings]] = EdubadgesSettings

    def __init__(self, settings: TargetSettings, context: TargetContext, *,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None) -> None:
        if not isinstance(settings, EdubadgesSettings):
            raise ConfigError("the edubadges target needs its own settings ([targets.edubadges])",
                              key="targets.edubadges")
        self.settings = settings
        self.context = context
        self._builder = AwardBuilder(context.eppn_template, settings.eppn_pattern)
        self._tokens = TokenSource(settings)
        self._transport = transport
        self._sleep = sleep

    def desired(self, item: MicrocredentialRecord | MicrocredentialDefinition) -> str | None:
        if not isinstance(item, MicrocredentialRecord):
            return None
        return desired_hash(item, self.context.eppn_template)

    async def deliver(self, items: Sequence[WorkItem], ledger: Ledger) -> None:
        if not items:
            return
        if self.context.dry_run:
            log.info("edubadges: dry run, %d items not sent", len(items))
            return
        async with EdubadgesClient(self.settings, self._tokens, transport=self._transport,
                                   sleep=self._sleep) as client:
            await Delivery(client, self._builder, self.settings, ledger).run(items)

    async def aclose(self) -> None:
        """Nothing stays open between calls: each deliver() closes its own connections."""
