"""The command line (interface.md §4): `mcsync [--config FILE] [--log-format text|json] [-v|-q] COMMAND`.

Exit codes: 0 all done; 1 something needs a person; 2 usage or configuration error; 3 another run
holds the lock; 75 a target is unavailable and its work is queued for the next run.

This module imports only what argparse and the error handling need; each command imports its
modules (engine, state, pydantic settings, httpx, ...) itself, so `mcsync --help` starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, log as logs
from .errors import ConfigError, LockHeld, McsyncError

if TYPE_CHECKING:
    from .config import Config
    from .engine import RunReport
    from .state import SqliteStateStore

DEMO_CONFIG = Path(__file__).parent / "demo" / "mcsync.toml"
EXIT_OK = 0               # the same numbers as mcsync.engine's, which a run's report carries
EXIT_NEEDS_PERSON = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

logger = logging.getLogger("mcsync")


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcsync", description="Sync microcredentials from institutional exports into Edubadges, "
        "RIO and the DUO register.")
    parser.add_argument("--version", action="version", version=f"mcsync {__version__}")
    parser.add_argument("--config", metavar="FILE", help="configuration file (default: $MCSYNC_CONFIG, "
                        "else ./mcsync.toml)")
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log format (default: json under systemd, else text)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="more detail (never secrets)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sync = sub.add_parser("sync", help="one pass: read sources, map, plan, deliver, report")
    _run_options(sync)
    sync.add_argument("--dry-run", action="store_true", help="plan only: contact no target, change no state")
    sync.add_argument("--full", action="store_true",
                      help="read every export, even those whose files did not change since the last run")
    sync.add_argument("--allow-withdrawals", action="store_true",
                      help="withdraw records that vanished from an export even if the export shrank a lot")

    revoke = sub.add_parser("revoke", help="withdraw records everywhere and keep them withdrawn")
    revoke.add_argument("record_ids", nargs="+", metavar="RECORD_ID")
    revoke.add_argument("--reason", required=True, help="why, in words the learner and DUO may read")

    backfill = sub.add_parser("backfill", help="re-read historical results in a date range; never duplicates")
    _run_options(backfill, progress_default="on, unless -q")
    backfill.add_argument("--since", type=date.fromisoformat, required=True, metavar="DATE")
    backfill.add_argument("--until", type=date.fromisoformat, metavar="DATE")

    status = sub.add_parser("status", help="records and per-target delivery counts, last run")
    status.add_argument("--json", action="store_true")

    failures = sub.add_parser("failures", help="records and rows that need a person, with the reason")
    failures.add_argument("--json", action="store_true")
    failures.add_argument("--target", metavar="NAME")

    retry = sub.add_parser("retry", help="put failed records back in the queue")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("record_ids", nargs="*", default=[], metavar="RECORD_ID")
    retry.add_argument("--target", metavar="NAME")

    sub.add_parser("validate", help="check config, mappings and sources without contacting any target")

    adapters = sub.add_parser("adapters", help="installed adapters and targets, with their options")
    adapters_sub = adapters.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND")
    new = adapters_sub.add_parser("new", help="scaffold a separately installable adapter package")
    new.add_argument("name", help="adapter name, e.g. osiris-xml")
    new.add_argument("--dest", type=Path, default=Path("."), help="folder to create the package in")

    sandbox = sub.add_parser("sandbox", help="run local simulators of the three national systems")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    sandbox.add_argument("--faults", metavar="SPEC", help="seeded faults in front of every simulator, e.g. "
                         "drop=0.05,error=0.02,throttle=0.02,timeout=0.01,seed=7 (shares of requests)")

    demo = sub.add_parser("demo", help="sync the embedded sample exports into a fresh in-process sandbox, "
                          "twice (uses --config if given)")
    demo.add_argument("--keep", type=Path, metavar="DIR", help="keep the demo's state in DIR")

    daemon = sub.add_parser("daemon", help="run `sync` on a schedule until SIGTERM; finishes the delivery "
                            "in hand (systemd notify protocol, watchdog, SIGHUP re-reads the configuration)")
    daemon.add_argument("--interval", type=_seconds, metavar="SECONDS",
                        help="seconds from the start of one sync to the next (default: daemon.interval, 900)")

    sub.add_parser("doctor", help="reach each enabled target: DNS, TLS, clock, token, client certificate "
                   "and its expiry; one OK/WARN/FAIL line each")
    return parser


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return seconds


def _run_options(parser: argparse.ArgumentParser, *, progress_default: str = "off") -> None:
    parser.add_argument("--source", action="append", default=[], metavar="NAME", help="only this source")
    parser.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress on stderr: bars on a terminal, a log line per phase every 10 s "
                        f"otherwise (default: {progress_default})")


# ---------------------------------------------------------------------------- entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = args.log_format or ("json" if os.environ.get("INVOCATION_ID") and not sys.stderr.isatty() else "text")
    logs.setup(fmt=fmt, verbosity=-1 if args.quiet else 1 if args.verbose else 0)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `mcsync adapters | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except LockHeld as exc:
        _error(str(exc))
        return EXIT_LOCKED
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except McsyncError as exc:
        _error(str(exc))
        return EXIT_NEEDS_PERSON
    except KeyboardInterrupt:
        _error("interrupted; items in flight are reconciled on the next run")
        return 130


def _error(message: str) -> None:
    print(f"mcsync: {logs.redact(message)}", file=sys.stderr)


def _config(args: argparse.Namespace) -> Config:
    from .config import find_config, load_config

    return load_config(find_config(args.config))


@contextlib.contextmanager
def _store(config: Config, *, locked: bool = False) -> Iterator[SqliteStateStore]:
    """The state store, closed afterwards; with `locked`, under the run lock (exit 3 if taken)."""
    from .lock import RunLock
    from .state import SqliteStateStore

    with RunLock(config.state_path) if locked else contextlib.nullcontext():
        store = SqliteStateStore(config.state_path)
        try:
            yield store
        finally:
            store.close()


# ---------------------------------------------------------------------------- sync, backfill
def cmd_sync(args: argparse.Namespace) -> int:
    config = _config(args)
    return _run(config, args, dry_run=args.dry_run, full=args.full, allow_withdrawals=args.allow_withdrawals)


def cmd_revoke(args: argparse.Namespace) -> int:
    from .engine import Engine

    config = _config(args)
    with _store(config, locked=True) as store:
        engine = Engine(config, store)
        n = engine.revoke(args.record_ids, args.reason)
    print(f"{n} record(s) marked for withdrawal at every target; the next `mcsync sync` sends the "
          "withdrawals, and they stay withdrawn whatever later exports say")
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.until and args.until < args.since:
        raise ConfigError("--until lies before --since")
    return _run(config, args, since=args.since, until=args.until, kind="backfill")


def _run(config: Config, args: argparse.Namespace, *, dry_run: bool = False, since: date | None = None,
         until: date | None = None, kind: str = "sync", full: bool = False,
         allow_withdrawals: bool = False) -> int:
    from .engine import Engine

    metrics = None
    if not dry_run and config.settings.metrics.textfile is not None:
        from .metrics import RunMetrics

        metrics = RunMetrics.for_config(config)   # from here on it times the targets' requests
    try:
        with _store(config, locked=True) as store:
            with _progress(args, kind) as progress:
                engine = Engine(config, store, progress=progress)
                report = engine.run(dry_run=dry_run, sources=args.source, only_targets=args.target,
                                    since=since, until=until, kind=kind, full=full,
                                    allow_withdrawals=allow_withdrawals)
            counts = store.counts()
            if metrics is not None:
                metrics.after_run(store, report, config)
    finally:
        if metrics is not None:
            metrics.close()
    _print_report(report, counts, as_json=args.json)
    return report.exit_code


def _progress(args: argparse.Namespace, kind: str) -> Any:
    """What shows the run's progress on stderr (`--progress`; by default backfill shows it, sync not)."""
    from .progress import NoProgress, for_stream

    wanted = args.progress if args.progress is not None else (kind == "backfill" and not args.quiet)
    return for_stream(sys.stderr) if wanted else NoProgress()


def log_run_summary(report: RunReport) -> None:
    """The one summary line of a run (JSON: `event` run_summary, `summary` = the report as a dict)."""
    per_target = "; ".join(f"{name} delivered {t.confirmed} withdrawn {t.withdrawn} parked {t.parked}"
                           + (" UNAVAILABLE" if t.unavailable else "") + (" ERROR" if t.error else "")
                           for name, t in report.targets.items())
    logger.info("run finished: read %d, mapped %d, unchanged %d, problems %d, exit %d%s", report.read,
                report.mapped, report.unchanged, report.problems, report.exit_code,
                f"; {per_target}" if per_target else "",
                extra={"run_id": report.run_id, "event": "run_summary", "summary": report.as_dict()})


def _directory_line(report: RunReport) -> str:
    """How much of the learner directory this run read (an unchanged file is not read again)."""
    if report.learners == 0 and any(name.startswith("learners:") for name in report.skipped):
        return "learner directory unchanged (not read again)"
    return f"{report.learners} learners read into the directory"


def _print_report(report: RunReport, counts: dict[str, dict[str, int]], *, as_json: bool) -> None:
    log_run_summary(report)
    data = report.as_dict()
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    title = "dry run (nothing sent, state unchanged)" if report.dry_run else "sync"
    print(f"{title}: read {report.read} rows, mapped {report.mapped} records "
          f"({report.changed} new or changed, {report.unchanged} unchanged), "
          f"{report.problems} input problems, " + _directory_line(report))
    if report.sources:
        print("  from " + ", ".join(f"{name} {stats['read']} rows" for name, stats in report.sources.items()))
    for name, t in report.targets.items():
        if report.dry_run:
            print(f"  {name:<10} would send {t.confirmed}, would withdraw {t.withdrawn}")
            continue
        held = counts.get(name, {})
        line = (f"  {name:<10} delivered {t.confirmed}, withdrawn {t.withdrawn}, submitted {t.submitted}, "
                f"waiting {t.deferred}, failed {t.parked}  (holds {held.get('delivered', 0)} in total)")
        if t.unavailable:
            line += f"  UNAVAILABLE: {t.unavailable}"
        if t.error:
            line += f"  ERROR: {t.error}"
        print(line)
    if report.exit_code == EXIT_NEEDS_PERSON:
        print("some items need a person: see `mcsync failures`")


# ---------------------------------------------------------------------------- status, failures, retry
def status_json(config: Config, store: SqliteStateStore) -> dict[str, Any]:
    from .targets.base import DeliveryState

    counts = store.counts()
    targets: dict[str, dict[str, Any]] = {}
    for name in sorted(set(config.enabled_targets()) | set(counts)):
        held = counts.get(name, {})
        open_states = (DeliveryState.PENDING, DeliveryState.IN_FLIGHT, DeliveryState.SUBMITTED)
        targets[name] = {
            "pending": sum(held.get(s.value, 0) for s in open_states),
            "delivered": held.get("delivered", 0),
            "failed": held.get(DeliveryState.FAILED.value, 0),
            "withdrawn": held.get("withdrawn", 0),
            "states": {s.value: held.get(s.value, 0) for s in open_states},
        }
    last = store.last_run()
    return {
        "records": store.record_count(),
        "results": store.result_counts(),
        "problems": sum(1 for f in store.failures() if f.target is None),
        "targets": targets,
        "last_run": None if last is None else {
            "run_id": last.run_id, "kind": last.kind,
            "started_at": last.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "finished_at": last.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ") if last.finished_at else None,
            "exit_code": last.exit_code},
    }


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    with _store(config) as store:
        data = status_json(config, store)
        waiting = _waiting_reasons(store, data["targets"])
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return EXIT_OK
    results = ", ".join(f"{n} {s}" for s, n in sorted(data["results"].items())) or "none"
    print(f"records: {data['records']} ({results}); input problems: {data['problems']}")
    for name, t in data["targets"].items():
        print(f"  {name:<10} delivered {t['delivered']:>7}  pending {t['pending']:>7}  failed {t['failed']:>6}"
              f"  withdrawn {t['withdrawn']:>6}")
        for reason, n in waiting.get(name, []):
            print(f"             {n} waiting: {reason}")
    last = data["last_run"]
    if last:
        print(f"last run: {last['kind']} {last['started_at']} → {last['finished_at'] or 'unfinished'}, "
              f"exit {last['exit_code']}")
    return EXIT_OK


def _waiting_reasons(store: SqliteStateStore, targets: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for name in targets:
        rows = store.conn.execute(
            "SELECT note, count(*) FROM deliveries WHERE target = ? AND state = 'pending' AND note IS NOT NULL "
            "GROUP BY note ORDER BY count(*) DESC LIMIT 5", (name,)).fetchall()
        found[name] = [(note, n) for note, n in rows]
    return found


def cmd_failures(args: argparse.Namespace) -> int:
    config = _config(args)
    with _store(config) as store:
        failures = store.failures(args.target)
    if args.json:
        print(json.dumps([f.as_json() for f in failures], indent=2))
        return EXIT_OK
    if not failures:
        print("nothing needs a person")
    for f in failures:
        since = f.since.strftime("%Y-%m-%d %H:%M")
        if f.location is not None:
            print(f"input  {f.location}: {f.reason}  (since {since})")
        else:
            code = f" [{f.code}]" if f.code else ""
            print(f"{f.target:<6} {f.record_id}{code}: {f.reason}  (attempts {f.attempts}, since {since})")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:

    config = _config(args)
    if not args.all and not args.record_ids:
        raise ConfigError("give --all or one or more RECORD_IDs")
    with _store(config, locked=True) as store:
        n = store.retry(None if args.all else args.record_ids, args.target)
    print(f"{n} failed deliveries queued again; they go out on the next sync "
          "(input problems clear by themselves once the export is fixed)")
    return EXIT_OK


# ---------------------------------------------------------------------------- validate, adapters
def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    config = _config(args)
    return validate(config)


def cmd_adapters(args: argparse.Namespace) -> int:
    from . import plugins

    if args.adapters_command == "new":
        from .scaffold import scaffold_adapter

        path = scaffold_adapter(args.name, args.dest)
        print(f"created {path}; next: pip install -e {path} && pytest {path}")
        return EXIT_OK
    for title, group in (("adapters", plugins.ADAPTER_GROUP), ("targets", plugins.TARGET_GROUP)):
        print(f"{title} ({group}):")
        for info in plugins.discover(group):
            origin = f"{info.value} [{info.distribution}]"
            if info.plugin is None:
                print(f"  {info.name:<16} BROKEN: {info.error}  {origin}")
                continue
            model = getattr(info.plugin, "Options", None) or getattr(info.plugin, "Settings", None)
            kind = getattr(info.plugin, "kind", None) or getattr(info.plugin, "unit", "")
            print(f"  {info.name:<16} {kind:<9} {origin}")
            for name, field in (model.model_fields.items() if model else []):
                default = field.get_default(call_default_factory=True)
                required = "required" if field.is_required() else f"default {default!r}"
                about = f": {field.description}" if field.description else ""
                print(f"      {name} ({_type_name(field.annotation)}, {required}){about}")
    return EXIT_OK


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# ---------------------------------------------------------------------------- sandbox, demo
def cmd_sandbox(args: argparse.Namespace) -> int:
    import signal

    from .config import find_config
    from .sandbox import Faults, Sandbox

    config = None
    path = find_config(args.config)
    if path.exists():
        config = _config(args)
    try:
        faults = Faults.parse(args.faults) if args.faults else None
    except ValueError as exc:
        raise ConfigError(f"--faults: {exc}") from None
    if faults is not None and not faults.latency:
        faults.latency = args.latency
    sandbox = Sandbox.from_config(config, host=args.host, port=args.port, latency=args.latency, faults=faults)
    print(f"sandbox serving on {sandbox.url}")
    for name, url in sandbox.endpoints().items():
        print(f"  {name:<22} {url}")
    print("press Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        sandbox.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from .config import load_config
    from .engine import Engine
    from .sandbox import Sandbox

    config = load_config(Path(args.config) if args.config else DEMO_CONFIG)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="mcsync-demo-"))
    if args.keep and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox.from_config(config, port=0).start()
    try:
        demo_config = sandbox.point_config_here(config, state_path=workdir / "mcsync.db")
        print(f"sandbox of Edubadges, RIO and the DUO register on {sandbox.url}; state in {workdir}\n")
        exit_code = EXIT_OK
        for attempt, title in enumerate(("first sync: everything is new",
                                         "second sync: nothing changed, so nothing is sent")):
            print(f"== {title}")
            with _store(demo_config) as store:
                before = sandbox.write_requests()
                report = Engine(demo_config, store).run()
                _print_report(report, store.counts(), as_json=False)
                print(f"  write requests to the national systems: {sandbox.write_requests() - before}\n")
                exit_code = report.exit_code
        with _store(demo_config) as store:
            print("== mcsync status --json")
            print(json.dumps(status_json(demo_config, store), indent=2, sort_keys=True))
            failures = store.failures()
            if failures:
                print(f"\n== mcsync failures ({len(failures)} need a person)")
                for f in failures:
                    where = str(f.location) if f.location else f"{f.target} {f.record_id}"
                    print(f"  {where}: {f.reason}")
        print(f"\nsandbox now holds: {sandbox.summary()}")
        return exit_code
    finally:
        sandbox.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------- daemon, doctor
def cmd_daemon(args: argparse.Namespace) -> int:
    from .config import find_config, load_config
    from .daemon import Daemon

    path = find_config(args.config)
    return Daemon(lambda: load_config(path), interval=args.interval).run()


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor(_config(args))


COMMANDS = {
    "sync": cmd_sync, "backfill": cmd_backfill, "status": cmd_status, "failures": cmd_failures,
    "retry": cmd_retry, "revoke": cmd_revoke, "validate": cmd_validate, "adapters": cmd_adapters, "sandbox": cmd_sandbox,
    "demo": cmd_demo, "daemon": cmd_daemon, "doctor": cmd_doctor,
}
