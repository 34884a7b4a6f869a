"""What the delivery row of one microcredential records about it in RIO (`RemoteRef`).

`RemoteRef.data` holds mcsync's bookkeeping under "progress" and, once RIO has shown the unit,
the three values the DUO target reads (the contract between the two targets):

    remote_id = "1011O5055"                                   (the opleidingseenheidcode)
    data = {"opleidingseenheidcode": "1011O5055",
            "aangebodenOpleidingCode": "<uuid>",
            "eigenOpleidingseenheidSleutel": "<uuid>",
            "progress": {...}}

Before RIO shows the unit, remote_id and those three keys are absent, even if RIO already issued
the code: a code that does not resolve yet is no use to anyone else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..base import RemoteRef


class Part(BaseModel):
    """The unit or the offering as mcsync last wrote it."""

    model_config = ConfigDict(extra="ignore")

    hash: str
    visible: bool        # RIO's lookup shows it
    at: datetime         # when RIO accepted the write


class Pending(BaseModel):
    """A write whose outcome is not recorded yet (set with `ledger.begin()` before the call)."""

    model_config = ConfigDict(extra="ignore")

    op: Literal["unit", "offering", "delete_offering", "delete_unit"]
    hash: str | None = None
    create: bool = False   # a unit sent without code, or the first offering
    at: datetime


class Progress(BaseModel):
    model_config = ConfigDict(extra="ignore")

    eigen_sleutel: str | None = None        # eigenOpleidingseenheidSleutel
    offering_code: str | None = None        # aangebodenOpleidingCode (= eigenAangebodenOpleidingSleutel)
    unit_code: str | None = None            # opleidingseenheidcode, once RIO issued or showed it
    unit_kind: str | None = None            # hoOnderwijseenheid | particuliereOpleiding, as registered
    unit_seen: bool = False                 # RIO has shown unit_code under our own key
    unit: Part | None = None
    offering: Part | None = None
    pending: Pending | None = None
    create_sent_at: datetime | None = None  # the last unit create (without code) that went out
    withdrawing: bool = False               # a withdrawal has started: finish it before anything else
    deleted: list[Literal["offering", "unit"]] = []   # deletes RIO accepted (it applies them later)

    @classmethod
    def from_remote(cls, remote: RemoteRef) -> Progress:
        return cls.model_validate(remote.data.get("progress") or {})

    def to_remote(self, *, correlation_id: str | None = None) -> RemoteRef:
        data: dict[str, Any] = {"progress": self.model_dump(mode="json")}
        remote_id = None
        if self.unit_seen and self.unit_code:
            remote_id = self.unit_code
            data.update(opleidingseenheidcode=self.unit_code, aangebodenOpleidingCode=self.offering_code,
                        eigenOpleidingseenheidSleutel=self.eigen_sleutel)
        return RemoteRef(remote_id=remote_id, correlation_id=correlation_id, data=data)

    def begin_data(self) -> dict[str, Any]:
        """`data` for `ledger.begin()`: merged into the row, so absent contract keys are nulled."""
        data: dict[str, Any] = {"opleidingseenheidcode": None, "aangebodenOpleidingCode": None,
                                "eigenOpleidingseenheidSleutel": None}
        data.update(self.to_remote().data)
        return data
