"""oneroster-csv: standards.md §C.1's sample folder read into raw rows, the join and its failures."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from mcsync.adapter import RawResult
from mcsync.errors import InputProblem
from mcsync.record import ResultStatus
from mcsync.testing import read_adapter
from mcsync_adapters.oneroster import OneRosterCsvAdapter

FOLDER = Path(__file__).parent / "fixtures" / "exports" / "oneroster" / "hz-2025"


def read(folder: Path, **options: object) -> tuple[list[RawResult], list[InputProblem]]:
    items = read_adapter(OneRosterCsvAdapter, {"path": str(folder), **options}, base_dir=folder.parent)
    return ([i for i in items if isinstance(i, RawResult)], [i for i in items if isinstance(i, InputProblem)])


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(FOLDER, target)
    return target


def test_sample_rows() -> None:
    rows, problems = read(FOLDER)
    assert not problems
    results = str(FOLDER / "results.csv")
    assert [(r.location.file, r.location.line) for r in rows] == [(results, 2), (results, 3), (results, 5),
                                                                (results, 6), (results, 8)]
    sanne, mohammed, femke, noelle, lois = rows
    assert sanne.model_dump(exclude={"location"}) == {
        "student_number": "2210451", "course_code": "MC-DATA01", "grade": "7.5", "scale": "1-10",
        "status_hint": None, "result_date": date(2025, 6, 27), "given_name": "Sanne",
        "family_name_prefix": "de", "family_name": "Vries", "email": "s.devries@student.hz.nl", "eppn": None}
    assert (mohammed.student_number, mohammed.grade, mohammed.family_name, mohammed.family_name_prefix) == (
        "2198733", "5.2", "El Amrani", None)
    # textScore wins over score; the 0-1 line item gives the scale
    assert (femke.student_number, femke.course_code, femke.grade, femke.scale, femke.result_date) == (
        "2301877", "MC-CIRC02", "V", "0-1", date(2025, 6, 20))
    # scoreStatus=exempt: a result without a grade, with the export's verdict
    assert (noelle.course_code, noelle.grade, noelle.status_hint) == ("MC-ZORG03", None, ResultStatus.EXEMPT)
    assert (noelle.given_name, noelle.family_name_prefix, noelle.family_name, noelle.eppn) == (
        "Noëlle", "van der", "Berg", "n.vanderberg@hz.nl")
    # r-0005 (not submitted) yields nothing; r-0006 has no textScore, so score
    assert (lois.student_number, lois.grade, lois.given_name, lois.family_name) == ("2251234", "6.8", "Loïs", "Jørgensen")


@pytest.mark.parametrize("mode, given, prefix", [("auto", "Sanne", "de"), ("prefix", "Sanne", "de"),
                                                 ("given", "Sanne de", None), ("ignore", "Sanne", None)])
def test_middle_name_option(mode: str, given: str, prefix: str | None) -> None:
    sanne = read(FOLDER, middle_name=mode)[0][0]
    assert (sanne.given_name, sanne.family_name_prefix, sanne.family_name) == (given, prefix, "Vries")


def test_auto_middle_name_that_is_not_a_prefix(copy: Path) -> None:
    users = (copy / "users.csv").read_text(encoding="utf-8").replace("Sanne,Vries,de,", "Sanne,Vries,Maria,")
    (copy / "users.csv").write_text(users, encoding="utf-8")
    sanne = read(copy)[0][0]
    assert (sanne.given_name, sanne.family_name_prefix) == ("Sanne Maria", None)


def test_join_failures_are_row_problems_and_the_rest_goes_on(copy: Path) -> None:
    results = (copy / "results.csv").read_text(encoding="utf-8")
    results = results.replace("r-0001,active,2025-06-27T14:05:00.000Z,li-MCDATA01-EIND,u-2210451",
                              "r-0001,active,2025-06-27T14:05:00.000Z,li-UNKNOWN,u-2210451")
    results = results.replace("li-MCCIRC02-EIND,u-2301877", "li-MCCIRC02-EIND,u-9999999")
    results = results.replace("2025-07-04,,,k-MCZORG03-25A", "04/07/2025,,,k-MCZORG03-25A")
    (copy / "results.csv").write_text(results, encoding="utf-8")
    rows, problems = read(copy)
    assert [(p.location.line, p.location.field) for p in problems] == [
        (2, "lineItemSourcedId"), (5, "studentSourcedId"), (8, "scoreDate")]
    assert "li-UNKNOWN" in problems[0].reason and "lineItems.csv" in problems[0].reason
    assert "u-9999999" in problems[1].reason
    assert [r.student_number for r in rows] == ["2198733", "2245190"]


def test_class_or_course_missing(copy: Path) -> None:
    classes = (copy / "classes.csv").read_text(encoding="utf-8")
    (copy / "classes.csv").write_text(classes.replace("k-MCDATA01-25A,active", "k-OTHER,active"), encoding="utf-8")
    rows, problems = read(copy)
    assert [p.location.line for p in problems] == [2, 3]
    assert "class 'k-MCDATA01-25A'" in problems[0].reason


def test_score_range_mcsync_cannot_judge(copy: Path) -> None:
    items = (copy / "lineItems.csv").read_text(encoding="utf-8")
    (copy / "lineItems.csv").write_text(items.replace("t-2025-S2,1,10,org-hz\nli-MCCIRC02", "t-2025-S2,0,20,org-hz\nli-MCCIRC02"),
                                        encoding="utf-8")
    rows, problems = read(copy)
    assert [(p.location.line, p.location.field) for p in problems] == [(2, "textScore"), (3, "textScore")]
    assert "0-20" in problems[0].reason


def test_user_without_identifier(copy: Path) -> None:
    users = (copy / "users.csv").read_text(encoding="utf-8").replace(",de,2210451,", ",de,,")
    (copy / "users.csv").write_text(users, encoding="utf-8")
    rows, problems = read(copy)
    assert [p.location.line for p in problems] == [2]
    assert "no identifier" in problems[0].reason and "users.csv line 2" in problems[0].reason


def test_manifest_rules(copy: Path) -> None:
    manifest = copy / "manifest.csv"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace("file.users,bulk", "file.users,delta"),
                        encoding="utf-8")
    rows, [problem] = read(copy)
    assert not rows and "file.users is 'delta'" in problem.reason and problem.location.file == str(manifest)

    manifest.unlink()
    rows, [problem] = read(copy)
    assert not rows and "no manifest.csv" in problem.reason


def test_missing_table_and_wrong_columns(copy: Path) -> None:
    (copy / "courses.csv").unlink()
    rows, [problem] = read(copy)
    assert not rows and problem.location.file.endswith("courses.csv") and "cannot be opened" in problem.reason
    shutil.copy(FOLDER / "courses.csv", copy / "courses.csv")
    (copy / "results.csv").write_text("id,grade\n1,7\n", encoding="utf-8")
    rows, [problem] = read(copy)
    assert not rows and problem.reason.startswith("missing columns: 'lineItemSourcedId'")


def test_path_that_is_a_file() -> None:
    rows, [problem] = read(FOLDER / "results.csv")
    assert "not a folder" in problem.reason
