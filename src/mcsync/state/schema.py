"""The state schema and its migrations.

`MIGRATIONS[n]` takes a store at version n to version n + 1. A store written by a newer mcsync
(a version we do not know) is refused rather than guessed at. Never edit a released migration;
add a new one.

Tables:
- `meta`        schema_version.
- `runs`        one row per run: when, what kind, exit code, summary.
- `learners`    the SIS learner directory ([[learners]]), joined to results by student number.
- `records`     the canonical records (JSON) with their content hash and plan hash. Since v5 a record's
                `data` leaves out its definition, kept once in `definitions` under the digest in
                `records.definition` (rows written before v5 hold the whole record and no digest).
- `deliveries`  the outbox: one row per (target, key); see mcsync.targets.base for the states.
- `problems`    input that needs a person (file, line, field, reason); replaced per source per run.
- `run_seen`    (v5) the records the current run has read so far, with the rank of the row that won.
  `records.rank` (v6): that rank for the stored record (`record.result_rank`; NULL in rows from before).
- `inputs`      (v2) the fingerprint of each export as last read in full, so an unchanged one is skipped.
  `records.hold` (v2): why a record must not be at the targets whatever its result: "vanished" (no
  longer in its export) or "revoked" (`mcsync revoke`), with `hold_reason` in words.
"""

from __future__ import annotations

import sqlite_utils

from ..errors import ConfigError

MIGRATIONS: list[list[str]] = [
    [  # 0 -> 1
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT NOT NULL, "
        "finished_at TEXT, exit_code INTEGER, summary TEXT)",
        "CREATE TABLE learners (student_number TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE TABLE records (record_id TEXT PRIMARY KEY, source TEXT NOT NULL, student_number TEXT NOT NULL, "
        "code TEXT NOT NULL, status TEXT NOT NULL, content_hash TEXT NOT NULL, plan_hash TEXT NOT NULL, "
        "data TEXT NOT NULL, file TEXT, line INTEGER, first_run TEXT NOT NULL, seen_run TEXT NOT NULL, "
        "updated_at TEXT NOT NULL)",
        "CREATE INDEX records_by_source ON records (source, seen_run)",
        "CREATE INDEX records_by_code ON records (code)",
        "CREATE TABLE deliveries (target TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, "
        "desired_hash TEXT, delivered_hash TEXT, attempts INTEGER NOT NULL DEFAULT 0, remote_id TEXT, "
        "correlation_id TEXT, remote_data TEXT, note TEXT, error_code TEXT, not_before TEXT, "
        "since TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (target, key))",
        "CREATE INDEX deliveries_by_state ON deliveries (target, state)",
        "CREATE INDEX deliveries_by_correlation ON deliveries (target, correlation_id)",
        "CREATE TABLE problems (source TEXT NOT NULL, fingerprint TEXT NOT NULL, file TEXT, line INTEGER, "
        "field TEXT, reason TEXT NOT NULL, record_id TEXT, since TEXT NOT NULL, seen_run TEXT NOT NULL, "
        "PRIMARY KEY (source, fingerprint))",
    ],
    [  # 1 -> 2: input fingerprints (skip unchanged exports) and holds (withdrawn on purpose)
        "CREATE TABLE inputs (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, run_id TEXT NOT NULL, "
        "updated_at TEXT NOT NULL)",
        "ALTER TABLE records ADD COLUMN hold TEXT",
        "ALTER TABLE records ADD COLUMN hold_reason TEXT",
    ],
    [  # 2 -> 3: the due work of a target is found by state, in key order, without scanning the rest
        "DROP INDEX deliveries_by_state",
        "CREATE INDEX deliveries_by_state ON deliveries (target, state, key)",
    ],
    [  # 3 -> 4: a row parked with an unknown remote outcome is never settled by its hashes alone
        "ALTER TABLE deliveries ADD COLUMN unsettled INTEGER NOT NULL DEFAULT 0",
    ],
    [  # 4 -> 5: each definition is kept once; a record keeps its digest and the rest of its JSON
        "CREATE TABLE definitions (digest TEXT PRIMARY KEY, code TEXT NOT NULL, data TEXT NOT NULL)",
        "ALTER TABLE records ADD COLUMN definition TEXT",
        # nothing looks rows up by correlation id; keeping the index up to date cost every ledger write
        "DROP INDEX deliveries_by_correlation",
        # due work in the order it was planned (rowid), not in key order: the rows a delivery takes
        # together then sit together on disk, so a commit writes a few pages instead of one per row
        "DROP INDEX deliveries_by_state",
        "CREATE INDEX deliveries_by_state ON deliveries (target, state)",
        # the records one run read, with the rank of the row that won (duplicates, vanished records):
        # on disk, so that memory stays flat whatever the size of the exports
        "CREATE TABLE run_seen (record_id TEXT PRIMARY KEY, rank INTEGER NOT NULL) WITHOUT ROWID",
    ],
    [  # 5 -> 6: a record keeps the rank of its result, so an unchanged row needs no grading to be ranked
        "ALTER TABLE records ADD COLUMN rank INTEGER",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def current_version(db: sqlite_utils.Database) -> int:
    if "meta" not in db.table_names():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the store to SCHEMA_VERSION; returns the version it was at. Runs in the caller's transaction."""
    found = current_version(db)
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"the state file has schema version {found}, this mcsync knows up to {SCHEMA_VERSION}",
            hint="upgrade mcsync; never point an older mcsync at a newer state file")
    for version in range(found, SCHEMA_VERSION):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [str(version + 1)])
    return found
