"""The whole chain against the sandbox: exports → records → RIO, Edubadges and the DUO register."""

from __future__ import annotations

import json

import pytest

from mcsync.cli import status_json
from mcsync.record import make_record_id

from .e2e_helpers import institution

BRIN = "30GB"


@pytest.fixture
def inst(tmp_path):
    with institution(tmp_path) as inst:
        yield inst


def eppn(number: str) -> str:
    return f"{number}@student.hz.nl"


def test_first_sync_delivers_every_passed_record_once_and_the_second_sends_nothing(inst):
    report = inst.run()
    assert report.exit_code == 0 and report.problems == 0
    passed = report.mapped - 4          # 5.2, ONV and 4.9 fail; the exemption is never issued
    assert report.targets["edubadges"].confirmed == passed == 11
    assert report.targets["duo"].confirmed == 11 and report.targets["rio"].confirmed == 3
    assert set(report.sources) == {"oneroster", "osiris", "canvas", "moodle"}
    edu = inst.sandbox.edubadges
    assert edu.awards_for(eppn("2210451"), "Xy9Zv1aFwREargJY47cO8w") == 1     # 7.5
    assert edu.awards_for(eppn("2198733"), "Xy9Zv1aFwREargJY47cO8w") == 0     # 5.2
    # every register entry references a unit code that the sandbox RIO issued
    codes = {reg.text("opleidingseenheidcode") for reg in inst.sandbox.duo.registrations.values()}
    assert len(inst.sandbox.duo.registrations) == 11 and len(codes) == 3
    assert all(inst.sandbox.rio.unit_element(code, visible_only=True) is not None for code in codes)

    writes = inst.sandbox.write_requests()
    again = inst.run()
    assert inst.sandbox.write_requests() == writes          # zero write requests
    assert sorted(again.skipped) == ["canvas", "learners:learners", "moodle", "oneroster", "osiris"]
    assert again.read == 0 and again.changed == 0 and again.exit_code == 0
    full = inst.run(full=True)                               # read everything, compare row by row
    assert inst.sandbox.write_requests() == writes
    assert full.unchanged == full.mapped == 15 and full.changed == 0 and full.exit_code == 0


def test_a_changed_export_is_read_again_and_only_its_changes_go_out(inst):
    inst.run()
    writes = inst.sandbox.write_requests()
    inst.append("exports/osiris/results.csv", "2276502;MC-DATA01;6,5;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    report = inst.run()
    assert set(report.skipped) == {"canvas", "learners:learners", "moodle", "oneroster"}
    assert report.changed == 1 and report.unchanged == 5
    assert report.targets["edubadges"].confirmed == 1 and report.targets["duo"].confirmed == 1
    assert inst.sandbox.write_requests() == writes + 2      # one bundle, one delivery


def test_grade_5_5_is_awarded_and_5_4_is_not(inst):
    inst.append("exports/osiris/results.csv",
                "2276502;MC-DATA01;5,5;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n"
                "2276502;MC-CIRC02;5,4;2025-06-20;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    inst.run()
    edu = inst.sandbox.edubadges
    assert edu.awards_for(eppn("2276502"), "Xy9Zv1aFwREargJY47cO8w") == 1
    assert edu.awards_for(eppn("2276502"), "Ck2Pq8rStUvWxYz0Ab1Cd2") == 0
    assert inst.sandbox.duo.registered(str(make_record_id(BRIN, "2276502", "MC-CIRC02"))) is None


def test_a_learner_in_two_files_is_awarded_once(inst):
    # 2210451 passed MC-DATA01 in the OneRoster export; the Osiris export has the same result again
    inst.append("exports/osiris/results.csv", "2210451;MC-DATA01;7,5;2025-06-27;Sanne;de;Vries;s.devries@student.hz.nl\n")
    report = inst.run()
    assert report.superseded == 1
    assert inst.sandbox.edubadges.awards_for(eppn("2210451"), "Xy9Zv1aFwREargJY47cO8w") == 1
    rid = str(make_record_id(BRIN, "2210451", "MC-DATA01"))
    assert len(inst.sandbox.duo.deliveries_with(rid)) == 1


def test_an_older_result_added_later_does_not_replace_the_unchanged_one(inst):
    inst.append("exports/osiris/results.csv", "2276502;MC-DATA01;8,0;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    inst.run()
    rid = str(make_record_id(BRIN, "2276502", "MC-DATA01"))
    assert len(inst.sandbox.duo.deliveries_with(rid)) == 1
    # the same result again, unchanged (ranked by what the store kept), and an older resit result
    inst.append("exports/osiris/results.csv", "2276502;MC-DATA01;6,0;2025-01-15;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    report = inst.run()
    assert report.superseded == 1 and report.changed == 0
    assert len(inst.sandbox.duo.deliveries_with(rid)) == 1
    # a later result does replace it
    inst.append("exports/osiris/results.csv", "2276502;MC-DATA01;9,0;2025-08-29;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")
    report = inst.run()
    assert report.changed == 1 and report.superseded == 1            # the January row, again
    assert len(inst.sandbox.duo.deliveries_with(rid)) == 2


def test_broken_rows_are_reported_with_file_line_and_reason_and_the_rest_goes_through(inst):
    inst.append("exports/osiris/results.csv",
                "2276502;WISB101;8,0;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n"    # line 7
                "2276502;MC-DATA01;acht;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n"  # line 8
                ";MC-DATA01;8,0;2025-06-27;Anaïs;van;Dijk;a.vandijk@student.hz.nl\n")         # line 9
    report = inst.run()
    assert report.exit_code == 1 and report.problems == 3
    assert report.targets["edubadges"].confirmed == 11 and report.targets["duo"].confirmed == 11
    store = inst.store()
    try:
        problems = {f.location.line: f for f in store.failures() if f.location}
    finally:
        store.close()
    assert set(problems) == {7, 8, 9}
    assert problems[7].location.field == "course_code" and "WISB101" in problems[7].reason
    assert problems[8].location.field == "grade" and "acht" in problems[8].reason
    assert problems[9].location.field == "studentnummer"          # the column as the file names it
    assert "student number" in problems[9].reason
    assert all(p.location.file.endswith("osiris/results.csv") for p in problems.values())
    # fixing the export clears the problems on the next run
    lines = (inst.folder / "exports/osiris/results.csv").read_text(encoding="utf-8").splitlines()[:6]
    inst.write("exports/osiris/results.csv", "\n".join(lines) + "\n")
    assert inst.run().exit_code == 0


def test_a_broken_mapping_parks_its_source_and_the_others_go_on(inst):
    text = (inst.folder / "mapping.toml").read_text(encoding="utf-8")
    inst.write("broken.toml", text.replace("ects = 15", "ects = 45"))
    config_text = (inst.folder / "mcsync.toml").read_text(encoding="utf-8")
    inst.write("mcsync.toml", config_text.replace('name = "osiris"\nadapter = "csv"\nmapping = "mapping.toml"',
                                                  'name = "osiris"\nadapter = "csv"\nmapping = "broken.toml"'))
    inst.reload()
    report = inst.run()
    assert report.exit_code == 1
    assert report.sources["oneroster"]["mapped"] == 7 and report.sources["osiris"]["problems"] == 1
    store = inst.store()
    try:
        [problem] = [f for f in store.failures() if f.location]
    finally:
        store.close()
    assert "broken.toml" in problem.location.file and "MC-ZORG03" in problem.reason and "ects" in problem.reason
    assert inst.sandbox.edubadges.awards_for(eppn("2210451"), "Xy9Zv1aFwREargJY47cO8w") == 1


def test_dry_run_contacts_nobody_and_changes_nothing(inst):
    report = inst.run(dry_run=True)
    assert report.targets["edubadges"].confirmed == 11       # would send
    assert inst.sandbox.write_requests() == 0
    assert sum(c.requests for c in inst.sandbox.counters.values()) == 0
    store = inst.store()
    try:
        assert store.record_count() == 0 and store.counts() == {}
    finally:
        store.close()


def test_status_json_matches_the_interface(inst):
    inst.run()
    store = inst.store()
    try:
        data = status_json(inst.config, store)
    finally:
        store.close()
    json.dumps(data)
    assert data["records"] == 15
    for name, delivered in (("edubadges", 11), ("duo", 11), ("rio", 3)):
        assert data["targets"][name]["delivered"] == delivered
        assert data["targets"][name]["pending"] == 0 and data["targets"][name]["failed"] == 0
    assert set(data["last_run"]) >= {"started_at", "finished_at", "exit_code"}
    assert data["last_run"]["exit_code"] == 0 and data["last_run"]["started_at"].endswith("Z")


def test_a_grade_corrected_to_a_fail_withdraws_the_award_and_the_registration(inst):
    inst.run()
    path = "exports/oneroster/results.csv"
    text = (inst.folder / path).read_text(encoding="utf-8")
    inst.write(path, text.replace("u-2210451,fully graded,7.5,2025-06-27,,7.5", "u-2210451,fully graded,4.5,2025-06-27,,4.5"))
    report = inst.run()
    assert report.changed == 1
    assert report.targets["edubadges"].withdrawn == 1 and report.targets["duo"].withdrawn == 1
    rid = str(make_record_id(BRIN, "2210451", "MC-DATA01"))
    assert inst.sandbox.duo.registered(rid).status == "ingetrokken"
    assert inst.sandbox.edubadges.awards_for(eppn("2210451"), "Xy9Zv1aFwREargJY47cO8w") == 0
