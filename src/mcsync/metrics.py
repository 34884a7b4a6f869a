"""Prometheus metrics: a text file for node_exporter after every run, and the daemon's /metrics.

What an operator alerts on is the *state*, read from the state store after each run, plus how the
last run went and how fast each target answers:

    mcsync_deliveries{target,state}              items per target and state (pending, in_flight,
                                                 submitted, delivered, withdrawn, failed)
    mcsync_parked_records{target}                items parked for a person (`mcsync failures`)
    mcsync_input_problems                        export rows or sources that need a person
    mcsync_oldest_pending_age_seconds{target}    how long the oldest open item has waited (0: none)
    mcsync_target_up{target}                     1 if the last run reached the target, else 0
    mcsync_last_success_timestamp_seconds        end of the last run in which every target was
                                                 reached and nothing was interrupted (parked records
                                                 are counted above, not here)
    mcsync_last_run_timestamp_seconds, mcsync_last_run_duration_seconds, mcsync_last_run_exit_code
    mcsync_request_duration_seconds{target}      histogram: seconds until a target's response
                                                 headers arrived, per answered request

The request histogram is fed by `mcsync.http.observe_requests`: every target talks through
`http.make_client`, and a request belongs to the target whose configured URL is the longest prefix
of the request's URL (the sandbox serves all three under one host, so prefixes, not hosts). In a
one-shot `mcsync sync` the histogram covers that run; in the daemon it counts from the start.

The text file is written atomically (a temporary file in the same folder, fsync, rename) with mode
0644, so node_exporter never reads half a file and can read it under the units' `UMask=0077`.
Metrics carry no personal data: labels are target names and states only.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import http, plugins
from .config import Config, listen_address
from .targets.base import DeliveryState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .engine import RunReport
    from .state import SqliteStateStore

log = logging.getLogger(__name__)

#: Seconds; from a fast loopback answer to a slow SOAP call near the targets' timeouts.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OPEN = (DeliveryState.PENDING.value, DeliveryState.IN_FLIGHT.value, DeliveryState.SUBMITTED.value)
STATES = (*_OPEN, "delivered", "withdrawn", DeliveryState.FAILED.value)   # store.counts() splits synced in two
_TS = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class Snapshot:
    """What the store and the last run say, taken right after the run (the store is closed later)."""

    deliveries: dict[str, dict[str, int]]
    oldest_open: dict[str, float]          # target → unix time of its oldest open item
    input_problems: int
    last_success: float | None             # unix time
    target_up: dict[str, bool]
    run_finished: float
    run_seconds: float
    run_exit_code: int
    taken_at: float = field(default_factory=time.time)


def take_snapshot(store: SqliteStateStore, report: RunReport, targets: Sequence[str]) -> Snapshot:
    counts = store.counts()
    deliveries = {name: {state: counts.get(name, {}).get(state, 0) for state in STATES}
                  for name in sorted(set(targets) | set(counts))}
    # The StateStore protocol has no query for these two yet; they read the SQLite schema directly.
    marks = ",".join("?" * len(_OPEN))
    oldest = {target: _unix(since) for target, since in store.conn.execute(
        f"SELECT target, min(since) FROM deliveries WHERE state IN ({marks}) GROUP BY target", _OPEN)}
    problems = sum(1 for f in store.failures() if f.target is None)
    return Snapshot(
        deliveries=deliveries, oldest_open=oldest, input_problems=problems, last_success=_last_success(store),
        target_up={name: not (t.unavailable or t.error) for name, t in report.targets.items()},
        run_finished=time.time(), run_seconds=float(report.as_dict()["seconds"]), run_exit_code=report.exit_code)


def _last_success(store: SqliteStateStore, *, look_back: int = 1000) -> float | None:
    """When the newest finished run that reached every target and was not interrupted ended."""
    for finished, summary in store.conn.execute(
            "SELECT finished_at, summary FROM runs WHERE finished_at IS NOT NULL AND kind != 'dry-run' "
            "ORDER BY started_at DESC LIMIT ?", (look_back,)):
        data = json.loads(summary or "{}")
        targets = data.get("targets", {}).values()
        if not data.get("interrupted") and not any(t.get("unavailable") or t.get("error") for t in targets):
            return _unix(finished)
    return None


def _unix(text: str) -> float:
    return datetime.strptime(text, _TS).replace(tzinfo=UTC).timestamp()


class _StateCollector(Collector):
    """Gauges from the latest snapshot; nothing at all before the first run."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        deliveries = GaugeMetricFamily("mcsync_deliveries", "Items per target and delivery state",
                                       labels=["target", "state"])
        parked = GaugeMetricFamily("mcsync_parked_records", "Items parked for a person (mcsync failures)",
                                   labels=["target"])
        oldest = GaugeMetricFamily("mcsync_oldest_pending_age_seconds",
                                   "Seconds the oldest pending, in_flight or submitted item has waited",
                                   labels=["target"])
        for target, states in snap.deliveries.items():
            for state, n in states.items():
                deliveries.add_metric([target, state], n)
            parked.add_metric([target], states[DeliveryState.FAILED.value])
            since = snap.oldest_open.get(target)
            oldest.add_metric([target], max(0.0, snap.taken_at - since) if since is not None else 0.0)
        up = GaugeMetricFamily("mcsync_target_up", "1 if the last run reached the target", labels=["target"])
        for target, reached in snap.target_up.items():
            up.add_metric([target], 1.0 if reached else 0.0)
        yield from (deliveries, parked, oldest, up)
        yield GaugeMetricFamily("mcsync_input_problems", "Export rows or sources that need a person",
                                value=snap.input_problems)
        if snap.last_success is not None:
            yield GaugeMetricFamily("mcsync_last_success_timestamp_seconds",
                                    "End of the last run that reached every target",
                                    value=snap.last_success)
        yield GaugeMetricFamily("mcsync_last_run_timestamp_seconds", "End of the last run",
                                value=snap.run_finished)
        yield GaugeMetricFamily("mcsync_last_run_duration_seconds", "Duration of the last run",
                                value=snap.run_seconds)
        yield GaugeMetricFamily("mcsync_last_run_exit_code", "Exit code of the last run (75: a target was "
                                "unavailable or the run was stopped)", value=snap.run_exit_code)


class RunMetrics:
    """The metrics of one process: request latencies as they happen, state after each run."""

    def __init__(self, target_urls: Mapping[str, Sequence[str]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._state = _StateCollector()
        self.registry.register(self._state)
        self.latency = Histogram("mcsync_request_duration_seconds",
                                 "Seconds until a target's response headers arrived", ["target"],
                                 registry=self.registry, buckets=LATENCY_BUCKETS)
        self._prefixes: list[tuple[str, str]] = []
        self.set_targets(target_urls)
        self._unobserve: Callable[[], None] | None = http.observe_requests(self._observe)
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    @classmethod
    def for_config(cls, config: Config) -> RunMetrics:
        return cls(target_urls(config))

    def set_targets(self, target_urls: Mapping[str, Sequence[str]]) -> None:
        """Which URL prefixes belong to which target (again after the daemon re-read its configuration)."""
        prefixes = [(url.rstrip("/"), name) for name, urls in target_urls.items() for url in urls]
        self._prefixes = sorted(prefixes, key=lambda p: -len(p[0]))
        for _, name in prefixes:
            self.latency.labels(target=name)   # a series per target from the start, also before any request

    def _observe(self, request: httpx.Request, response: httpx.Response, seconds: float) -> None:
        url = str(request.url)
        for prefix, name in self._prefixes:
            if url == prefix or url.startswith((prefix + "/", prefix + "?")):
                self.latency.labels(target=name).observe(seconds)
                return

    def record_run(self, store: SqliteStateStore, report: RunReport, targets: Sequence[str]) -> None:
        self._state.snapshot = take_snapshot(store, report, targets)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Replace `path` atomically with the current metrics (mode 0644: node_exporter runs as another user)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.text())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def after_run(self, store: SqliteStateStore, report: RunReport, config: Config) -> None:
        """Snapshot the state and rewrite the text file if one is configured; never fails the run."""
        try:
            self.record_run(store, report, config.enabled_targets())
            textfile = config.settings.metrics.textfile
            if textfile is not None:
                self.write_textfile(config.resolve(textfile))
        except (OSError, ValueError, sqlite3.Error) as exc:  # a full disk, a wrong folder: the sync went fine
            log.warning("cannot write the metrics: %s", exc, extra={"event": "metrics_failed"})

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve /metrics on `listen` (host:port) from a thread; returns the bound address."""
        from prometheus_client import start_http_server

        host, port = listen_address(listen)
        self._server, self._server_thread = start_http_server(port, addr=host, registry=self.registry)
        bound: Any = self._server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
            self._server_thread = None


def target_urls(config: Config) -> dict[str, list[str]]:
    """Every `*_url` setting of each enabled target: the configured value, else the target's default."""
    found: dict[str, list[str]] = {}
    for name in config.enabled_targets():
        table = config.target_table(name) or {}
        urls: list[str] = []
        try:
            model = plugins.load(plugins.TARGET_GROUP, name).Settings
            defaults = {key: f.default for key, f in model.model_fields.items() if key.endswith("_url")}
        except Exception:  # an unknown or broken plugin: the run reports it; take what the table says
            defaults = {}
        for key in sorted(set(defaults) | {k for k in table if k.endswith("_url")}):
            value = table.get(key, defaults.get(key))
            if isinstance(value, str) and value.startswith(("https://", "http://")):
                urls.append(value)
        found[name] = urls
    return found
