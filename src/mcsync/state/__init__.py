"""Sync state: what every run knows about what each system already holds."""

from .sqlite import SqliteStateStore
from .store import DeliveryRow, Failure, Problem, RunInfo, StateStore, StoredRecord

__all__ = ["DeliveryRow", "Failure", "Problem", "RunInfo", "SqliteStateStore", "StateStore", "StoredRecord"]
