"""Nothing lost, nothing twice, with real process deaths: bench/kill_test.py SIGKILLs `mcsync sync` 50 times at
random moments against the sandbox (latency, writes applied and then cut off, corrections, new learners,
claims in between), then syncs in peace and audits Edubadges, RIO and the DUO register."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO

KILLS = 50


def test_fifty_sigkills_leave_every_award_exactly_once_and_every_withdrawal_withdrawn(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "kill_test.py"), "--kills", str(KILLS), "--seed", "7",
                           "--window", "0.6", "--json", "--keep", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(done.stdout)
    print(json.dumps(report, indent=2))                       # shown with -s, and kept in the log on failure
    log = (tmp_path / "institution" / "runs.log").read_text(encoding="utf-8", errors="replace")
    assert report["kills"] >= KILLS
    assert report["kills_during_delivery"] >= KILLS // 2      # most deaths hit deliveries in progress
    assert report["faults_injected"].get("drop", 0) > 0       # and some writes were applied without an answer
    assert sum(report["changes"].values()) > 0
    assert report["recovery"]["quiet"], (report["recovery"], log[-4000:])
    assert report["recovery"]["unexplained_failures"] == [], log[-4000:]
    assert report["audit"]["duplicates"] == [] and report["audit"]["missing"] == []
    assert report["audit"]["not_withdrawn"] == []
    assert report["audit"]["checked"] >= report["results"] and report["ok"]
    assert done.returncode == 0
