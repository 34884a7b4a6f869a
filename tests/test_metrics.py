"""Prometheus metrics as node_exporter and Prometheus read them: parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcsync.cli import main
from mcsync.config import load_config
from mcsync.daemon import Daemon
from mcsync.errors import ConfigError
from mcsync.notify import Notifier

from .ops_helpers import PASSED, UNITS, NotifySocket, deployed

TARGETS = ("rio", "edubadges", "duo")


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}}"""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(metrics, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


def requests_by_target(sandbox) -> dict[str, int]:
    return {name: counter.requests for name, counter in sandbox.counters.items()}


@pytest.fixture
def dep(tmp_path, monkeypatch):
    with deployed(tmp_path) as dep:
        dep.append_config('[metrics]\ntextfile = "node-exporter/mcsync.prom"')
        dep.apply(monkeypatch)
        yield dep


def test_after_each_run_the_textfile_tells_the_state_and_the_latency_per_target(dep, monkeypatch, capsys):
    textfile = dep.folder / "node-exporter" / "mcsync.prom"
    # first run: Edubadges refuses our client, so its work stays queued (exit 75)
    monkeypatch.setenv("MCSYNC_TARGETS__EDUBADGES__CLIENT_SECRET", "not-the-secret")
    before = requests_by_target(dep.sandbox)
    assert main(["--config", str(dep.config_path), "sync"]) == 75
    sent = {name: n - before[name] for name, n in requests_by_target(dep.sandbox).items()}
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644          # node_exporter runs as another user
    first = parse(textfile.read_text())
    assert value(first, "mcsync_target_up", target="edubadges") == 0
    assert value(first, "mcsync_target_up", target="duo") == value(first, "mcsync_target_up", target="rio") == 1
    assert value(first, "mcsync_deliveries", target="edubadges", state="pending") == PASSED
    assert value(first, "mcsync_deliveries", target="duo", state="delivered") == PASSED
    assert value(first, "mcsync_deliveries", target="rio", state="delivered") == UNITS
    assert 0 < value(first, "mcsync_oldest_pending_age_seconds", target="edubadges") < 120
    assert value(first, "mcsync_oldest_pending_age_seconds", target="duo") == 0
    assert "mcsync_last_success_timestamp_seconds" not in first      # no run has reached every target yet
    assert value(first, "mcsync_last_run_exit_code") == 75
    for target in TARGETS:   # every answered request of this run is in its target's histogram, no other
        assert value(first, "mcsync_request_duration_seconds_count", target=target) == sent[target], target
        assert value(first, "mcsync_request_duration_seconds_bucket", target=target, le="+Inf") == sent[target]
    assert value(first, "mcsync_request_duration_seconds_sum", target="duo") > 0
    inode = textfile.stat().st_ino

    monkeypatch.delenv("MCSYNC_TARGETS__EDUBADGES__CLIENT_SECRET")
    assert main(["--config", str(dep.config_path), "sync"]) == 0
    second = parse(textfile.read_text())
    assert textfile.stat().st_ino != inode                           # replaced by rename, never rewritten in place
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["mcsync.prom"]   # no temporary file left
    assert value(second, "mcsync_target_up", target="edubadges") == 1
    assert {state: value(second, "mcsync_deliveries", target="edubadges", state=state)
            for state in ("pending", "in_flight", "submitted", "delivered", "withdrawn", "failed")} == \
        {"pending": 0, "in_flight": 0, "submitted": 0, "delivered": PASSED, "withdrawn": 0, "failed": 0}
    assert value(second, "mcsync_parked_records", target="edubadges") == 0
    assert value(second, "mcsync_input_problems") == 0
    assert value(second, "mcsync_oldest_pending_age_seconds", target="edubadges") == 0
    assert abs(value(second, "mcsync_last_success_timestamp_seconds") - time.time()) < 60
    assert value(second, "mcsync_last_run_exit_code") == 0 and value(second, "mcsync_last_run_duration_seconds") > 0
    capsys.readouterr()


def test_a_metrics_file_that_cannot_be_written_does_not_fail_the_sync(dep, capsys, caplog):
    (dep.folder / "node-exporter").write_text("a file where the folder should be")
    assert main(["--config", str(dep.config_path), "sync"]) == 0
    assert "cannot write the metrics" in capsys.readouterr().err


def test_the_daemon_serves_the_same_metrics_on_its_endpoint(dep, tmp_path):
    with socket.socket() as probe:        # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dep.append_config(f'listen = "127.0.0.1:{port}"')
    systemd = NotifySocket(tmp_path / "notify")
    daemon = Daemon(lambda: load_config(dep.config_path), notifier=Notifier(str(systemd.path)))
    scraped: list[str] = []

    def prometheus() -> None:
        try:
            systemd.wait_for("READY", within=10)
            status = systemd.wait_for("STATUS", within=20)
            while not status["STATUS"].startswith("last run"):
                status = systemd.wait_for("STATUS", within=20)
            scraped.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        finally:
            if signal.getsignal(signal.SIGTERM) == daemon._on_stop:   # never kill pytest itself
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=prometheus)
    thread.start()
    try:
        assert daemon.run() == 0
    finally:
        thread.join()
        systemd.close()
    [text] = scraped
    metrics = parse(text)
    assert value(metrics, "mcsync_deliveries", target="edubadges", state="delivered") == PASSED
    assert value(metrics, "mcsync_request_duration_seconds_count", target="rio") == \
        dep.sandbox.counters["rio"].requests
    assert parse((dep.folder / "node-exporter" / "mcsync.prom").read_text()) == metrics
    with pytest.raises(httpx.ConnectError):   # closed with the daemon
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize(("table", "complaint"), [
    ('[metrics]\ntextfile = "mcsync.txt"', "must end in .prom"),
    ('[metrics]\nlisten = "localhost"', "is not host:port"),
    ('[metrics]\nlisten = "[::1]:99999"', "is not host:port"),
])
def test_metrics_settings_are_checked(tmp_path, table, complaint):
    path = tmp_path / "mcsync.toml"
    path.write_text(f'[institution]\nname = "X"\nbrin = "30GB"\n{table}\n')
    with pytest.raises(ConfigError, match=complaint):
        load_config(path)
