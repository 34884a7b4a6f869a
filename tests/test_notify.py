"""The systemd notify protocol as systemd speaks it: datagrams on NOTIFY_SOCKET, paths and abstract names."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import pytest

from mcsync.notify import Notifier, Watchdog, watchdog_interval

from .ops_helpers import NotifySocket


@pytest.fixture
def systemd(tmp_path):
    receiver = NotifySocket(tmp_path / "notify.sock")
    yield receiver
    receiver.close()


def test_ready_status_stopping_reach_a_socket_path(systemd):
    notifier = Notifier(str(systemd.path))
    assert notifier.enabled
    assert notifier.ready("waiting for the first run")
    assert systemd.receive(1) == {"READY": "1", "STATUS": "waiting for the first run"}
    assert notifier.status("read 25\nmapped 15")       # STATUS is one line, whatever it is given
    assert systemd.receive(1) == {"STATUS": "read 25 mapped 15"}
    assert notifier.stopping("SIGTERM")
    assert systemd.receive(1) == {"STOPPING": "1", "STATUS": "SIGTERM"}
    assert notifier.reloading()
    message = systemd.receive(1)
    assert message["RELOADING"] == "1"
    assert abs(int(message["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000
    notifier.close()


def test_an_abstract_socket_name_starts_with_an_at_sign():
    name = f"mcsync-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(1)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert receiver.recv(100) == b"WATCHDOG=1"
        notifier.close()
    finally:
        receiver.close()


def test_without_systemd_nothing_is_sent_and_a_lost_socket_is_reported_once(tmp_path, caplog):
    assert not Notifier.from_environment({}).enabled
    assert Notifier.from_environment({}).ready("x") is False
    gone = Notifier(str(tmp_path / "no-such.sock"))
    with caplog.at_level(logging.WARNING, logger="mcsync.notify"):
        assert gone.ready("x") is False and gone.status("y") is False
    assert [r.getMessage() for r in caplog.records if "cannot notify systemd" in r.getMessage()] == \
        [f"cannot notify systemd at {tmp_path / 'no-such.sock'}: [Errno 2] No such file or directory"]


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_the_watchdog_is_fed_only_while_the_daemon_shows_signs_of_life(systemd):
    alive = threading.Event()
    alive.set()
    dog = Watchdog(Notifier(str(systemd.path)), 0.05, alive.is_set).start()
    try:
        for _ in range(3):
            assert systemd.receive(1) == {"WATCHDOG": "1"}
        alive.clear()
        time.sleep(0.1)                      # a ping already under way may still arrive
        while systemd.receive(0.01) is not None:
            pass
        assert systemd.receive(0.3) is None  # stuck: no more pings, so systemd would restart us
        alive.set()
        assert systemd.receive(1) == {"WATCHDOG": "1"}
    finally:
        dog.stop()
