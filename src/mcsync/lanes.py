"""Delivery lanes: groups of targets that do not wait for each other, delivered in processes of their own.

Why: delivering is mostly Python work (award bundles and register XML to build, records to read back,
ledger steps to write), and CPython runs Python code on one core at a time. Targets that do not depend
on each other (Edubadges on one side, RIO and the DUO register that waits for it on the other) can use
a core each.

How a run uses them (`Engine._start_lanes`):

- The chosen targets are split into *lanes* (`split`): groups closed under `depends_on`, so a target
  travels with whatever it waits for. The first lane stays in the main process. Each further lane with
  at least `delivery.min_backlog` items due gets a process (`python -m mcsync.lanes`), at most
  `delivery.processes` processes in all ("auto": one per lane, at most one per CPU core).
- A lane starts *while the main process is still planning*, as soon as its backlog is large enough
  (the catalogue, RIO's work, is planned before any record): it delivers what is planned (committed)
  so far, looks again every half second, and after the main process sends `planned` it makes one last
  pass and finishes. A pass skips the rows it has handled already with the same desired content, so
  each item is handled once per run, and a record planned again meanwhile (changed content) is
  handled again. So a record that several rows of one run give (a resit) may reach a target in an
  earlier version first, corrected in the same run, as if the export had been read in two runs;
  `delivery.during_planning = false` starts the lanes after planning instead.
- The process opens the same state file with its own connection and delivers its lane as the main
  process would: the same targets, the same ledger, the same crash rules (mcsync.targets.base). No two
  processes deliver the same target, so they never change the same outbox row; SQLite orders their
  writes. Meanwhile neither process holds SQLite's write lock between calls
  (`deferred_commits(shared=True)`), so neither waits for the other longer than one write.
- The process sends back, over a pipe: its log records (written by the main process's handlers, so
  the journal gets one stream), its progress, every answered request (for the metrics and the
  systemd watchdog), and at the end its targets' reports. The main process handles them in the
  thread that reads the pipe, as they come (logging, progress displays and metrics are thread-safe).
- Stopping: the main process sends `stop` when a shutdown is requested. The lane also stops on
  SIGTERM or SIGINT (systemd and a terminal signal the whole group): it finishes the delivery in hand,
  leaves the rest queued, and reports. A second signal ends it at once. It dies with the main process
  (Linux: PR_SET_PDEATHSIG), so no lane delivers on after its run has ended and a new run has the lock.

What if a lane process dies mid-delivery: exactly what a crash of a single process leaves. Items it
marked in_flight are reconciled on the next run; the main process reports its targets as stopped by
an error (exit code 1), with the process's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from . import http
from .config import Config
from .log import install_redaction, redact
from .progress import Progress
from .record import MicrocredentialDefinition

log = logging.getLogger("mcsync.lanes")

STOP_GRACE = 60.0        # seconds a lane gets to finish the delivery in hand after a stop, then it is killed
PROGRESS_EVERY = 0.25    # seconds between a lane's progress messages
EXIT_ORPHANED = 70       # the main process was gone before the lane started


def split(depends_on: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Target names in groups closed under their dependencies, each group in the given order, the
    groups in the order of their first member. Dependencies on targets not given are ignored."""
    parent = {name: name for name in depends_on}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for name, dependencies in depends_on.items():
        for dependency in dependencies:
            if dependency in parent:
                parent[root(name)] = root(dependency)
    groups: dict[str, list[str]] = {}
    for name in depends_on:
        groups.setdefault(root(name), []).append(name)
    return list(groups.values())


@dataclass
class LaneJob:
    """What a lane process is sent when it starts (pickled over its pipe)."""

    config: Config
    state_path: Path
    run_id: str
    targets: list[str]
    definitions: dict[str, MicrocredentialDefinition]   # the microcredentials the main process planned
    log_levels: dict[str, int]                           # by logger name ("" is the root)
    parent_pid: int
    planning: bool = False                               # the main process is still planning: wait for `planned`


@dataclass
class LaneOutcome:
    """What a lane reports when it is done: its targets' report fields, and why it stopped early, if it did."""

    targets: dict[str, dict[str, Any]]
    interrupted: str | None


# ---------------------------------------------------------------------------- the main process's side
class LaneProcess:
    """The main process's handle on one lane process. Its messages are handled by the reading thread."""

    def __init__(self, job: LaneJob, progress: Progress) -> None:
        self.job = job
        self.targets = list(job.targets)
        self.outcome: LaneOutcome | None = None
        self._progress = progress
        self._stop_sent = False
        self._finished = threading.Event()

    @classmethod
    def start(cls, job: LaneJob, progress: Progress) -> LaneProcess:
        lane = cls(job, progress)
        down_read, down_write = os.pipe()
        up_read, up_write = os.pipe()
        try:
            lane.process = subprocess.Popen(
                [sys.executable, "-m", "mcsync.lanes", str(down_read), str(up_write)],
                pass_fds=(down_read, up_write), stdin=subprocess.DEVNULL)
        except BaseException:
            for fd in (down_write, up_read):
                os.close(fd)
            raise
        finally:
            os.close(down_read)
            os.close(up_write)
        lane._down = Connection(down_write, readable=False)
        lane._up = Connection(up_read, writable=False)
        threading.Thread(target=lane._receive, name=f"lane-{lane.process.pid}", daemon=True).start()
        lane._down.send(job)
        return lane

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def running(self) -> bool:
        """Still delivering: it has not reported its outcome, and has not ended."""
        return not self._finished.is_set() and self.process.poll() is None

    def _receive(self) -> None:
        """Reader thread: every message is handled as it comes, in order, until the pipe ends."""
        try:
            while True:
                message = self._up.recv()
                try:
                    self._dispatch(message)
                except Exception:       # a display or an observer failed: the next messages still count
                    log.exception("a message from delivery process %d could not be handled", self.pid)
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("the messages of delivery process %d could not be read", self.pid)
        finally:
            self._finished.set()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "log":
            record: logging.LogRecord = message[1]
            logging.getLogger(record.name).handle(record)
        elif kind == "progress":
            _, method, args = message
            show = getattr(self._progress, method, None)     # resize() is optional
            if show is not None:
                show(*args)
        elif kind == "request":
            _, method, url, status, seconds = message
            request = httpx.Request(method, url)
            http.report_request(request, httpx.Response(status, request=request), seconds)
        elif kind == "done":
            self.outcome = message[1]

    def request_stop(self) -> None:
        if not self._stop_sent:
            self._stop_sent = True
            with contextlib.suppress(OSError):
                self._down.send("stop")

    def planned(self, definitions: dict[str, MicrocredentialDefinition]) -> None:
        """Planning is over: what is due now is all there is for this run."""
        with contextlib.suppress(OSError):        # it is gone already: `wait` tells
            self._down.send(("planned", definitions))

    async def wait(self, stop: threading.Event) -> LaneOutcome | None:
        """Until the lane is done (forwarding a shutdown request); its outcome, or None if it died first."""
        try:
            while not self._finished.is_set():
                if stop.is_set():
                    self.request_stop()
                await asyncio.sleep(0.05)
            while self.process.poll() is None:
                await asyncio.sleep(0.01)
        finally:
            if self.process.poll() is None:        # we were cancelled: the lane stops too
                self.close()
            self._close_pipes()
        return self.outcome

    def close(self) -> None:
        """Stop the lane and wait for it (at most STOP_GRACE seconds, then it is killed)."""
        self.request_stop()
        try:
            self.process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            log.error("delivery process %d did not stop within %.0f s; killed (its in_flight items are "
                      "reconciled on the next run)", self.pid, STOP_GRACE)
            self.process.kill()
            self.process.wait()
        finally:
            self._close_pipes()

    def _close_pipes(self) -> None:
        """Both ends this process holds (idempotent): a daemon runs for years, one run after another."""
        self._down.close()
        if self._finished.is_set():               # the reading thread is done with its end
            self._up.close()


# ---------------------------------------------------------------------------- the lane process's side
class _Outbox:
    """The pipe to the main process, safe to write from any thread."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: Any) -> None:
        with self._lock:
            self._connection.send(message)

    def request(self, request: httpx.Request, response: httpx.Response, seconds: float) -> None:
        self.send(("request", request.method, str(request.url), response.status_code, seconds))


class _PipeProgress:
    """`Progress` sent to the main process's display; advances are summed, sent every PROGRESS_EVERY s."""

    def __init__(self, outbox: _Outbox) -> None:
        self._outbox = outbox
        self._waiting: dict[str, int] = {}
        self._sent = time.monotonic()

    def start(self, phase: str, total: int | None) -> None:
        self._outbox.send(("progress", "start", (phase, total)))

    def resize(self, phase: str, total: int) -> None:
        self._flush()
        self._outbox.send(("progress", "resize", (phase, total)))

    def advance(self, phase: str, n: int = 1) -> None:
        self._waiting[phase] = self._waiting.get(phase, 0) + n
        if time.monotonic() - self._sent >= PROGRESS_EVERY:
            self._flush()

    def finish(self, phase: str) -> None:
        self._flush()
        self._outbox.send(("progress", "finish", (phase,)))

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for phase, n in waiting.items():
            self._outbox.send(("progress", "advance", (phase, n)))
        self._sent = time.monotonic()


class _ForwardingHandler(logging.Handler):
    """Log records go to the main process whole (message already redacted, traceback as text)."""

    def __init__(self, outbox: _Outbox) -> None:
        super().__init__()
        self._outbox = outbox
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.exc_info:
                record.exc_text = redact(self._formatter.formatException(record.exc_info))
                record.exc_info = None
            record.msg, record.args = redact(record.getMessage()), None
            self._outbox.send(("log", record))
        except Exception:
            self.handleError(record)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(EXIT_ORPHANED)


def _stop_on_signals(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: stop after the delivery in hand. Second: at once."""
    received = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) > 1:
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _listen(inbox: Connection, stop: threading.Event, planned: threading.Event,
            definitions: dict[str, MicrocredentialDefinition]) -> None:
    """`planned` (with the final definitions) and `stop` from the main process; the end of the pipe
    (it is gone) means stop."""
    with contextlib.suppress(EOFError, OSError):
        while (message := inbox.recv()) != "stop":
            if message[0] == "planned":
                definitions.update(message[1])
                planned.set()
    stop.set()


def main(argv: Sequence[str]) -> int:
    inbox = Connection(int(argv[0]), writable=False)
    outbox = _Outbox(Connection(int(argv[1]), readable=False))
    job: LaneJob = inbox.recv()
    _die_with_parent(job.parent_pid)
    stop, planned = threading.Event(), threading.Event()
    if not job.planning:
        planned.set()
    definitions = dict(job.definitions)
    _stop_on_signals(stop)
    threading.Thread(target=_listen, args=(inbox, stop, planned, definitions), name="lane-inbox",
                     daemon=True).start()

    install_redaction()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ForwardingHandler(outbox))
    for name, level in job.log_levels.items():
        logging.getLogger(name or None).setLevel(level)
    http.observe_requests(outbox.request)

    from .engine import Engine
    from .state import SqliteStateStore

    try:
        store = SqliteStateStore(job.state_path)
        try:
            engine = Engine(job.config, store, stop=stop, progress=_PipeProgress(outbox))
            reports, interrupted = engine.deliver_lane(job.run_id, job.targets, definitions, planned)
        finally:
            store.close()
    except Exception:
        log.exception("the delivery process for %s failed; its items stay as they are", ", ".join(job.targets),
                      extra={"event": "lane_error"})
        return 1
    outbox.send(("done", LaneOutcome({name: dict(vars(r)) for name, r in reports.items()}, interrupted)))
    return 0


if __name__ == "__main__":
    # through the module's own name, so that what is pickled names mcsync.lanes, not __main__
    from mcsync.lanes import main as lane_main

    sys.exit(lane_main(sys.argv[1:]))
