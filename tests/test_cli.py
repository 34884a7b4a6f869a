"""The command line as IT staff use it: exit codes, JSON output, the lock, the demo."""

from __future__ import annotations

import json

import pytest

from mcsync.cli import main
from mcsync.lock import RunLock

from .conftest import DEMO
from .e2e_helpers import institution


@pytest.fixture
def cli_inst(tmp_path, monkeypatch):
    """The demo institution, with the environment pointing its config at the sandbox (as systemd would)."""
    with institution(tmp_path) as inst:
        for name, table in inst.config.settings.targets.items():
            for key, value in table.items():
                if key.endswith(("_url", "_file")) or key in ("poll_interval", "poll_budget", "confirm_timeout"):
                    monkeypatch.setenv(f"MCSYNC_TARGETS__{name.upper()}__{key.upper()}", str(value))
        monkeypatch.setenv("MCSYNC_TARGETS__RIO__POLL_INTERVALS", "[0.05]")
        monkeypatch.setenv("MCSYNC_STATE__PATH", str(inst.config.state_path))
        monkeypatch.delenv("MCSYNC_CONFIG", raising=False)
        yield inst


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_status_failures_and_retry(cli_inst, capsys):
    config = str(cli_inst.folder / "mcsync.toml")
    code, out, err = run_cli(capsys, "--config", config, "sync")
    assert code == 0 and "mapped 15 records" in out, err
    assert "11 learners read into the directory" in out
    code, out, _ = run_cli(capsys, "--config", config, "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["records"] == 15
    assert {k: status["targets"]["duo"][k] for k in ("pending", "delivered", "failed")} == \
        {"pending": 0, "delivered": 11, "failed": 0}
    assert status["last_run"]["exit_code"] == 0

    cli_inst.append("exports/osiris/results.csv", "2276502;MC-DATA01;11;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    code, out, _ = run_cli(capsys, "--config", config, "sync", "--json")
    assert code == 1 and json.loads(out)["problems"] == 1
    code, out, _ = run_cli(capsys, "--config", config, "sync")
    assert "learner directory unchanged (not read again)" in out
    code, out, _ = run_cli(capsys, "--config", config, "failures", "--json")
    [failure] = json.loads(out)
    assert {"record_id", "target", "reason", "attempts", "since"} <= set(failure)
    assert failure["line"] == 7 and failure["field"] == "grade" and "1–10" in failure["reason"]
    code, out, _ = run_cli(capsys, "--config", config, "failures")
    assert "results.csv:7 [grade]" in out
    code, out, _ = run_cli(capsys, "--config", config, "retry", "--all")
    assert code == 0 and "0 failed deliveries queued again" in out


def test_a_second_run_waits_for_nobody_exit_3(cli_inst, capsys):
    with RunLock(cli_inst.config.state_path):
        code, _, err = run_cli(capsys, "--config", str(cli_inst.folder / "mcsync.toml"), "sync")
    assert code == 3 and "holds the lock" in err


def test_configuration_errors_exit_2_and_name_key_and_file(tmp_path, capsys):
    path = tmp_path / "mcsync.toml"
    path.write_text('[institution]\nname = "X"\nbrin = "30GB"\n[targets.edubadges]\napi_url = "http://api.edubadges.nl"\n'
                    'token_url = "https://x/token"\nclient_id = "c"\nclient_secret = "supersecretvalue"\n')
    code, _, err = run_cli(capsys, "--config", str(path), "sync")
    assert code == 2 and str(path) in err and "targets.edubadges" in err and "https://" in err
    assert "supersecretvalue" not in err
    code, _, err = run_cli(capsys, "--config", str(tmp_path / "missing.toml"), "status")
    assert code == 2 and "not found" in err
    with pytest.raises(SystemExit) as usage:
        main(["frobnicate"])
    assert usage.value.code == 2


def test_validate_reads_everything_and_contacts_nobody(cli_inst, capsys):
    config = str(cli_inst.folder / "mcsync.toml")
    code, out, _ = run_cli(capsys, "--config", config, "validate")
    assert code == 0, out
    assert "target rio: settings OK" in out and "learners learners: 11 learners, 0 problems" in out
    assert "source oneroster (oneroster-csv, mapping mapping.toml: 3 microcredentials): 1 exempt, 1 failed, 5 passed" in out
    assert sum(c.requests for c in cli_inst.sandbox.counters.values()) == 0
    cli_inst.append("exports/osiris/results.csv", "2276502;MC-DATA01;11;2025-06-27;A;;Dijk;a.vandijk@student.hz.nl\n")
    code, out, _ = run_cli(capsys, "--config", config, "validate")
    assert code == 1 and "results.csv:7 [grade]" in out


def test_validate_refuses_rio_signing_without_a_key(capsys):
    code, out, _ = run_cli(capsys, "--config", str(DEMO / "mcsync.toml"), "validate")
    assert code == 2 and "targets.rio" in out


def test_adapters_lists_every_plugin_with_its_options(capsys):
    code, out, _ = run_cli(capsys, "adapters")
    assert code == 0 and "BROKEN" not in out
    for name in ("oneroster-csv", "csv", "learners-csv", "canvas-csv", "moodle-csv", "moodle-xml",
                 "brightspace-csv", "ooapi", "edubadges", "rio", "duo"):
        assert f"  {name} " in out
    assert "client_secret (" in out and "path (" in out


def test_demo_is_the_main_job(capsys):
    code, out, _ = run_cli(capsys, "demo")
    assert code == 0
    first, second = out.split("== second sync")[0], out.split("== second sync")[1]
    assert "write requests to the national systems: 0" in second
    assert "write requests to the national systems: 0" not in first
    assert '"delivered": 11' in out and "sandbox now holds" in out
