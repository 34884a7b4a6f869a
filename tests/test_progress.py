"""Progress of a run: plain periodic lines for logs, rich bars on a terminal, the engine driving both,
and a backfill that is interrupted and resumed without sending anything twice."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections import Counter
from datetime import date

import pytest

from mcsync import log as logs
from mcsync.cli import main
from mcsync.engine import EXIT_UNAVAILABLE, Engine
from mcsync.progress import LineProgress, NoProgress, RichProgress, for_stream

from .e2e_helpers import institution
from .test_cli import cli_inst  # noqa: F401  (fixture)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SINCE = date(2020, 1, 1)          # before every result in the demo exports


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def progress_logger():
    logger = logging.getLogger("mcsync.progress.test")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, handler
    logger.removeHandler(handler)


class Recorder:
    """A Progress that remembers what the engine told it. (It asserts nothing itself: the engine would
    take an exception from it for a broken source or target; `misuse` is checked by the tests.)"""

    def __init__(self) -> None:
        self.totals: dict[str, int | None] = {}
        self.done: Counter[str] = Counter()
        self.finished: list[str] = []
        self.misuse: list[str] = []

    def start(self, phase: str, total: int | None) -> None:
        if phase in self.totals:
            self.misuse.append(f"{phase} started twice")
        self.totals[phase] = total

    def advance(self, phase: str, n: int = 1) -> None:
        if phase not in self.totals or phase in self.finished:
            self.misuse.append(f"{phase} advanced outside start/finish")
        self.done[phase] += n

    def finish(self, phase: str) -> None:
        if phase not in self.totals or phase in self.finished:
            self.misuse.append(f"{phase} finished without a start, or twice")
        self.finished.append(phase)


# ---------------------------------------------------------------------------- LineProgress
def test_line_progress_reports_done_total_rate_and_eta_at_most_every_n_seconds(progress_logger):
    logger, handler = progress_logger
    clock = FakeClock()
    lines = LineProgress(every=10, clock=clock, logger=logger)
    lines.start("deliver edubadges", 100)
    for at, n in ((1, 5), (9.9, 5)):
        clock.now = 1000 + at
        lines.advance("deliver edubadges", n)
    assert handler.records == []                     # under 10 s since the start: nothing yet
    clock.now = 1010
    lines.advance("deliver edubadges", 10)           # 20 done in 10 s
    clock.now = 1015
    lines.advance("deliver edubadges", 10)           # 5 s after the last line: quiet
    clock.now = 1020
    lines.advance("deliver edubadges", 10)           # 40 done in 20 s
    clock.now = 1025
    lines.finish("deliver edubadges")                # 40 in 25 s: stopped early
    fields = [{k: getattr(r, k) for k in ("phase", "done", "total", "rate", "eta_seconds")} for r in handler.records]
    assert fields == [
        {"phase": "deliver edubadges", "done": 20, "total": 100, "rate": 2.0, "eta_seconds": 40.0},
        {"phase": "deliver edubadges", "done": 40, "total": 100, "rate": 2.0, "eta_seconds": 30.0},
        {"phase": "deliver edubadges", "done": 40, "total": 100, "rate": 1.6, "eta_seconds": 37.5},
    ]
    assert all(r.event == "progress" and r.levelno == logging.INFO for r in handler.records)
    messages = [r.getMessage() for r in handler.records]
    assert messages[0] == "deliver edubadges: 20/100 (20%), 2.0/s, 40s left"
    assert messages[1] == "deliver edubadges: 40/100 (40%), 2.0/s, 30s left"
    assert messages[2] == "deliver edubadges: stopped early, 40/100 (40%) in 25s, 1.6/s"


def test_line_progress_of_an_open_ended_phase_has_no_eta_and_finishes_once(progress_logger):
    logger, handler = progress_logger
    clock = FakeClock()
    lines = LineProgress(every=5, clock=clock, logger=logger)
    lines.start("read osiris", None)
    for second in range(1, 13):                      # 1000 rows a second for 12 s: lines at 5 s and 10 s
        clock.now = 1000 + second
        lines.advance("read osiris", 1000)
    lines.finish("read osiris")
    lines.finish("read osiris")                      # a second finish says nothing
    assert [(r.done, r.total, r.rate, r.eta_seconds) for r in handler.records] == [
        (5000, None, 1000.0, None), (10000, None, 1000.0, None), (12000, None, 1000.0, None)]
    assert handler.records[-1].getMessage() == "read osiris: finished, 12000 in 12s, 1,000.0/s"
    assert "left" not in handler.records[0].getMessage()


def _json_lines(logger, script) -> list[dict]:
    """What `script(lines, clock)` makes a LineProgress log, as JSON lines parsed one by one."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    try:
        clock = FakeClock()
        script(LineProgress(every=10, clock=clock, logger=logger), clock)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_line_progress_as_json_lines(progress_logger):
    def script(lines, clock):
        lines.start("deliver duo", 50)
        clock.now += 10
        lines.advance("deliver duo", 25)
        clock.now += 10
        lines.advance("deliver duo", 25)
        lines.finish("deliver duo")

    parsed = _json_lines(progress_logger[0], script)
    assert [p["event"] for p in parsed] == ["progress"] * 3
    assert [p["message"] for p in parsed] == ["deliver duo: 25/50 (50%), 2.5/s, 10s left",
                                              "deliver duo: 50/50 (100%), 2.5/s, 0s left",
                                              "deliver duo: finished, 50/50 (100%) in 20s, 2.5/s"]
    assert all(p["level"] == "info" and p["logger"] == "mcsync.progress.test" for p in parsed)


def test_line_progress_json_lines_carry_the_progress_fields(progress_logger):
    def script(lines, clock):
        lines.start("deliver duo", 50)
        clock.now += 10
        lines.advance("deliver duo", 25)
        lines.start("read osiris", None)
        lines.finish("read osiris")

    first, second = _json_lines(progress_logger[0], script)
    assert {k: first.get(k) for k in ("event", "phase", "done", "total", "rate", "eta_seconds")} == \
        {"event": "progress", "phase": "deliver duo", "done": 25, "total": 50, "rate": 2.5, "eta_seconds": 10.0}
    assert second["phase"] == "read osiris" and second["done"] == 0


# ---------------------------------------------------------------------------- RichProgress, for_stream
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_for_stream_picks_bars_for_a_terminal_and_lines_otherwise(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(for_stream(Terminal()), RichProgress)
    assert isinstance(for_stream(io.StringIO()), LineProgress)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(for_stream(Terminal()), LineProgress)
    with NoProgress() as quiet:                      # every renderer is a context manager
        quiet.start("read x", None)


def test_rich_progress_draws_a_bar_per_phase_and_routes_log_lines_through_its_console():
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    handler = logging.StreamHandler(out)           # as mcsync.log sets it up: stderr, redacting formatter
    handler.setFormatter(logs.TextFormatter())
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [handler]        # alone: an earlier test's handler may hold a closed stream
    level = root.level
    root.setLevel(logging.INFO)                    # whatever an earlier test's `mcsync -q` left behind
    logs.install_redaction()
    logs.register_secret("tok-8f3a9c2e-not-for-logs")
    try:
        with RichProgress(console=console) as bars:
            assert handler.stream is not out       # while live, log lines go through the console
            bars.start("read osiris", None)
            bars.advance("read osiris", 1000)
            bars.advance("read osiris", 500)
            bars.finish("read osiris")
            bars.start("deliver edubadges", 11)
            logging.getLogger("mcsync.test").warning("edubadges answered slowly; token tok-8f3a9c2e-not-for-logs")
            for _ in range(11):
                bars.advance("deliver edubadges")
            bars.finish("deliver edubadges")
            bars.start("deliver duo", 4)
            bars.advance("deliver duo", 3)         # stopped early: stays 3/4
        assert handler.stream is out               # and back afterwards
    finally:
        root.handlers = saved
        root.setLevel(level)
    text = ANSI.sub("", out.getvalue())
    final = text[text.rfind("read osiris"):]       # the last frame the display drew
    assert re.search(r"read osiris .*1500/1500", final)
    assert re.search(r"deliver edubadges .*11/11", final)
    assert re.search(r"deliver duo .*3/4", final)
    assert "/s" in final
    assert "edubadges answered slowly; token [secret]" in text
    assert "tok-8f3a9c2e-not-for-logs" not in text
    log_line = next(line for line in text.splitlines() if "answered slowly" in line)
    assert log_line.lstrip("\r").split(" ", 1)[1].startswith("WARNING")   # a line of its own, formatted


def test_a_failing_display_never_stops_the_run(caplog):
    from rich.console import Console

    bars = RichProgress(console=Console(file=io.StringIO(), force_terminal=True))
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("the terminal went away")

    bars.bars.advance = broken
    with caplog.at_level(logging.WARNING, logger="mcsync.progress"), bars:
        bars.start("deliver duo", 3)
        bars.advance("deliver duo")                  # raises inside: swallowed, logged once
        bars.advance("deliver duo")                  # and from then on the display is quiet
        bars.finish("deliver duo")
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "mcsync.progress"] == \
        ["the progress display failed; the run goes on without it"]


# ---------------------------------------------------------------------------- the engine drives it
def test_a_backfill_drives_the_progress_per_source_and_per_target(tmp_path):
    with institution(tmp_path) as inst:
        recorder = Recorder()
        store = inst.store()
        try:
            report = Engine(inst.config, store, progress=recorder).run(since=SINCE, kind="backfill")
        finally:
            store.close()
    assert report.exit_code == 0
    assert set(report.sources) == {"oneroster", "osiris", "canvas", "moodle"}
    for source, stats in report.sources.items():
        phase = f"read {source}"
        assert recorder.totals[phase] is None and phase in recorder.finished
        assert recorder.done[phase] == stats["read"] > 0
    expected = {"rio": 3, "edubadges": 11, "duo": 11}
    for target, n in expected.items():
        phase = f"deliver {target}"
        assert recorder.totals[phase] == recorder.done[phase] == n
        assert phase in recorder.finished
    assert recorder.misuse == []                     # each phase started, advanced and finished once, in order


def test_a_backfill_counts_every_row_it_scans_even_outside_its_range(tmp_path):
    """A narrow backfill over a large export must not sit at 0 while it scans the export."""
    with institution(tmp_path) as inst:
        recorder = Recorder()
        store = inst.store()
        try:
            report = Engine(inst.config, store, progress=recorder).run(
                since=date(2100, 1, 1), kind="backfill", sources=["osiris"], only_targets=["edubadges"])
        finally:
            store.close()
    assert report.sources["osiris"]["read"] > 0 and report.mapped == 0
    assert recorder.done["read osiris"] == report.sources["osiris"]["read"] and "read osiris" in recorder.finished
    assert recorder.totals["deliver edubadges"] == 0 and recorder.misuse == []


# ---------------------------------------------------------------------------- the command
def test_backfill_on_a_pipe_logs_progress_lines_and_keeps_its_json_report(cli_inst, capsys):  # noqa: F811
    config = str(cli_inst.folder / "mcsync.toml")
    code = main(["--config", config, "backfill", "--since", "2020-01-01", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)                                       # stdout holds the JSON report only
    assert report["targets"]["edubadges"]["confirmed"] == 11
    progress = [line for line in err.splitlines() if ": finished, " in line]
    assert any(re.search(r"INFO +deliver edubadges: finished, 11/11 \(100%\) in \d+s", line) for line in progress)
    assert any(re.search(r"INFO +deliver duo: finished, 11/11 ", line) for line in progress)
    reads = {m.group(1): int(m.group(2)) for line in progress
             if (m := re.search(r"read (\w+): finished, (\d+) in", line))}
    assert reads == {name: stats["read"] for name, stats in report["sources"].items()}

    # nothing new to send; without progress no progress lines
    code = main(["--config", config, "backfill", "--since", "2020-01-01", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "sync: read" in out
    assert ": finished, " not in err and "run finished" in err


def test_sync_shows_progress_only_when_asked(cli_inst, capsys):  # noqa: F811
    config = str(cli_inst.folder / "mcsync.toml")
    assert main(["--config", config, "sync", "--target", "edubadges"]) == 0
    assert "deliver edubadges: finished" not in capsys.readouterr().err
    cli_inst.append("exports/osiris/results.csv",
                    "2276502;MC-DATA01;6,5;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    assert main(["--config", config, "sync", "--progress", "--target", "edubadges"]) == 0
    assert "deliver edubadges: finished, 1/1 (100%)" in capsys.readouterr().err


# ---------------------------------------------------------------------------- interrupted, resumed
class StopAfterFirst(Recorder):
    """Asks the engine to stop as soon as the first item of `phase` is settled or submitted."""

    def __init__(self, stop: threading.Event, phase: str) -> None:
        super().__init__()
        self.stop = stop
        self.phase = phase

    def advance(self, phase: str, n: int = 1) -> None:
        super().advance(phase, n)
        if phase == self.phase:
            self.stop.set()


@pytest.mark.parametrize("stop_in", ["deliver rio", "deliver duo"])   # one per wave: rio + edubadges, then duo
def test_an_interrupted_backfill_resumed_delivers_every_record_exactly_once(tmp_path, stop_in):
    expected = {"rio": 3, "edubadges": 11, "duo": 11}
    with institution(tmp_path) as inst:
        stop = threading.Event()
        first = StopAfterFirst(stop, stop_in)
        store = inst.store()
        try:
            report = Engine(inst.config, store, stop=stop, progress=first).run(since=SINCE, kind="backfill")
            before = {name: store.counts().get(name, {}).get("delivered", 0) for name in expected}
        finally:
            store.close()
        assert report.interrupted and report.exit_code == EXIT_UNAVAILABLE
        assert sum(before.values()) < sum(expected.values())           # work was left for the next run
        assert first.done[stop_in] >= 1 and stop_in in first.finished    # a stopped phase still finishes
        assert first.misuse == []

        second = Recorder()
        store = inst.store()
        try:
            again = Engine(inst.config, store, progress=second).run(since=SINCE, kind="backfill")
            after = {name: store.counts()[name].get("delivered", 0) for name in expected}
        finally:
            store.close()
        assert again.exit_code == 0 and not again.interrupted
        assert after == expected
        for name in expected:                                           # the second run did the rest
            assert second.done[f"deliver {name}"] == second.totals[f"deliver {name}"]
        assert sum(second.totals[f"deliver {name}"] for name in expected) > 0 and second.misuse == []

        duo, edubadges, rio = inst.sandbox.duo, inst.sandbox.edubadges, inst.sandbox.rio
        registrations = duo.registrations
        assert len(registrations) == 11 and all(r.status == "geregistreerd" for r in registrations.values())
        assert all(len(duo.deliveries_with(rid)) == 1 for rid in registrations)     # never posted twice
        awards = Counter((a.eppn, a.badgeclass) for a in edubadges.direct_awards())
        assert len(awards) == 11 and set(awards.values()) == {1}
        units = Counter(rio.units_created().values())
        assert len(units) == 3 and set(units.values()) == {1}
