"""Corrections, vanished records, the shrink guard and `mcsync revoke`: what was issued is withdrawn,
and a broken export never withdraws anything."""

from __future__ import annotations

import pytest

from mcsync.cli import main
from mcsync.engine import Engine
from mcsync.record import make_record_id

from .e2e_helpers import institution

BRIN = "30GB"
DATA = "Xy9Zv1aFwREargJY47cO8w"     # MC-DATA01's badge class
OSIRIS = "exports/osiris/results.csv"


@pytest.fixture
def inst(tmp_path):
    with institution(tmp_path) as inst:
        inst.run()
        yield inst


def rid(number: str, code: str) -> str:
    return str(make_record_id(BRIN, number, code))


def osiris_lines(inst) -> list[str]:
    return (inst.folder / OSIRIS).read_text(encoding="utf-8").splitlines()


def test_a_record_removed_from_its_export_is_withdrawn_and_comes_back_when_it_returns(inst):
    lines = osiris_lines(inst)
    removed = next(line for line in lines if line.startswith("2287341;MC-DATA01"))   # Søren, 8,4: delivered
    inst.write(OSIRIS, "\n".join(line for line in lines if line != removed) + "\n")
    report = inst.run()
    assert report.vanished == 1 and report.exit_code == 0
    assert report.targets["edubadges"].withdrawn == 1 and report.targets["duo"].withdrawn == 1
    assert inst.sandbox.edubadges.awards_for("2287341@student.hz.nl", DATA) == 0
    registration = inst.sandbox.duo.registered(rid("2287341", "MC-DATA01"))
    assert registration.status == "ingetrokken"
    inst.write(OSIRIS, "\n".join(lines) + "\n")          # it was a mistake: the row is back
    report = inst.run()
    assert report.targets["edubadges"].confirmed == 1 and report.targets["duo"].confirmed == 1
    assert inst.sandbox.edubadges.awards_for("2287341@student.hz.nl", DATA) == 1
    assert inst.sandbox.duo.registered(rid("2287341", "MC-DATA01")).status == "geregistreerd"


def test_an_emptied_export_withdraws_nothing_and_says_why(inst):
    inst.write(OSIRIS, osiris_lines(inst)[0] + "\n")     # only the header: a truncated export
    report = inst.run()
    assert report.vanished == 0 and report.exit_code == 1
    assert all(t.withdrawn == 0 for t in report.targets.values())
    store = inst.store()
    try:
        [problem] = [f for f in store.failures() if f.location]
    finally:
        store.close()
    assert "lost 5 of its 5 records" in problem.reason and "--allow-withdrawals" in problem.reason
    assert inst.sandbox.edubadges.awards_for("2287341@student.hz.nl", DATA) == 1
    # a person decides it is right
    report = inst.run(allow_withdrawals=True)
    assert report.vanished == 5 and report.exit_code == 0
    assert inst.sandbox.edubadges.awards_for("2287341@student.hz.nl", DATA) == 0


def test_revoke_withdraws_everywhere_and_stays_withdrawn(inst, capsys, monkeypatch):
    record = rid("2210451", "MC-DATA01")
    store = inst.store()
    try:
        assert Engine(inst.config, store).revoke([record], "Fraude vastgesteld door de examencommissie") == 1
        with pytest.raises(Exception, match="unknown record id"):
            Engine(inst.config, store).revoke(["00000000-0000-5000-8000-000000000000"], "x")
    finally:
        store.close()
    report = inst.run()
    assert report.targets["edubadges"].withdrawn == 1 and report.targets["duo"].withdrawn == 1
    registration = inst.sandbox.duo.registered(record)
    assert registration.status == "ingetrokken"
    assert inst.sandbox.edubadges.awards_for("2210451@student.hz.nl", DATA) == 0
    # the exports still say passed; the record stays withdrawn
    report = inst.run(full=True)
    assert report.targets["edubadges"].confirmed == 0 and inst.sandbox.edubadges.awards_for(
        "2210451@student.hz.nl", DATA) == 0


def test_revoke_on_the_command_line(tmp_path, capsys):
    with institution(tmp_path) as inst:
        inst.run()
        config = inst.folder / "mcsync.toml"
        text = config.read_text(encoding="utf-8").replace('path = "mcsync-demo.db"',
                                                          f'path = "{inst.config.state_path}"')
        config.write_text(text, encoding="utf-8")
        code = main(["--config", str(config), "revoke", rid("2210451", "MC-DATA01"), "--reason", "Fraude"])
        assert code == 0 and "marked for withdrawal" in capsys.readouterr().out
        code = main(["--config", str(config), "revoke", "nope", "--reason", "x"])
        assert code == 2
