"""The target interface: how canonical records reach a national system.

A target is a class registered under the entry point group `mcsync.targets`. The engine owns the
*what* (which items must change at which target); the target owns the *how* (the remote calls,
their order, batching, retries and the lookups that make a retry safe).

The delivery row (the outbox)
-----------------------------
For every item a target cares about, the state store keeps one row, keyed by (target, key):

    key             record_id for per-learner targets (unit "record"),
                    "mc:<code>" for catalogue targets (unit "microcredential")
    desired_hash    what the remote should hold (the target's own payload hash), or None: nothing
    delivered_hash  what the remote is known to hold, or None: nothing
    state           see DeliveryState
    remote          remote identifiers (remote_id, correlation_id, data: target-specific JSON)

The item is in sync when desired_hash == delivered_hash. A non-empty desired with an empty
delivered is a create; an empty desired with a non-empty delivered is a withdrawal.

Crash safety rests on one rule: **a target calls `ledger.begin()` (state in_flight, committed)
before any remote call that may change something, and records the answer right after.** So after a
crash, every item whose outcome is unknown is `in_flight`, and the next `deliver()` gets it with
that state and must look it up on the remote before sending anything again.

    pending    ──begin()──▶ in_flight ──confirm()──▶ synced (or pending, if desired moved on)
       ▲                        │  └──submitted()──▶ submitted ──confirm()──▶ synced
       └──────defer()───────────┤                       (async remotes: DUO reports, RIO queue)
                                └──park()──▶ failed ──(`mcsync retry`)──▶ pending

Targets receive every item that is not synced or failed (and whose not_before has passed):
`pending` ones to send, `in_flight` ones to reconcile, `submitted` ones to poll.
Per-item trouble goes through the ledger (park, defer); only trouble with the whole target is
raised (TargetUnavailable), and the engine then stops that target for this run (exit 75).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from ..errors import DeliveryError
from ..record import Issuer, MicrocredentialDefinition, MicrocredentialRecord


class DeliveryState(StrEnum):
    PENDING = "pending"        # work to do; nothing of the current attempt has been sent
    IN_FLIGHT = "in_flight"    # a write may have reached the remote; outcome not recorded
    SUBMITTED = "submitted"    # the remote took the write; its final answer comes later
    SYNCED = "synced"          # the remote holds what we want (delivered or withdrawn)
    FAILED = "failed"          # parked for a person


class RemoteRef(BaseModel):
    """What we know of an item on the remote. `data` is target-specific and JSON-serialisable."""

    model_config = ConfigDict(extra="forbid")

    remote_id: str | None = None
    correlation_id: str | None = None
    data: dict[str, Any] = {}


@dataclass
class WorkItem:
    """One item handed to `Target.deliver`."""

    key: str
    state: DeliveryState
    desired_hash: str | None
    delivered_hash: str | None
    attempts: int
    remote: RemoteRef
    record: MicrocredentialRecord | None = None              # unit "record": the latest version
    definition: MicrocredentialDefinition | None = None      # unit "microcredential"
    note: str | None = None                                  # why it waits / last error text
    withdraw_reason: str | None = None                       # a person's or the engine's reason to withdraw

    @property
    def wants_withdrawal(self) -> bool:
        return self.desired_hash is None and self.delivered_hash is not None


class Ledger(Protocol):
    """The state store as one target sees it.

    `begin()` is durable when it returns: it records that a write may be under way. The other steps
    may be committed a moment later: with the next `begin()`, before a back-off or poll wait, at the
    end of the delivery, or with the next step once a second has passed (group commit: one fsync for
    many rows instead of one per step). A crash can
    undo them; the item is then `in_flight` again, and the next run settles it by looking on the
    remote, as after any crash between a write and its answer. Every target already handles that
    case, so delaying them costs at most a lookup, never a second write.
    """

    target: str

    def begin(self, keys: Sequence[str], *, correlation_id: str | None = None,
              data: dict[str, Any] | None = None) -> None:
        """Mark the items in_flight (attempts + 1) *before* a remote call that may write.

        `data` is merged into the stored remote data (keys set to None are removed); the other
        calls that take a `remote` replace it whole.
        """

    def submitted(self, key: str, *, remote: RemoteRef, note: str | None = None) -> None:
        """The remote took the write; its final answer comes later (poll on the next deliver)."""

    def confirm(self, key: str, *, delivered_hash: str | None, remote: RemoteRef,
                note: str | None = None) -> None:
        """The remote now holds `delivered_hash` (None: nothing). Synced if that is what we want."""

    def defer(self, key: str, *, reason: str, retry_after: float | None = None,
              remote: RemoteRef | None = None) -> None:
        """Back to pending: nothing (more) was applied; try again later (not before retry_after s)."""

    def park(self, key: str, *, error: DeliveryError, remote: RemoteRef | None = None) -> None:
        """Failed: a person must look at it (`mcsync failures` shows the message and its hint);
        `mcsync retry` re-queues it. Parked with an `UnknownOutcome`, the row stays failed even when
        a later correction makes the wanted and the known content equal: only a person settles it."""

    def note(self, key: str, *, remote: RemoteRef | None = None, note: str | None = None) -> None:
        """Store remote identifiers or a note without changing the state (e.g. a bundle id)."""

    def lookup(self, target: str, key: str) -> tuple[DeliveryState, str | None, RemoteRef] | None:
        """Another target's row: (state, delivered_hash, remote), e.g. the RIO code for the DUO target."""

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group several ledger calls into one all-or-nothing block (durable when it holds a durable call)."""


class TargetSettings(BaseModel):
    """Base of every target's settings model (`[targets.<name>]`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


@dataclass(frozen=True)
class TargetContext:
    """What a target gets from the engine besides its settings."""

    issuer: Issuer
    eppn_template: str | None = None
    dry_run: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Target(Protocol):
    """What the engine needs from a target. See the module docstring for the contract."""

    name: ClassVar[str]
    unit: ClassVar[Literal["record", "microcredential"]]
    depends_on: ClassVar[tuple[str, ...]]
    Settings: ClassVar[type[TargetSettings]]
    # optional: `chunk_size: ClassVar[int]`, how many work items one deliver() call should get
    # (default 2000); a target that polls for asynchronous answers wants larger chunks
    # optional: `async def finish(self, ledger) -> None`, called once after the last deliver() of a
    # run (not after a failed one): e.g. wait for the answers to everything sent in the run at once

    def __init__(self, settings: TargetSettings, context: TargetContext) -> None: ...

    def desired(self, item: MicrocredentialRecord | MicrocredentialDefinition) -> str | None:
        """The payload hash the remote should hold for this item, or None if it should hold nothing.

        Called with a record (unit "record") or a definition (unit "microcredential"). Only what the
        remote stores belongs in the hash: a change outside it must not cause a new write.
        """

    async def deliver(self, items: Sequence[WorkItem], ledger: Ledger) -> None:
        """Bring the remote in line with each item's desired_hash, recording every step."""

    async def aclose(self) -> None:
        """Release connections."""


def catalogue_key(code: str) -> str:
    """The delivery key of a microcredential definition at a catalogue target."""
    return f"mc:{code}"

