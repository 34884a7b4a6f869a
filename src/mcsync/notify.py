"""The systemd notify protocol (sd_notify(3)), with the standard library only.

systemd passes a datagram socket in `NOTIFY_SOCKET` to a `Type=notify` service: a file system path,
or an abstract socket name written with a leading '@'. Each message is one datagram of
newline-separated `KEY=VALUE` assignments:

    READY=1            start-up is done (systemd now counts the service as started)
    RELOADING=1        re-reading the configuration (with MONOTONIC_USEC=); READY=1 ends it
    STOPPING=1         shutting down
    STATUS=...         one line of free text, shown by `systemctl status`
    WATCHDOG=1         "still alive"; expected at least every `WATCHDOG_USEC` microseconds when the
                       unit sets `WatchdogSec=` (we ping at half of that, as sd_watchdog_enabled(3) advises)

Without `NOTIFY_SOCKET` (a terminal, cron, the tests) every call is a no-op. A failing send is
logged once and never raised: the daemon must go on syncing whatever happens to its supervisor.
`Watchdog` pings from a thread, but only while `alive()` says the daemon shows signs of life, so a
stuck daemon stops feeding the watchdog and systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: A supervisor that stops reading its socket must not stall the daemon (a full queue blocks sendto).
SEND_TIMEOUT = 1.0


class Notifier:
    """Sends notify messages to systemd, or nothing when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        # re-entrant: the daemon's signal handler sends STOPPING=1, and it may interrupt a send in progress
        self._lock = threading.RLock()
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send one message, e.g. `send(READY=1, STATUS="waiting")`. True if systemd got it."""
        if not self.address:
            return False
        text = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items())
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._socket.settimeout(SEND_TIMEOUT)
                self._socket.sendto(text.encode("utf-8"), _socket_address(self.address))
        except (OSError, ValueError) as exc:
            if not self._failed:  # once: a lost supervisor must not flood the log
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc, extra={"event": "notify_failed"})
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")   # an abstract socket: no file behind it
    if address.startswith("/"):
        return address
    raise ValueError(f"unsupported NOTIFY_SOCKET {address!r} (expected a path or @abstract-name)")


def _one_line(value: str) -> str:
    return " ".join(value.splitlines())


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of `WATCHDOG_USEC`), or None when systemd expects none.

    As in sd_watchdog_enabled(3): `WATCHDOG_PID`, when set, must name this process (a child that
    inherited the environment must not ping for its parent).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


class Watchdog:
    """Pings `WATCHDOG=1` every `interval` seconds from a thread while `alive()` holds."""

    def __init__(self, notifier: Notifier, interval: float, alive: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.interval = interval
        self.alive = alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._starved = False

    def start(self) -> Watchdog:
        self.notifier.watchdog()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.alive():
                self.notifier.watchdog()
                self._starved = False
            elif not self._starved:
                self._starved = True
                log.error("no sign of life from the sync loop: the systemd watchdog is no longer fed "
                          "and systemd will restart the daemon", extra={"event": "watchdog_starved"})
