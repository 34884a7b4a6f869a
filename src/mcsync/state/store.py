"""The state store interface: what every run knows about what each system already holds.

The engine and the CLI talk to the store only through `StateStore`; targets only through a
`Ledger` (mcsync.targets.base) that the store hands out per target. The SQLite implementation
lives in `sqlite.py`; a PostgreSQL one (several workers, many institutions) implements the same
protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..errors import Location
from ..record import MicrocredentialRecord
from ..targets.base import DeliveryState, Ledger, RemoteRef


@dataclass(frozen=True)
class StoredRecord:
    """A record as the store holds it, with the hashes the engine compares."""

    record_id: str
    content_hash: str
    plan_hash: str
    hold: str | None = None          # "vanished" | "revoked": must not be at the targets
    rank: int | None = None          # `record.result_rank` of its result (None: stored before schema v6)


@dataclass(frozen=True)
class DeliveryRow:
    target: str
    key: str
    state: DeliveryState
    desired_hash: str | None
    delivered_hash: str | None
    attempts: int
    remote: RemoteRef
    note: str | None
    error_code: str | None
    not_before: datetime | None
    since: datetime
    updated_at: datetime
    unsettled: bool = False   # parked with an unknown remote outcome: only a person releases it


@dataclass(frozen=True)
class Problem:
    """A piece of input that needs a person: an unreadable row, an unknown course code, ..."""

    location: Location
    reason: str
    record_id: str | None = None


@dataclass(frozen=True)
class Failure:
    """One line of `mcsync failures`."""

    record_id: str | None
    target: str | None
    reason: str
    attempts: int
    since: datetime
    code: str | None = None
    location: Location | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "record_id": self.record_id, "target": self.target, "reason": self.reason,
            "attempts": self.attempts, "since": _iso(self.since), "code": self.code}
        if self.location is not None:
            data.update(source=self.location.source, file=self.location.file,
                        line=self.location.line, field=self.location.field)
        return data


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    kind: str
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    summary: dict[str, Any]


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class StateStore(Protocol):
    """Everything the engine and the CLI need from the state. Writes commit before returning."""

    # runs ---------------------------------------------------------------------------------
    def start_run(self, kind: str) -> str: ...
    def finish_run(self, run_id: str, exit_code: int, summary: dict[str, Any]) -> None: ...
    def last_run(self) -> RunInfo | None: ...

    # input fingerprints ---------------------------------------------------------------------
    def input_fingerprint(self, name: str) -> str | None:
        """The fingerprint of input `name` ("source:<name>", "learners:<name>") as last read in full."""
    def set_input_fingerprint(self, name: str, fingerprint: str, run_id: str) -> None: ...
    def forget_input_fingerprints(self) -> None:
        """Make the next run read every export again."""

    # learner directory ----------------------------------------------------------------------
    def put_learners(self, rows: Sequence[dict[str, Any]]) -> None: ...
    def learner_texts(self, student_numbers: Iterable[str]) -> dict[str, str]:
        """These learners' entries as stored: canonical JSON (sorted keys), undecoded."""

    # canonical records ----------------------------------------------------------------------
    def stored(self, record_ids: Sequence[str]) -> dict[str, StoredRecord]: ...
    def put_records(self, rows: Sequence[tuple[MicrocredentialRecord, str, str]], run_id: str) -> None:
        """Upsert (record, content_hash, plan_hash) and mark them seen in this run."""
    def records(self, record_ids: Sequence[str]) -> dict[str, MicrocredentialRecord]: ...
    def clear_seen(self) -> None:
        """Start a run's record of what it read (see `mark_seen`)."""
    def seen_ranks(self, record_ids: Sequence[str]) -> dict[str, int]:
        """The rank (`Engine` rank: result date and status) of those of these records this run read."""
    def mark_seen(self, ranks: dict[str, int]) -> None:
        """This run read these records; a record keeps the highest rank marked."""
    def unseen_count(self, source: str) -> tuple[int, int]:
        """(records of the source this run did not read, records of the source); held ones left out."""
    def unseen_record_ids(self, source: str) -> list[str]:
        """The records of the source this run did not read (held ones left out)."""
    def set_hold(self, record_ids: Sequence[str], hold: str | None, reason: str | None = None) -> None:
        """Put records on hold ("vanished", "revoked") or release them (None); a release re-plans them."""
    def holds(self, record_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]: ...
    def record_count(self) -> int: ...

    # deliveries (the outbox) ----------------------------------------------------------------
    def set_desired(self, target: str, wanted: Sequence[tuple[str, str | None]]) -> int:
        """Set desired_hash per key; creates rows as needed, re-queues changed ones. Returns changes."""
    def work(self, target: str, now: datetime) -> Iterator[DeliveryRow]:
        """Rows that need the target: pending, in_flight or submitted, due by `now`, in planned order.
        Read lazily: the caller may deliver while iterating; a row is yielded at most once."""
    def count_due(self, target: str, now: datetime) -> int:
        """How many rows `work()` would yield now."""
    def rows(self, target: str, keys: Sequence[str]) -> dict[str, DeliveryRow]: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    def count_in_state(self, target: str, state: DeliveryState) -> int: ...
    def ledger(self, target: str) -> Ledger: ...
    def retry(self, record_ids: Sequence[str] | None, target: str | None = None) -> int:
        """Put failed items back in the queue (all of them when record_ids is None)."""

    # problems and failures ----------------------------------------------------------------------
    def replace_problems(self, source: str, problems: Sequence[Problem], run_id: str) -> None:
        """The input problems of `source` as of this run; fixed ones disappear."""
    def failures(self, target: str | None = None) -> list[Failure]: ...

    def result_counts(self) -> dict[str, int]:
        """Records by result status (passed, failed, ...)."""

    # transactions ---------------------------------------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes into one commit; nested calls join the outer transaction."""
    def share_writes(self) -> None:
        """Within `deferred_commits()`: from now on another process writes too (as `shared=True`)."""

    def deferred_commits(self, *, all_blocks: bool = False,
                         shared: bool = False) -> contextlib.AbstractContextManager[None]:
        """Ledger steps that need not be durable at once (all but begin()) may be committed together
        with the next durable one; everything is committed when the scope ends. `all_blocks`: every
        write may be committed a few seconds later (planning, which a crash makes redo, not lose).
        `shared`: another process delivers into the same store meanwhile; what is written is
        committed before the call returns, so no write lock is held between calls."""

    def flush(self) -> None:
        """Commit what deferred ledger steps left open."""

    def scratch(self) -> contextlib.AbstractContextManager[None]:
        """Writes inside are rolled back at the end (dry runs)."""

    def close(self) -> None: ...
