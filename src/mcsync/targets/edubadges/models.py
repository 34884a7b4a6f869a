"""The Edubadges payloads mcsync sends and reads (edubadges-api.md §1), as typed models.

Answers are read leniently (unknown fields ignored, unknown statuses kept as text) because Edubadges
adds fields and statuses without notice; what mcsync relies on is required.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

OFFERED_STATUSES = frozenset({"Unaccepted", "Scheduled"})   # waiting for the learner to claim
WITHDRAWN_STATUSES = frozenset({"Deleted", "Revoked"})
DECLINED_STATUS = "Rejected"


@dataclass(frozen=True)
class AwardRequest:
    """One entry of `direct_awards` in a create request."""

    eppn: str
    recipient_email: str
    first_name: str | None = None
    surname: str | None = None
    grade_achieved: str | None = None

    def payload(self) -> dict[str, str]:
        data = {"eppn": self.eppn, "recipient_email": self.recipient_email, "first_name": self.first_name,
                "surname": self.surname, "grade_achieved": self.grade_achieved}
        return {name: value for name, value in data.items() if value}

    def encoded_size(self) -> int:
        """`len(encode(self.payload()))`: the bytes this award adds to a create request's body.

        Counted without writing the JSON object (bundles are sized award by award): `{`, then per field
        `"name":` and the value as JSON writes it (json's own `encode_basestring`, UTF-8), each followed
        by `,` or the closing `}`.
        """
        size = 1
        for name, value in self.payload().items():
            size += len(name) + 4 + len(encode_basestring(value).encode("utf-8"))
        return size if size > 1 else 2


def create_request(badgeclass: str, awards: list[AwardRequest], *, notify: bool) -> dict[str, Any]:
    """The body of POST /directaward/create, in the reference's minimal shape."""
    return {"badgeclass": badgeclass, "identifier_type": "eppn", "notify_recipients": notify,
            "batch_mode": False, "sis_user_id": "mcsync", "direct_awards": [a.payload() for a in awards]}


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _lower(value: Any) -> Any:
    """Lower-cased text; None for anything else (an assertion without eppn says `[]`)."""
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    return None


#: An eppn or e-mail address as Edubadges stores them: lower-cased (it lower-cases both on create).
Identifier = Annotated[str | None, BeforeValidator(_lower)]


class Rejection(_Answer):
    """One award Edubadges did not create or delete (`un_successful_direct_award(s)`)."""

    error: str
    eppn: Identifier = None
    email: Identifier = None


class BundleCreated(_Answer):
    entity_id: str = Field(min_length=1)
    badgeclass: str | None = None
    un_successful_direct_award: list[Rejection] = []


class BundleAward(_Answer):
    entity_id: str
    eppn: Identifier = None
    recipient_email: Identifier = None
    status: str


class BundleAssertion(_Answer):
    entity_id: str
    eppn: Identifier = None     # the claimer's first linked eppn ([] when none): may differ from the awarded one
    email: Identifier = None
    revoked: bool = False


class Bundle(_Answer):
    """GET /directaward/bundle/{id}. `badgeclass` is the badge class's *name* here."""

    initial_total: int = 0
    status: str | None = None
    badgeclass: str | None = None
    direct_awards: list[BundleAward] = []
    badge_assertions: list[BundleAssertion] = []


class ListedAward(_Answer):
    """One row of GET /queries/direct-awards (raw SQL columns; their case depends on the database)."""

    entity_id: str = Field(validation_alias=AliasChoices("entityId", "entityid", "entity_id"))
    eppn: Identifier = None
    badgeclass: str = Field(validation_alias=AliasChoices("bc_entity_id", "bc_entityid"))
    recipient_email: Identifier = Field(default=None,
                                        validation_alias=AliasChoices("recipientEmail", "recipientemail"))


class BadgeClassRow(_Answer):
    """One row of GET /queries/badge-classes."""

    entity_id: str = Field(validation_alias=AliasChoices("entityId", "entityid", "entity_id"))
    #: assertions made by claiming direct awards, revoked ones included: it only grows
    claimed: int | None = Field(default=None, validation_alias=AliasChoices(
        "directAwardedAssertionsCount", "directawardedassertionscount"))


class DeleteResult(_Answer):
    result: str | None = None
    un_successful_direct_awards: list[Rejection] = []
