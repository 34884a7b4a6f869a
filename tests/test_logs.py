"""Logs as journald and a log shipper see them: JSON lines that parse one by one and carry the run's
context, one summary line per run, and never a secret, token, key or BSN, whatever the verbosity."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from mcsync import log as logs
from mcsync.cli import main

from .conftest import DEMO
from .ops_helpers import deployed

BROKEN_SOURCE = """
[[sources]]
name = "broken"
adapter = "csv"
mapping = "mappings/missing.toml"
[sources.options]
path = "exports/none/*.csv"
"""
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def bsns() -> set[str]:
    with open(DEMO / "exports" / "sis" / "learners.csv", encoding="utf-8") as handle:
        return {row["bsn"] for row in csv.DictReader(handle) if row["bsn"]}


def secrets_of(dep, env: dict[str, str]) -> set[str]:
    """Everything that must never reach a log: the client secret, the tokens handed out, the signing key."""
    found = {"demo-secret-not-for-production"}
    found |= set(dep.sandbox.edubadges._tokens)    # the simulator's record of the access tokens it issued
    key = Path(env["MCSYNC_TARGETS__RIO__KEY_FILE"]).read_text().splitlines()
    found |= {line for line in key if not line.startswith("-----")}   # every base64 line of the private key
    return found


@pytest.fixture
def dep(tmp_path, monkeypatch):
    # the register does not know learner 2210451's BSN: both records are parked, with a log line each
    with deployed(tmp_path, unknown_bsns={"123456782"}) as dep:
        dep.append_config(BROKEN_SOURCE)
        dep.apply(monkeypatch)
        yield dep


def runs(dep, capsys, *options: str, count: int = 2) -> list[str]:
    for _ in range(count):
        assert main(["--config", str(dep.config_path), *options, "sync"]) == 1   # parked records, broken source
    return capsys.readouterr().err.splitlines()


def assert_nothing_secret(dep, text: str) -> None:
    leaked = {s for s in secrets_of(dep, dep.env) | bsns() if s in text}
    assert not leaked
    assert "Bearer" not in text and "PRIVATE KEY" not in text


@pytest.mark.parametrize("verbosity", [[], ["-v"]])
def test_json_lines_carry_the_context_and_one_summary_per_run(dep, capsys, verbosity):
    raw = runs(dep, capsys, "--log-format", "json", *verbosity)
    assert_nothing_secret(dep, "\n".join(raw))
    lines = [json.loads(line) for line in raw]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)

    summaries = [line for line in lines if line.get("event") == "run_summary"]
    assert len(summaries) == 2 and summaries[0]["run_id"] != summaries[1]["run_id"]
    for line in summaries:
        summary = line["summary"]
        assert re.fullmatch(r"[0-9a-f]{32}", line["run_id"]) and summary["run_id"] == line["run_id"]
        assert {"read", "mapped", "unchanged", "problems"} <= set(summary)
        assert set(summary["targets"]) == {"rio", "edubadges", "duo"}
        assert all({"confirmed", "parked"} <= set(t) for t in summary["targets"].values())
        assert "edubadges delivered" in line["message"] and "duo delivered" in line["message"]
    first, second = (line["summary"] for line in summaries)
    assert first["targets"]["duo"]["parked"] == 2 and first["targets"]["edubadges"]["confirmed"] == 11
    assert second["targets"]["edubadges"].get("confirmed", 0) == 0        # nothing new the second time

    parked = [line for line in lines if line.get("event") == "parked"]    # the learner's two results
    assert len(parked) == 2 and len({line["record_id"] for line in parked}) == 2
    assert all(line["target"] == "duo" and UUID.match(line["record_id"]) and line["reason"] for line in parked)
    skipped = [line for line in lines if line.get("event") == "source_skipped"]
    assert len(skipped) == 2 and {line["source"] for line in skipped} == {"broken"}
    for line in lines:       # whatever the event, the context it is about is there
        event = line.get("event", "")
        if event.startswith("source_"):
            assert "source" in line, line
        if event.startswith("target_") or event in ("parked", "shutdown"):
            assert "target" in line, line
    if verbosity:
        assert any(line["logger"] == "httpx" for line in lines)            # -v adds the requests, as JSON too


@pytest.mark.parametrize("options", [["--log-format", "text", "-v"], ["--log-format", "json", "-q"]])
def test_no_secret_token_key_or_bsn_at_any_verbosity(dep, capsys, options):
    text = "\n".join(runs(dep, capsys, *options, count=1))
    if "-v" in options:
        assert "HTTP Request: POST" in text     # the most talkative level was really on
    else:
        assert "parked for a person" in text    # -q still tells what needs a person
    assert_nothing_secret(dep, text)


def test_ids_that_happen_to_hold_nine_bsn_like_digits_stay_whole():
    # about 1 in 200 uuid4 run ids holds nine digits that pass the elfproef; they must stay correlatable
    run_id = "0f3c123456782eab9d0c1f2e3a4b5c6d"
    assert logs.redact(f"run {run_id} finished") == f"run {run_id} finished"
    assert logs.redact("record 5c1fa0e1-77b2-4c1d-9e0f-123456782abc") == "record 5c1fa0e1-77b2-4c1d-9e0f-123456782abc"
    for leak in ("bsn 123456782", "bsn=123456782;", "<bsn>123456782</bsn>", "BSN123456782", '"123456782"'):
        assert "123456782" not in logs.redact(leak), leak
