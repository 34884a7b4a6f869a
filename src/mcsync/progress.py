"""Progress of a run, as the engine reports it: phases that start, advance and finish.

The engine calls a `Progress` at three kinds of moments:

    start(phase, total)   a phase begins: "read <source>" (total None: rows are counted as they come),
                          "deliver <target>" (total = the items due for that target)
    advance(phase, n)     n more rows read, or n more items settled (delivered, withdrawn, submitted,
                          deferred or parked)
    resize(phase, total)  the total is known now, or changed (optional: a delivery process started
                          while planning went on learns its total when planning ends)
    finish(phase)         the phase is over (also when it stopped early)

How progress is shown is the renderer's business, not the engine's:

- `NoProgress` ignores all of it (the default; the daemon and `sync` use it);
- `RichProgress` draws one bar per phase on a terminal: count, rate, elapsed time and time left;
  log lines printed meanwhile go through its console, above the bars;
- `LineProgress` logs a plain line per phase at most every few seconds, and one when it finishes,
  through the `mcsync.progress` logger (JSON lines under systemd, `event` "progress");
- `for_stream(stream)` picks RichProgress for a terminal and LineProgress otherwise.

All three are context managers (RichProgress starts and stops its display); the CLI opens one
around a run. rich is imported only when a RichProgress is made, so `mcsync --help` stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Protocol

log = logging.getLogger("mcsync.progress")


class Progress(Protocol):
    def start(self, phase: str, total: int | None) -> None: ...

    def advance(self, phase: str, n: int = 1) -> None: ...

    def finish(self, phase: str) -> None: ...

    def resize(self, phase: str, total: int) -> None: ...


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """A display must never stop a run: the engine reports progress from inside its deliveries, where
    an exception would stop the target. The first failure is logged and the display goes quiet."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_broken", False):
            return
        try:
            method(self, *args, **kwargs)
        except Exception:
            self._broken = True
            log.warning("the progress display failed; the run goes on without it", exc_info=True)

    return wrapper


class _Context:
    """`with progress:` for renderers that have nothing to start or stop."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass


class NoProgress(_Context):
    """Reports nothing."""

    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, phase: str, n: int = 1) -> None:
        pass

    def finish(self, phase: str) -> None:
        pass

    def resize(self, phase: str, total: int) -> None:
        pass


# ---------------------------------------------------------------------------- plain lines
@dataclass
class _Phase:
    total: int | None
    started: float
    last_line: float
    done: int = 0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LineProgress(_Context):
    """Plain progress lines for logs: per phase at most one every `every` seconds while it advances,
    and one when it finishes. Rate is the phase's average since it started (items per second), ETA
    the items left at that rate; both come from `clock` (monotonic; injectable for tests).

    Each line is an INFO record of the `mcsync.progress` logger with `event` "progress" and the
    fields `phase`, `done`, `total` (None while unknown), `rate` and `eta_seconds` (None while unknown).
    """

    def __init__(self, every: float = 10.0, *, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        if every < 0:
            raise ValueError("every must be 0 or more seconds")
        self.every = every
        self.clock = clock
        self.logger = logger or log
        self._phases: dict[str, _Phase] = {}
        self._lock = threading.Lock()

    @_guarded
    def start(self, phase: str, total: int | None) -> None:
        now = self.clock()
        with self._lock:
            self._phases[phase] = _Phase(total=total, started=now, last_line=now)

    @_guarded
    def advance(self, phase: str, n: int = 1) -> None:
        now = self.clock()
        with self._lock:
            state = self._phases.get(phase)
            if state is None:                      # advanced without a start: count from here
                state = self._phases[phase] = _Phase(total=None, started=now, last_line=now)
            state.done += n
            if now - state.last_line < self.every:
                return
            state.last_line = now
            snapshot = _Phase(state.total, state.started, now, state.done)
        self._emit(phase, snapshot, now, finished=False)

    @_guarded
    def finish(self, phase: str) -> None:
        now = self.clock()
        with self._lock:
            state = self._phases.pop(phase, None)
        if state is not None:
            self._emit(phase, state, now, finished=True)

    @_guarded
    def resize(self, phase: str, total: int) -> None:
        with self._lock:
            state = self._phases.get(phase)
            if state is not None:
                state.total = total

    def _emit(self, phase: str, state: _Phase, now: float, *, finished: bool) -> None:
        elapsed = now - state.started
        done, total = state.done, state.total
        rate = done / elapsed if elapsed > 0 else None
        eta: float | None = None
        if total is not None:
            if done >= total:
                eta = 0.0
            elif rate:
                eta = (total - done) / rate
        count = f"{done}/{total}" if total is not None else f"{done}"
        if total:
            count += f" ({100 * done // total}%)"
        speed = f"{rate:,.1f}/s" if rate is not None else "–/s"
        if finished:
            verb = "stopped early" if total is not None and done < total else "finished"
            message = f"{phase}: {verb}, {count} in {_duration(elapsed)}, {speed}"
        else:
            left = f", {_duration(eta)} left" if eta is not None else ""
            message = f"{phase}: {count}, {speed}{left}"
        self.logger.info(message, extra={
            "event": "progress", "phase": phase, "done": done, "total": total,
            "rate": None if rate is None else round(rate, 2),
            "eta_seconds": None if eta is None else round(eta, 1)})


# ---------------------------------------------------------------------------- rich bars
class RichProgress:
    """rich bars on a terminal, one per phase as it starts: phase, bar (pulsing while the total is
    unknown), done/total, rate, elapsed, time left. Use as a context manager: it starts and stops the
    live display, and while it is live the log handlers that write to its stream write through its
    console instead (same handler, same formatter and redaction; only the stream is swapped), so log
    lines appear above the bars instead of breaking them."""

    def __init__(self, stream: IO[str] | None = None, *, console: Any = None,
                 refresh_per_second: float = 5) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, ProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                if task.finished or task.stop_time is not None:    # over: its average, not the last burst
                    speed = task.completed / task.elapsed if task.elapsed else None
                else:
                    speed = task.speed
                return Text(f"{speed:,.1f}/s" if speed else "–/s", style="progress.data.speed")

        if console is None:
            import sys

            console = Console(file=stream if stream is not None else sys.stderr)
        self.console = console
        self._text = Text
        self.bars = Bars(TextColumn("[progress.description]{task.description}"), BarColumn(),
                         MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
                         TimeRemainingColumn(), console=console, transient=False,
                         refresh_per_second=refresh_per_second, redirect_stdout=False, redirect_stderr=True)
        self._tasks: dict[str, Any] = {}
        self._swapped: list[tuple[logging.StreamHandler[Any], Any]] = []

    # context ----------------------------------------------------------------------------------
    def __enter__(self) -> RichProgress:
        self.bars.start()
        self._route_logging()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            for phase in list(self._tasks):
                self._stop(phase)
            self.bars.stop()
        finally:
            self._restore_logging()

    def _route_logging(self) -> None:
        target = self.console.file
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and _same_stream(handler.stream, target):
                old = handler.setStream(_ConsoleStream(self.console, self._text))
                self._swapped.append((handler, old if old is not None else handler.stream))

    def _restore_logging(self) -> None:
        while self._swapped:
            handler, stream = self._swapped.pop()
            handler.setStream(stream)

    # Progress -----------------------------------------------------------------------------------
    @_guarded
    def start(self, phase: str, total: int | None) -> None:
        task = self._tasks.get(phase)
        if task is None:
            self._tasks[phase] = self.bars.add_task(phase, total=total)
        else:
            self.bars.reset(task, total=total, completed=0, start=True)

    @_guarded
    def advance(self, phase: str, n: int = 1) -> None:
        if phase not in self._tasks:
            self.start(phase, None)
        self.bars.advance(self._tasks[phase], n)

    @_guarded
    def finish(self, phase: str) -> None:
        if phase in self._tasks:
            self._stop(phase)
            del self._tasks[phase]

    @_guarded
    def resize(self, phase: str, total: int) -> None:
        if phase in self._tasks:
            self.bars.update(self._tasks[phase], total=total)

    def _stop(self, phase: str) -> None:
        task_id = self._tasks[phase]
        task = next(t for t in self.bars.tasks if t.id == task_id)
        if task.total is None:                      # now the total is known: the bar is full
            self.bars.update(task_id, total=task.completed)
        self.bars.stop_task(task_id)
        self.bars.refresh()


class _ConsoleStream:
    """A text stream whose complete lines go to a rich console, above its live display."""

    def __init__(self, console: Any, text: Any) -> None:
        self._console = console
        self._text = text
        self._buffer = ""

    def write(self, data: str) -> int:
        self._buffer += data
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._console.print(self._text(line), soft_wrap=True, highlight=False)
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, ""
            self._console.print(self._text(line), soft_wrap=True, highlight=False)


def _same_stream(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a.fileno() == b.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def for_stream(stream: IO[str]) -> RichProgress | LineProgress:
    """Bars on a terminal (not TERM=dumb), plain periodic log lines otherwise."""
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):
        terminal = False
    if terminal and os.environ.get("TERM", "") != "dumb":
        return RichProgress(stream)
    return LineProgress()
