"""Kill test: SIGKILL a real `mcsync sync` at random moments against the sandbox, restart it, and check that
every award exists exactly once in Edubadges, RIO and the DUO register at the end.

    .venv/bin/python bench/kill_test.py [--kills 50] [--seed 7] [--cohort 24] [--latency 0.02]
                                        [--drop 0.03] [--window 1.0] [--keep DIR] [--json]

This process runs the sandbox on 127.0.0.1 with `--latency` seconds added to every request (so that a
sync is in the middle of its deliveries for a while) and a share `--drop` of requests applied and then
cut off before the answer. It writes an institution pointing at the sandbox (tests/exactly_once.py:
the demo mapping, a learner directory and an Osiris-style export of `--cohort` + 6 results), then
loops until `--kills` SIGKILLs have hit a running process:

1. maybe change the exports first (a grade corrected to a fail or back, a new learner who passed, a
   row that vanishes from the export) and let a learner accept an award in Edubadges (all seeded);
2. start `python -m mcsync sync` as a separate process;
3. kill it with SIGKILL at a random moment: mostly within `--window` seconds after its first request
   reached the sandbox (deliveries under way), sometimes earlier, while it reads and plans.
   A run that finishes before its moment counts as finished, not as a kill.

Then faults off, and plain syncs until nothing is pending, in flight or submitted; parked items are
handled as `mcsync failures` tells a person to (tests/exactly_once.settle_parked); and the sandbox is
audited against the exports: zero duplicates, zero missing, every withdrawal withdrawn.

Prints a summary (one JSON object with --json) and exits 0 only if the audit is clean.
tests/test_kill_recovery.py runs it in CI with 50 kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))            # the institution and the audit are shared with the test suite

from mcsync.sandbox import Faults
from mcsync.state import SqliteStateStore
from tests.exactly_once import (
    CODES,
    Exports,
    Institution,
    audit,
    new_sandbox,
    open_work,
    settle_parked,
)

#: Target settings for the subprocess: short waits, so a run is seconds, not minutes.
SETTINGS: dict[str, dict[str, Any]] = {
    "rio": {"poll_intervals": [0.05], "confirm_timeout": 5.0, "timeout": 10.0},
    "edubadges": {"timeout": 10.0},
    "duo": {"poll_interval": 0.05, "poll_budget": 5.0, "retry_initial": 0.05, "retry_max": 0.5, "timeout": 10.0},
}
RECOVERY_RUNS = 10
EARLY = 0.15                 # share of kills aimed before the first request (reading, mapping, planning)


class Harness:
    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.faults = Faults(latency=args.latency, drop_rate=args.drop, seed=args.seed)
        self.sandbox = new_sandbox(faults=self.faults, rio_visibility_delay=0.05, duo_processing_delay=0.05).start()
        self.inst = Institution.create(folder, self.sandbox, Exports.initial(args.cohort), url=self.sandbox.url,
                                       settings=SETTINGS)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MCSYNC_")}
        self.env["PYTHONPATH"] = str(REPO / "src")
        self.log = open(folder / "runs.log", "ab")
        self.counts: Counter[str] = Counter()
        self.startup: list[float] = []                    # seconds from spawn to the first request

    def close(self) -> None:
        self.log.close()
        self.sandbox.close()

    def requests(self) -> int:
        return sum(c.requests for c in self.sandbox.counters.values())

    def spawn(self) -> subprocess.Popen[bytes]:
        self.log.write(f"\n=== run {sum(self.counts.values()) + 1}\n".encode())
        self.log.flush()
        return subprocess.Popen([sys.executable, "-m", "mcsync", "--config", str(self.inst.config_path), "sync"],
                                cwd=self.inst.folder, env=self.env, stdout=self.log, stderr=self.log)

    # one killed run ---------------------------------------------------------------------------------
    def kill_one(self) -> None:
        early = self.rng.random() < EARLY
        expected_startup = sum(self.startup[-5:]) / len(self.startup[-5:]) if self.startup else 0.8
        delay = self.rng.uniform(0.2, expected_startup) if early else self.rng.uniform(0.0, self.args.window)
        before = self.requests()
        proc = self.spawn()
        spawned = time.monotonic()
        if early:
            deadline = spawned + delay
        else:                                  # wait for the first request, then the random moment
            while proc.poll() is None and self.requests() == before and time.monotonic() - spawned < 30:
                time.sleep(0.002)
            first = time.monotonic()
            if self.requests() != before:
                self.startup.append(first - spawned)
            deadline = first + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.counts["early kills" if early and self.requests() == before else "kills"] += 1
        else:
            self.counts["finished"] += 1

    def idle(self) -> bool:
        """Nothing is under way: a run now would have nothing to deliver (and nothing to be killed in)."""
        store = SqliteStateStore(self.inst.state_path)
        try:
            return not open_work(store)
        finally:
            store.close()

    def change_something(self) -> None:
        exports = self.inst.exports
        roll = self.rng.random()
        if roll >= 0.5 and self.idle():        # give the next run something to deliver
            roll *= 0.5
        if roll < 0.35:
            key = self.rng.choice(exports.present())
            exports.regrade(key, passed=not exports.passed(key))
            exports.write(self.inst.folder)
            self.counts["corrections"] += 1
        elif roll < 0.5:
            exports.add_learner(self.rng.choice(CODES))
            exports.write(self.inst.folder)
            self.counts["new learners"] += 1
        elif roll < 0.58 and len(exports.present()) > 10:
            exports.remove(self.rng.choice(exports.present()))     # vanished from the export: withdrawn
            exports.write(self.inst.folder)
            self.counts["removed rows"] += 1
        if self.rng.random() < 0.3:
            waiting = [k for k in exports.keys() if self.inst.unclaimed(k)]
            if waiting:
                self.sandbox.edubadges.claim(self.inst.unclaimed(self.rng.choice(waiting))[0])
                self.counts["claims"] += 1

    # the end ---------------------------------------------------------------------------------------
    def recover(self) -> dict[str, Any]:
        """Faults off; sync until nothing is under way, acting on failures as their hints say."""
        self.faults.off()
        busy: dict[str, dict[str, int]] = {}
        exits = []
        for _ in range(RECOVERY_RUNS):
            proc = self.spawn()
            exits.append(proc.wait(timeout=120))
            self.counts["recovery runs"] += 1
            store = SqliteStateStore(self.inst.state_path)
            try:
                busy = open_work(store)
                unexplained = [] if busy else settle_parked(self.inst, store)
                if unexplained or not (busy or open_work(store)):
                    # what stays with a person (the learner holds the badge, or it was revoked by hand)
                    kept = Counter(f.code or "no code" for f in store.failures())
                    return {"quiet": True, "exit_codes": exits, "unexplained_failures": unexplained,
                            "kept_by_a_person": dict(kept)}
            finally:
                store.close()
        return {"quiet": False, "still_under_way": busy, "exit_codes": exits, "unexplained_failures": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs to deliver to running syncs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cohort", type=int, default=24, help="generated learners with a passed result")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every request")
    parser.add_argument("--drop", type=float, default=0.03, help="share of requests applied, then cut off")
    parser.add_argument("--window", type=float, default=1.0,
                        help="kill within this many seconds after a run's first request")
    parser.add_argument("--keep", type=Path, help="keep the institution (state, exports, runs.log) here")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)

    started = time.monotonic()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="mcsync-kill-")
    folder = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    harness = Harness(folder / "institution", args)
    try:
        for _ in range(args.kills * 4):
            if harness.counts["kills"] + harness.counts["early kills"] >= args.kills:
                break
            harness.change_something()
            harness.kill_one()
        killing = time.monotonic() - started
        recovery = harness.recover()
        found = audit(harness.inst)
        kills = harness.counts["kills"] + harness.counts["early kills"]
        ok = (kills >= args.kills and recovery["quiet"] and not recovery["unexplained_failures"]
              and not found.problems)
        summary = {
            "ok": ok, "kills": kills, "kills_during_delivery": harness.counts["kills"],
            "kills_before_first_request": harness.counts["early kills"],
            "runs_finished_before_their_kill": harness.counts["finished"],
            "changes": {k: harness.counts[k] for k in ("corrections", "new learners", "removed rows", "claims")},
            "faults_injected": dict(harness.faults.injected),
            "results": len(harness.inst.exports.grades),
            "passed": sum(1 for k in harness.inst.exports.keys() if harness.inst.exports.awarded(k)),
            "startup_seconds": round(sum(harness.startup) / max(len(harness.startup), 1), 3),
            "recovery": recovery, "audit": found.as_dict(),
            "seconds": {"killing": round(killing, 1), "total": round(time.monotonic() - started, 1)},
            "seed": args.seed, "folder": str(folder) if args.keep else None,
        }
    finally:
        harness.close()
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"survived {summary['kills']} SIGKILLs ({summary['kills_during_delivery']} during deliveries, "
              f"{summary['kills_before_first_request']} before the first request; "
              f"{summary['runs_finished_before_their_kill']} runs finished first) in "
              f"{summary['seconds']['total']} s; {summary['results']} results, {summary['passed']} passed")
        print(f"changes {summary['changes']}; faults {summary['faults_injected']}; "
              f"recovery runs {summary['recovery']['exit_codes']}; failures a person settled by hand "
              f"{summary['recovery'].get('kept_by_a_person', {})}")
        print("audit: " + ("exactly once everywhere, every withdrawal withdrawn" if not found.problems
                           else "\n  ".join(["PROBLEMS", *found.problems])))
        for failure in summary["recovery"]["unexplained_failures"]:
            print(f"unexplained failure: {failure}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
