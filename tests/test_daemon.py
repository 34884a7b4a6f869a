"""`mcsync daemon` as systemd runs it: a real process, a notify socket, signals in the middle of a delivery.

The sandbox is slowed down so that a delivery is in hand when the signal comes; afterwards the
state must be one a restart can handle, and the next sync must finish the work with every award
made exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mcsync.cli import main
from mcsync.config import load_config
from mcsync.daemon import Daemon
from mcsync.notify import Notifier

from .ops_helpers import PASSED, UNITS, Deployment, NotifySocket, deployed

RESTARTABLE = {"pending", "in_flight", "submitted", "delivered", "withdrawn"}


@pytest.fixture
def systemd():
    # a short path: AF_UNIX socket paths are limited to 108 bytes
    folder = Path(tempfile.mkdtemp(prefix="mcsync-notify-"))
    receiver = NotifySocket(folder / "notify")
    yield receiver
    receiver.close()
    (folder / "notify").unlink(missing_ok=True)
    folder.rmdir()


def start_daemon(dep: Deployment, systemd: NotifySocket, log_file: Path, *, interval: str = "3600",
                 watchdog_usec: str = "1000000") -> subprocess.Popen[bytes]:
    env = {**os.environ, **dep.env, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": watchdog_usec}
    env.pop("MCSYNC_CONFIG", None)
    with open(log_file, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "mcsync", "--config", str(dep.config_path),
                                 "--log-format", "json", "daemon", "--interval", interval],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_until(condition, *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def states(dep: Deployment) -> dict[str, dict[str, int]]:
    store = dep.store()
    try:
        return store.counts()
    finally:
        store.close()


def sync_again_and_check_everything_is_there_once(dep: Deployment, monkeypatch, capsys) -> None:
    dep.sandbox.faults.latency = 0.0
    dep.apply(monkeypatch)
    assert main(["--config", str(dep.config_path), "sync"]) == 0, capsys.readouterr()
    held = states(dep)
    assert {t: c.get("delivered") for t, c in held.items()} == {"rio": UNITS, "edubadges": PASSED, "duo": PASSED}
    assert all(set(c) == {"delivered"} for c in held.values()), held
    awards = Counter((a.eppn, a.badgeclass) for a in dep.sandbox.edubadges.direct_awards())
    assert len(awards) == PASSED and set(awards.values()) == {1}            # one award per learner and badge
    assert len(dep.sandbox.duo.registrations) == PASSED
    assert dep.sandbox.rio.summary().startswith(f"{UNITS} units")


def test_sigterm_mid_delivery_finishes_the_delivery_in_hand_and_exits(tmp_path, systemd, monkeypatch, capsys):
    with deployed(tmp_path, latency=0.2) as dep:
        log_file = tmp_path / "daemon.log"
        daemon = start_daemon(dep, systemd, log_file)
        try:
            ready = systemd.wait_for("READY", within=15)
            assert "first run now" in ready["STATUS"]
            assert "syncing since" in systemd.wait_for("STATUS", within=5)["STATUS"]
            systemd.wait_for("WATCHDOG", within=5)
            edubadges = dep.sandbox.counters["edubadges"]
            wait_until(lambda: edubadges.writes >= 1, within=20, what="the first Edubadges write")
            signalled = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=10) == 0
            assert time.monotonic() - signalled < 10
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        assert systemd.wait_for("STOPPING", within=1)["STOPPING"] == "1"

        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        events = [line.get("event") for line in lines]
        assert "shutdown" in events and events[-1] == "daemon_stopped", events
        # stopped mid-run: the register was not reached, and nothing was left in a state a restart cannot handle
        held = states(dep)
        assert held["duo"] == {"pending": PASSED}, held
        assert all(set(c) <= RESTARTABLE for c in held.values()), held
        store = dep.store()
        try:
            last = store.last_run()
        finally:
            store.close()
        assert last is not None and last.exit_code == 75 and last.summary["interrupted"]

        sync_again_and_check_everything_is_there_once(dep, monkeypatch, capsys)


def test_a_second_sigterm_exits_at_once_and_the_next_sync_reconciles(tmp_path, systemd, monkeypatch, capsys):
    with deployed(tmp_path, latency=1.0) as dep:
        daemon = start_daemon(dep, systemd, tmp_path / "daemon.log")
        try:
            systemd.wait_for("READY", within=15)
            rio = dep.sandbox.counters["rio"]
            wait_until(lambda: rio.writes >= 1, within=20, what="the first RIO write")
            daemon.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING", within=2)
            signalled = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=5) == 128 + signal.SIGTERM
            assert time.monotonic() - signalled < 0.6    # less than one request of the sandbox: it did not wait
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        held = states(dep)
        assert all(set(c) <= RESTARTABLE for c in held.values()), held
        assert "delivered" not in held["rio"] and held["duo"] == {"pending": PASSED}   # it left in the middle
        sync_again_and_check_everything_is_there_once(dep, monkeypatch, capsys)


def test_runs_on_schedule_reports_status_and_rereads_its_configuration_on_sighup(tmp_path, systemd, monkeypatch):
    """In-process, with real signals: the daemon's handlers are installed before READY and restored after."""
    with deployed(tmp_path) as dep:
        dep.apply(monkeypatch)
        dep.append_config("[daemon]\ninterval = 3600")
        daemon = Daemon(lambda: load_config(dep.config_path), notifier=Notifier(str(systemd.path)))
        seen: dict[str, dict[str, str]] = {}
        failures: list[BaseException] = []

        def operator() -> None:
            try:
                systemd.wait_for("READY", within=10)
                seen["first"] = systemd.wait_for("STATUS", within=20)
                while not seen["first"]["STATUS"].startswith("last run"):
                    seen["first"] = systemd.wait_for("STATUS", within=20)
                # 3600 s until the next run: a new interval takes effect on SIGHUP
                dep.config_path.write_text(dep.config_path.read_text().replace("interval = 3600", "interval = 0.2"))
                os.kill(os.getpid(), signal.SIGHUP)
                systemd.wait_for("RELOADING", within=5)
                seen["reloaded"] = systemd.wait_for("READY", within=5)
                seen["second"] = systemd.wait_for("STATUS", within=10)
                while not seen["second"]["STATUS"].startswith("last run"):
                    seen["second"] = systemd.wait_for("STATUS", within=10)
                dep.config_path.write_text("[institution\n")           # broken: the previous one is kept
                os.kill(os.getpid(), signal.SIGHUP)
                seen["broken"] = systemd.wait_for("READY", within=5)
                seen["third"] = systemd.wait_for("STATUS", within=10)
                while not seen["third"]["STATUS"].startswith("last run"):
                    seen["third"] = systemd.wait_for("STATUS", within=10)
            except BaseException as exc:  # reported by the test below
                failures.append(exc)
            finally:
                if signal.getsignal(signal.SIGTERM) == daemon._on_stop:   # never kill pytest itself
                    os.kill(os.getpid(), signal.SIGTERM)

        thread = threading.Thread(target=operator)
        thread.start()
        assert daemon.run() == 0
        thread.join()
        assert not failures, failures
        assert signal.getsignal(signal.SIGTERM) is not daemon._on_stop   # handlers restored
        first = seen["first"]["STATUS"]
        assert "read 15, mapped 15, unchanged 0" in first and "edubadges delivered 11 parked 0" in first
        assert "exit 0" in first and "next run" in first
        assert seen["reloaded"]["STATUS"].startswith("configuration re-read")
        assert "edubadges delivered 0 parked 0" in seen["second"]["STATUS"]   # nothing new: nothing sent
        assert "reload failed, previous configuration kept" in seen["broken"]["STATUS"]
        assert daemon.runs >= 3 and "exit 0" in seen["third"]["STATUS"]


def test_sigterm_to_the_unit_stops_a_delivery_process_too_and_the_next_sync_finishes_once(
        tmp_path, systemd, monkeypatch, capsys):
    """systemd signals every process of the unit: the daemon and its delivery process (mcsync.lanes)
    both finish the delivery in hand; none is left behind."""
    with deployed(tmp_path, latency=0.2) as dep:
        log_file = tmp_path / "daemon.log"
        env = {**os.environ, **dep.env, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000",
               "MCSYNC_DELIVERY__MIN_BACKLOG": "1", "MCSYNC_DELIVERY__PROCESSES": "2"}
        env.pop("MCSYNC_CONFIG", None)
        with open(log_file, "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "mcsync", "--config", str(dep.config_path),
                                       "--log-format", "json", "daemon", "--interval", "3600"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            systemd.wait_for("READY", within=15)
            edubadges = dep.sandbox.counters["edubadges"]
            wait_until(lambda: edubadges.writes >= 1, within=20, what="the first Edubadges write")
            signalled = time.monotonic()
            os.killpg(daemon.pid, signal.SIGTERM)            # as systemd stops a unit (KillMode=control-group)
            assert daemon.wait(timeout=10) == 0
            assert time.monotonic() - signalled < 10
        finally:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        started = [line for line in lines if line.get("event") == "lane_started"]
        assert len(started) == 1 and "edubadges" in started[0]["message"]
        lane = int(started[0]["message"].rsplit(" ", 1)[1])
        with pytest.raises(ProcessLookupError):
            os.kill(lane, 0)                                 # it ended (and was waited for)
        # the lane's own lines came through the daemon's log, as JSON
        assert any("edubadges: bundle" in line.get("message", "") for line in lines)
        held = states(dep)
        assert all(set(c) <= RESTARTABLE for c in held.values()), held
        sync_again_and_check_everything_is_there_once(dep, monkeypatch, capsys)
