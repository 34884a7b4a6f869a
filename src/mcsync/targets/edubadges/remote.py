"""Finding an award on Edubadges: where it is now, and in which state.

Edubadges has no lookup by natural key; what a SIS client can read is
- its bundle (`GET /directaward/bundle/{id}`): the bundle's direct awards in every status, and the
  assertions made from them when learners claimed (the direct award row is deleted on claim);
- the institution's unclaimed (Unaccepted, Scheduled) and deleted direct awards (`GET /queries/direct-awards`);
- per badge class, how many direct awards were ever claimed (`GET /queries/badge-classes`,
  directAwardedAssertionsCount): the only trace a claim leaves that needs no bundle id.

So an award is found by its bundle when mcsync knows the bundle, else by (eppn, badge class) among the
unclaimed ones. A claimed assertion carries the claimer's *first* eppn, which may differ from the awarded
one, so assertions are matched by eppn and then by e-mail address. One `RemoteView` caches what it read;
make a new one after writing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from ..base import RemoteRef
from .client import EdubadgesClient
from .models import (
    DECLINED_STATUS,
    OFFERED_STATUSES,
    WITHDRAWN_STATUSES,
    Bundle,
    BundleAssertion,
    BundleAward,
    ListedAward,
)

Kind = Literal["direct_award", "assertion"]


class Held(StrEnum):
    OFFERED = "offered"          # a direct award waiting for the learner (Unaccepted, Scheduled)
    CLAIMED = "claimed"          # an assertion, not revoked: the learner holds the badge
    DECLINED = "declined"        # the learner rejected the direct award
    WITHDRAWN = "withdrawn"      # direct award deleted (or legacy revoked), or assertion revoked
    OTHER = "other"              # a status this version does not know: treated as held, never re-sent
    ABSENT = "absent"            # not where we looked: expired and purged, or claimed under another eppn


@dataclass(frozen=True)
class AwardRef:
    """What mcsync knows of one award on Edubadges."""

    badgeclass: str
    eppn: str | None
    email: str | None = None
    bundle_id: str | None = None
    entity_id: str | None = None
    kind: Kind | None = None

    @classmethod
    def from_remote(cls, remote: RemoteRef) -> AwardRef | None:
        data = remote.data
        if not isinstance(data.get("badgeclass"), str):
            return None
        kind = data.get("kind") if data.get("kind") in ("direct_award", "assertion") else None
        return cls(badgeclass=data["badgeclass"], eppn=data.get("eppn"), email=data.get("email"),
                   bundle_id=remote.correlation_id, entity_id=remote.remote_id, kind=kind)

    def remote(self, located: Located, *, note: str | None = None) -> RemoteRef:
        """The RemoteRef to record for this award in its located state."""
        data: dict[str, Any] = {"badgeclass": self.badgeclass, "eppn": self.eppn, "email": self.email,
                                "kind": located.kind or self.kind, "status": located.status or located.held.value}
        if note:
            data["note"] = note
        return RemoteRef(remote_id=located.entity_id or self.entity_id, correlation_id=self.bundle_id, data=data)


@dataclass(frozen=True)
class Located:
    held: Held
    kind: Kind | None = None
    entity_id: str | None = None
    status: str | None = None          # Edubadges' own status text
    searched_bundle: bool = False      # ABSENT after reading the award's own bundle

    @property
    def holds(self) -> bool:
        """The learner has (or can still claim) this award."""
        return self.held in (Held.OFFERED, Held.CLAIMED, Held.OTHER)


def _direct_award(award: BundleAward) -> Located:
    if award.status in OFFERED_STATUSES:
        held = Held.OFFERED
    elif award.status in WITHDRAWN_STATUSES:
        held = Held.WITHDRAWN
    elif award.status == DECLINED_STATUS:
        held = Held.DECLINED
    else:
        held = Held.OTHER
    return Located(held, "direct_award", award.entity_id, award.status)


def _assertion(assertion: BundleAssertion) -> Located:
    if assertion.revoked:
        return Located(Held.WITHDRAWN, "assertion", assertion.entity_id, "revoked")
    return Located(Held.CLAIMED, "assertion", assertion.entity_id, "claimed")


class BundleIndex:
    """A bundle's awards indexed once, so finding each of its hundreds of members is a lookup."""

    def __init__(self, bundle: Bundle) -> None:
        self.by_id: dict[str, Located] = {}
        self.by_eppn: dict[str, Located] = {}
        emails: dict[str, list[Located]] = {}
        # direct awards before assertions, first one wins: the order find_in_bundle has always used
        for award in bundle.direct_awards:
            located = _direct_award(award)
            self.by_id.setdefault(award.entity_id, located)
            if award.eppn:
                self.by_eppn.setdefault(award.eppn, located)
        for assertion in bundle.badge_assertions:
            located = _assertion(assertion)
            self.by_id.setdefault(assertion.entity_id, located)
            if assertion.eppn:
                self.by_eppn.setdefault(assertion.eppn, located)
            if assertion.email:
                emails.setdefault(assertion.email, []).append(located)
        self.unique_email = {email: found[0] for email, found in emails.items() if len(found) == 1}

    def find(self, ref: AwardRef) -> Located | None:
        """By id, else by eppn (direct award first, then assertion), else a claimed one by a unique e-mail."""
        found = (self.by_id.get(ref.entity_id) if ref.entity_id else None) or \
            (self.by_eppn.get(ref.eppn) if ref.eppn else None)
        if found is None and ref.email:
            found = self.unique_email.get(ref.email)
        return found


def find_in_bundle(bundle: Bundle, ref: AwardRef) -> Located | None:
    """The award in its bundle (see BundleIndex.find); index the bundle yourself for many lookups."""
    return BundleIndex(bundle).find(ref)


class RemoteView:
    """Reads of Edubadges for one step of a delivery, cached."""

    def __init__(self, client: EdubadgesClient) -> None:
        self._client = client
        self._bundles: dict[str, Bundle | None] = {}
        self._listed: dict[str, list[ListedAward]] = {}
        self._claims: dict[str, int | None] | None = None

    async def bundle(self, bundle_id: str) -> Bundle | None:
        if bundle_id not in self._bundles:
            self._bundles[bundle_id] = await self._client.bundle(bundle_id)
        return self._bundles[bundle_id]

    async def listed(self, status: Literal["unclaimed", "deleted"]) -> list[ListedAward]:
        if status not in self._listed:
            self._listed[status] = await self._client.listed(status)
        return self._listed[status]

    async def claims(self, badgeclass: str) -> int | None:
        """How many direct awards of the badge class were ever claimed (None: Edubadges does not say)."""
        if self._claims is None:
            self._claims = {row.entity_id: row.claimed for row in await self._client.badge_classes()}
        return self._claims.get(badgeclass)

    async def unclaimed(self, badgeclass: str, eppn: str | None, entity_id: str | None = None) -> ListedAward | None:
        for row in await self.listed("unclaimed"):
            if (entity_id and row.entity_id == entity_id) or (
                    eppn and row.eppn == eppn and row.badgeclass == badgeclass):
                return row
        return None

    async def locate(self, ref: AwardRef) -> Located:
        """Where the award is now. Looks in its bundle, then among the unclaimed, then the deleted ones."""
        searched = False
        if ref.bundle_id:
            bundle = await self.bundle(ref.bundle_id)
            if bundle is not None:
                searched = True
                found = find_in_bundle(bundle, ref)
                if found is not None:
                    return found
        if ref.kind != "assertion":
            row = await self.unclaimed(ref.badgeclass, ref.eppn, ref.entity_id)
            if row is not None:
                return Located(Held.OFFERED, "direct_award", row.entity_id, "unclaimed")
            if ref.entity_id and not searched:
                # without its bundle a deleted award shows only here (for 30 days); match the id alone,
                # an older deleted award for the same learner says nothing about this one
                for row in await self.listed("deleted"):
                    if row.entity_id == ref.entity_id:
                        return Located(Held.WITHDRAWN, "direct_award", row.entity_id, "Deleted")
        return Located(Held.ABSENT, searched_bundle=searched)
