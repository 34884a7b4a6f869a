"""`mcsync daemon`: a sync every interval until a signal says stop.

The loop
--------
1. Read the configuration (an error here exits 2 before systemd is told READY, so a broken unit
   fails visibly; `RestartPreventExitStatus=2` keeps systemd from restarting it in a loop).
2. Start the optional /metrics endpoint and the watchdog, then tell systemd READY=1.
3. Run a sync at once, then one every `interval` seconds, counted from the start of the previous
   run (a run that takes longer than the interval is followed at once). Each run takes the run
   lock for its duration only, so `mcsync retry` or a manual `mcsync sync` can go in between;
   a run that finds the lock held is skipped. After each run: the summary line in the log, the
   metrics (text file and endpoint), and STATUS= for `systemctl status`. A run that fails (a bad
   target table, a bug) is logged and the loop goes on: each run starts from the state store.
4. Between runs the daemon sleeps in ticks of `TICK` seconds and looks at its flags after each, so a
   stop or reload never waits for the interval to pass.

Signals (dlt's two-stage handling)
----------------------------------
- SIGTERM / SIGINT, first time: the engine's `stop` event is set and systemd is told STOPPING=1.
  The engine finishes the delivery in hand (back-off and poll waits end at once), keeps the rest
  queued and returns; the daemon then exits 0. Nothing is lost: what was sent is recorded, what
  may have been sent is in_flight and reconciled by the next run.
- SIGTERM / SIGINT, second time: exit at once (128 + signal number). The state store stays
  consistent all the same (committed before every remote call), like after a crash.
- SIGHUP: re-read the configuration before the next run (RELOADING=1, then READY=1). A
  configuration that does not validate is logged and the previous one is kept.

The handlers only set flags and send one notify datagram: they take no lock that the interrupted
code may hold (`Event.is_set()` in the engine takes none; the notifier's lock is re-entrant), and
logging happens in the loop.

The watchdog
------------
With `WatchdogSec=` systemd expects WATCHDOG=1 at least every `WATCHDOG_USEC`. A thread pings
at half of that, but only while the main thread shows signs of life within `daemon.stall_timeout`:
a scheduler tick, a log line or an answered HTTP request. A run stuck without any of those
stops the pings, and systemd restarts the daemon; the restarted one reconciles what was in flight.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType

import httpx

from . import http
from .cli import log_run_summary
from .config import Config
from .engine import EXIT_OK, Engine, RunReport
from .errors import ConfigError, LockHeld, McsyncError, ShutdownRequested
from .lock import RunLock
from .metrics import RunMetrics, target_urls
from .notify import Notifier, Watchdog, watchdog_interval
from .state import SqliteStateStore

log = logging.getLogger("mcsync.daemon")

TICK = 0.2   # seconds between looks at the signal flags while waiting for the next run


class Heartbeat:
    """When the main thread last showed a sign of life (monotonic seconds)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._main = threading.main_thread().ident

    def beat(self) -> None:
        self._last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._last

    def from_log(self, record: logging.LogRecord) -> None:
        """A log record from the main thread counts as a beat (the watchdog thread's own do not)."""
        if record.thread == self._main:
            self.beat()

    def from_request(self, request: httpx.Request, response: httpx.Response, seconds: float) -> None:
        self.beat()


class Daemon:
    """The loop above. `run()` returns the exit code; construct and run in the main thread."""

    def __init__(self, load: Callable[[], Config], *, interval: float | None = None,
                 notifier: Notifier | None = None) -> None:
        self.load = load
        self.interval_override = interval
        self.notifier = notifier or Notifier.from_environment()
        self.stop = threading.Event()          # handed to every Engine: a run ends with the delivery in hand
        self.heartbeat = Heartbeat()
        self.config: Config | None = None
        self.metrics: RunMetrics | None = None
        self.last_status = "no run yet"
        self.runs = 0
        self._reload = False
        self._signal: str | None = None

    @property
    def interval(self) -> float:
        assert self.config is not None
        return self.interval_override or self.config.settings.daemon.interval

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self.config = self.load()
        previous = self._install_signals()
        self.metrics = RunMetrics.for_config(self.config)
        undo_observer = http.observe_requests(self.heartbeat.from_request)
        pulse = _LogPulse(self.heartbeat)
        logging.getLogger().addHandler(pulse)
        watchdog: Watchdog | None = None
        try:
            listen = self.config.settings.metrics.listen
            if listen:
                try:
                    host, port = self.metrics.serve(listen)
                except OSError as exc:
                    raise ConfigError(f"cannot serve /metrics on {listen}: {exc}", key="metrics.listen") from None
                log.info("metrics served on http://%s:%d/metrics", host, port, extra={"event": "metrics_listening"})
            every = watchdog_interval()
            if every is not None and self.notifier.enabled:
                stall = self.config.settings.daemon.stall_timeout
                watchdog = Watchdog(self.notifier, every, lambda: self.heartbeat.age() < stall).start()
            log.info("daemon started: a sync every %s", _duration(self.interval),
                     extra={"event": "daemon_started"})
            self.notifier.ready(f"started; first run now, then every {_duration(self.interval)}")
            self._loop()
        finally:
            if watchdog is not None:
                watchdog.stop()
            logging.getLogger().removeHandler(pulse)
            undo_observer()
            self.metrics.close()
            self._restore_signals(previous)
        log.info("daemon stopped (%s)", self._signal or "stop requested", extra={"event": "daemon_stopped"})
        self.notifier.close()
        return EXIT_OK

    def _loop(self) -> None:
        last_start: float | None = None
        while not self.stop.is_set():
            self.heartbeat.beat()
            if self._reload:
                self._reload = False
                self._reread()
            # from the start of the previous run, with the interval in force now (SIGHUP may change it)
            left = 0.0 if last_start is None else last_start + self.interval - time.monotonic()
            if left > 0:
                time.sleep(min(left, TICK))
                continue
            last_start = time.monotonic()
            self._run_once()
            if not self.stop.is_set():
                self._status(f"{self.last_status}; next run {_clock(last_start + self.interval)}")

    def _reread(self) -> None:
        self.notifier.reloading()
        try:
            config = self.load()
        except ConfigError as exc:
            log.error("SIGHUP: the configuration does not validate, keeping the previous one: %s", exc,
                      extra={"event": "reload_failed"})
            self.notifier.ready(f"reload failed, previous configuration kept: {exc}")
            return
        self.config = config
        assert self.metrics is not None
        self.metrics.set_targets(target_urls(config))
        log.info("SIGHUP: configuration re-read; a sync every %s", _duration(self.interval),
                 extra={"event": "reloaded"})
        self.notifier.ready(f"configuration re-read; {self.last_status}")

    # ------------------------------------------------------------------ one run
    def _run_once(self) -> None:
        assert self.config is not None and self.metrics is not None
        config = self.config
        begun = datetime.now().astimezone()
        self._status(f"syncing since {begun:%H:%M:%S}; previous: {self.last_status}")
        self.runs += 1
        report: RunReport | None = None
        try:
            with RunLock(config.state_path):
                store = SqliteStateStore(config.state_path)
                try:
                    report = Engine(config, store, stop=self.stop).run()
                    self.metrics.after_run(store, report, config)
                finally:
                    store.close()
        except LockHeld as exc:
            log.warning("%s; this run is skipped", exc, extra={"event": "run_skipped"})
            self.last_status = f"run at {begun:%H:%M} skipped: another mcsync run held the lock"
            return
        except ShutdownRequested as exc:
            log.warning("%s", exc, extra={"event": "shutdown"})
            self.last_status = f"run at {begun:%H:%M} stopped by a shutdown request"
            return
        except McsyncError as exc:
            log.error("run failed: %s", exc, extra={"event": "run_failed"})
            self.last_status = f"run at {begun:%H:%M} failed: {exc}"
            return
        except Exception as exc:  # a bug must not end the schedule: the next run starts from the store
            log.exception("run stopped by an unexpected error; in_flight items are reconciled by the next run",
                          extra={"event": "run_failed"})
            self.last_status = f"run at {begun:%H:%M} failed: {type(exc).__name__}"
            return
        log_run_summary(report)
        self.last_status = f"last run {begun:%H:%M}: {status_text(report)}"

    def _status(self, text: str) -> None:
        self.notifier.status(text[:400])

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> dict[int, signal.Handlers | Callable[..., object] | int | None]:
        previous: dict[int, signal.Handlers | Callable[..., object] | int | None] = {}
        for signum, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                                (signal.SIGHUP, self._on_hup)):
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, signal.Handlers | Callable[..., object] | int | None]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            os.write(2, f"mcsync: second {name}: exiting at once; items in flight are reconciled on the "
                        "next run\n".encode())
            os._exit(128 + signum)
        self._signal = name
        self.stop.set()
        self.notifier.stopping(f"{name}: finishing the delivery in hand (send it again to exit at once)")

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True


class _LogPulse(logging.Handler):
    """Counts log records of the main thread as signs of life; writes nothing."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        super().__init__(level=logging.NOTSET)
        self.heartbeat = heartbeat

    def emit(self, record: logging.LogRecord) -> None:
        self.heartbeat.from_log(record)


def status_text(report: RunReport) -> str:
    """One line for STATUS=: the run's counts and, per target, what it delivered and parked."""
    parts = [f"read {report.read}, mapped {report.mapped}, unchanged {report.unchanged}, problems {report.problems}"]
    for name, t in report.targets.items():
        text = f"{name} delivered {t.confirmed} parked {t.parked}"
        if t.unavailable:
            text += " (unavailable)"
        elif t.error:
            text += " (error)"
        parts.append(text)
    if report.interrupted:
        parts.append("interrupted")
    return "; ".join(parts) + f"; exit {report.exit_code}"


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _clock(monotonic_at: float) -> str:
    moment = time.time() + (monotonic_at - time.monotonic())
    return datetime.fromtimestamp(moment).astimezone().strftime("%H:%M:%S")

