from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from mcsync.adapter import RawResult
from mcsync.errors import ConfigError, InputProblem, Location
from mcsync.mapping import Grading, load_mapping, to_record
from mcsync.record import MicrocredentialRecord, ResultStatus

from .conftest import DEMO, REPO

TODAY = date(2026, 1, 1)


@pytest.mark.parametrize(("grade", "scale", "status"), [
    ("5.5", "1-10", ResultStatus.PASSED), ("5,5", "1-10", ResultStatus.PASSED),
    ("5.4", "1-10", ResultStatus.FAILED), ("5,49", "1-10", ResultStatus.FAILED),
    ("10", "1-10", ResultStatus.PASSED), ("1", "1-10", ResultStatus.FAILED),
    ("55", "0-100", ResultStatus.PASSED), ("54.9", "0-100", ResultStatus.FAILED),
    ("1", "0-1", ResultStatus.PASSED), ("0", "pass-fail", ResultStatus.FAILED),
    ("V", "1-10", ResultStatus.PASSED), ("vld", "1-10", ResultStatus.PASSED), ("voldaan", "letter", ResultStatus.PASSED),
    ("ONV", "1-10", ResultStatus.FAILED), ("NVD", "1-10", ResultStatus.FAILED), ("GGR", "1-10", ResultStatus.FAILED),
    ("VR", "1-10", ResultStatus.EXEMPT), ("ND", "1-10", ResultStatus.ABSENT), ("NO", "1-10", ResultStatus.ABSENT),
    ("FR", "1-10", ResultStatus.FRAUD), ("f", "1-10", ResultStatus.FRAUD),
])
def test_grade_normalisation(grade, scale, status):
    assert Grading().judge(grade, scale)[0] is status


@pytest.mark.parametrize(("grade", "scale", "message"), [
    ("11", "1-10", "outside the 1–10 scale"), ("0.5", "1-10", "outside the 1–10 scale"),
    ("7.5.1", "1-10", "neither a number"), ("zeven", "1-10", "neither a number"),
    ("2", "0-1", "must be 1 or 0"), ("101", "0-100", "outside 0–100"), ("8", "letter", "takes codes only"),
])
def test_malformed_grades_are_explained(grade, scale, message):
    with pytest.raises(ValueError, match=message):
        Grading().judge(grade, scale)


def test_threshold_is_configurable_and_numbers_keep_their_value():
    assert Grading(pass_threshold=Decimal(6)).judge("5.5")[0] is ResultStatus.FAILED
    assert Grading().judge("7,5") == (ResultStatus.PASSED, Decimal("7.5"))


def test_export_verdict_conflicting_with_grade_is_refused():
    with pytest.raises(ValueError, match="export says failed"):
        Grading().judge("7.5", hint=ResultStatus.FAILED)
    assert Grading().judge("7.5", hint=ResultStatus.PASSED)[0] is ResultStatus.PASSED
    assert Grading().judge("pass", "pass-fail", hint=ResultStatus.PASSED)[0] is ResultStatus.PASSED
    assert Grading().judge("", hint=ResultStatus.EXEMPT)[0] is ResultStatus.EXEMPT


def _raw(**kw) -> RawResult:
    data = dict(location=Location("osiris", "results.csv", 7), student_number="2210451", course_code="MC-DATA01",
                grade="7,5", result_date=date(2025, 6, 27), email="s.devries@student.hz.nl")
    data.update(kw)
    return RawResult(**data)


@pytest.fixture
def mapping():
    return load_mapping(REPO / "mappings" / "example.toml")


def test_row_maps_to_record(mapping, issuer):
    record = to_record(_raw(), mapping, issuer, None, today=TODAY)
    assert isinstance(record, MicrocredentialRecord)
    assert record.awardable and record.result.grade_raw == "7,5" and record.result.grade_numeric == Decimal("7.5")
    assert record.microcredential.code == "MC-DATA01" and record.provenance.line == 7


def test_only_passed_results_are_awardable(mapping, issuer):
    assert to_record(_raw(grade="5.5"), mapping, issuer, None, today=TODAY).awardable
    assert not to_record(_raw(grade="5.4"), mapping, issuer, None, today=TODAY).awardable
    assert not to_record(_raw(grade="VR"), mapping, issuer, None, today=TODAY).awardable


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (dict(student_number=""), "student_number", "no student number"),
    (dict(student_number=None), "student_number", "no student number"),
    (dict(course_code="WISB101"), "course_code", "not a microcredential"),
    (dict(grade="zeven"), "grade", "neither a number"),
    (dict(result_date=None), "date", "no result date"),
    (dict(result_date=date(2027, 1, 1)), "date", "in the future"),
    (dict(email="not-an-address"), "email", "e-mail"),
])
def test_bad_rows_become_problems_with_location(mapping, issuer, raw, field, reason):
    problem = to_record(_raw(**raw), mapping, issuer, None, today=TODAY)
    assert isinstance(problem, InputProblem)
    assert problem.location.file == "results.csv" and problem.location.line == 7
    assert problem.location.field == field and reason in problem.reason


def test_rows_without_result_and_ignored_courses_are_skipped(tmp_path, issuer):
    # ignore_codes is a top-level key: it goes before the first table
    text = 'ignore_codes = ["WIS*"]\n' + (REPO / "mappings" / "example.toml").read_text()
    path = tmp_path / "m.toml"
    path.write_text(text)
    mapping = load_mapping(path)
    assert to_record(_raw(course_code="WISB101"), mapping, issuer, None, today=TODAY) is None
    assert to_record(_raw(grade=None), mapping, issuer, None, today=TODAY) is None
    assert to_record(_raw(grade="  "), mapping, issuer, None, today=TODAY) is None


def test_mapping_errors_name_file_entry_and_field(tmp_path):
    bad = (DEMO / "mapping.toml").read_text().replace("ects = 15", "ects = 45").replace('nlqf = "6"', 'nlqf = "9"', 1)
    path = tmp_path / "broken.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    text = str(info.value)
    assert "broken.toml" in text
    assert "microcredentials[3] (MC-ZORG03) → ects: 45 ECTS is outside 3–30" in text
    assert "microcredentials[1] (MC-DATA01) → nlqf" in text


def test_mapping_syntax_error_and_duplicate_codes(tmp_path):
    path = tmp_path / "syntax.toml"
    path.write_text("[grading\npass_threshold = 5.5\n")
    with pytest.raises(ConfigError, match=r"syntax.toml: not valid TOML: .*line 1"):
        load_mapping(path)
    text = (DEMO / "mapping.toml").read_text()
    dup = tmp_path / "dup.toml"
    dup.write_text(text.replace('code = "MC-CIRC02"', 'code = "mc-data01"'))
    with pytest.raises(ConfigError, match="code is used twice"):
        load_mapping(dup)


def test_example_mappings_load():
    for path in [REPO / "mappings" / "example.toml", DEMO / "mapping.toml"]:
        assert len(load_mapping(Path(path)).definitions) == 3
