"""canvas-csv: standards.md §C.2's sample, the Dutch-locale file (Windows-1252, `;`, decimal commas,
Manual Posting row, grading period, override), the BOM file and the ragged file."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from mcsync.adapter import RawResult
from mcsync.errors import InputProblem
from mcsync.testing import read_adapter
from mcsync_adapters.canvas import CanvasCsvAdapter

CANVAS = Path(__file__).parent / "fixtures" / "exports" / "canvas"


def read(path: Path, **options: object) -> tuple[list[RawResult], list[InputProblem]]:
    items = read_adapter(CanvasCsvAdapter, {"path": str(path), **options}, base_dir=CANVAS)
    return ([i for i in items if isinstance(i, RawResult)], [i for i in items if isinstance(i, InputProblem)])


def summary(rows: list[RawResult]) -> list[tuple[object, ...]]:
    return [(r.location.line, r.student_number, r.course_code, r.grade, r.scale, r.result_date, r.given_name,
             r.family_name_prefix, r.family_name, r.email) for r in rows]


def test_standards_sample() -> None:
    rows, problems = read(CANVAS / "plain" / "*.csv")
    assert not problems
    day = date(2025, 6, 27)
    assert summary(rows) == [
        (3, "2210451", "MC-DATA01", "7.5", "1-10", day, "Sanne", "de", "Vries", "s.devries@student.hz.nl"),
        (4, "2198733", "MC-DATA01", "5.2", "1-10", day, "Mohammed", None, "El Amrani", "m.elamrani@student.hz.nl"),
        # line 5: Femke Bakker, EX/N/A and no final grade: no result; line 8: Test Student, no SIS id
        (6, "2245190", "MC-DATA01", "8.4", "1-10", day, "Noëlle", "van der", "Berg", "n.vanderberg@student.hz.nl"),
        (7, "2251234", "MC-DATA01", "6.1", "1-10", day, "Loïs", None, "Jørgensen", "l.jorgensen@student.hz.nl"),
    ]
    assert all(r.status_hint is None and r.eppn is None for r in rows)


def test_dutch_locale_windows_1252_semicolons_decimal_commas() -> None:
    path = CANVAS / "locale" / "2025-07-04T0930_Grades-MC-ZORG03.csv"
    rows, problems = read(path)
    assert not problems
    day = date(2025, 7, 4)
    assert summary(rows) == [
        # line 2 is the Manual Posting row, line 3 Points Possible; the period suffix is matched
        (4, "2310001", "MC-ZORG03", "8,2", "1-10", day, "Renée", None, "Hoogeveen", "r.hoogeveen@student.hz.nl"),
        # the teacher's Override Grade (5,8) wins over the computed Final Grade (5,4)
        (5, "2310002", "MC-ZORG03", "5,8", "1-10", day, "Zoë", "de", "Vries", "z.devries@student.hz.nl"),
        # line 6: Müge Çelik, excused
        (7, "2310004", "MC-ZORG03", "6,6", "1-10", day, "Thijs", "van", "Dijk", "t.vandijk@student.hz.nl"),
    ]
    assert [r.grade for r in read(path, use_override=False)[0]] == ["8,2", "5,4", "6,6"]
    scores = read(path, grade_column="Final Score")[0]
    assert [(r.grade, r.scale) for r in scores] == [("81,50", "0-100"), ("58,00", "0-100"), ("66,25", "0-100")]


def test_bom_file() -> None:
    rows, problems = read(CANVAS / "bom" / "*.csv")
    assert not problems
    assert summary(rows) == [
        (3, "2301877", "MC-CIRC02", "V", "1-10", date(2025, 6, 20), "Femke", None, "Bakker", "f.bakker@outlook.com"),
        (4, "2270002", "MC-CIRC02", "O", "1-10", date(2025, 6, 20), "Åse", None, "Ørsted", "a.orsted@student.hz.nl"),
    ]


def test_ragged_rows_formula_names_and_quoted_newlines() -> None:
    rows, problems = read(CANVAS / "ragged" / "*.csv")
    assert [(r.location.line, r.student_number, r.grade) for r in rows] == [(3, "2210451", "7.5"), (7, "2251234", "6.1")]
    assert [(p.location.line, p.location.field) for p in problems] == [(5, None), (6, None), (8, "Student")]
    assert "ragged row" in problems[0].reason and "formula" in problems[2].reason
    assert "HYPERLINK" not in str(problems[2]) and all("evil" not in str(item) for item in rows + problems)


def test_options_override_the_file_name(tmp_path: Path) -> None:
    renamed = tmp_path / "cijfers.csv"
    shutil.copy(CANVAS / "plain" / "2025-06-27T1405_Grades-MC-DATA01.csv", renamed)
    rows, [problem] = read(renamed)
    assert not rows and "no course code" in problem.reason and problem.location.file == str(renamed)
    rows, problems = read(renamed, course_code="MC-DATA01", result_date="2025-07-01")
    assert not problems and {(r.course_code, r.result_date) for r in rows} == {("MC-DATA01", date(2025, 7, 1))}


def test_not_a_gradebook_export(tmp_path: Path) -> None:
    path = tmp_path / "2025-06-27T1405_Grades-X.csv"
    path.write_text("Student,ID,Section\nx,1,A\n", encoding="utf-8")
    rows, [problem] = read(path)
    assert problem.reason.startswith("missing column for a Canvas gradebook export: 'SIS User ID'; found: 'Student', 'ID', 'Section'")


def test_two_grading_periods_are_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "2025-06-27T1405_Grades-X.csv"
    path.write_text("Student,ID,SIS User ID,Final Grade (P1),Final Grade (P2)\n\"A, B\",1,2,7,8\n", encoding="utf-8")
    rows, [problem] = read(path)
    assert "several columns" in problem.reason and "'Final Grade (P2)'" in problem.reason
    rows, problems = read(path, grade_column="Final Grade (P2)")
    assert [r.grade for r in rows] == ["8"] and not problems


def test_grade_without_sis_id_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "2025-06-27T1405_Grades-X.csv"
    path.write_text("Student,ID,SIS User ID,SIS Login ID,Final Grade\n\"Jansen, Eva\",7,,e.jansen,7.0\n"
                    "\"Student, Test\",8,,abc,6.0\n", encoding="utf-8")
    rows, [problem] = read(path)
    assert not rows and (problem.location.line, problem.location.field) == (2, "SIS User ID")


def test_first_last_name_columns(tmp_path: Path) -> None:
    path = tmp_path / "2025-06-27T1405_Grades-X.csv"
    path.write_text("LastName,FirstName,ID,SIS User ID,SIS Login ID,Final Grade\n"
                    "    Points Possible,,,,,(read only)\n"
                    "Berg,Noëlle van der,5,2245190,nb,8.0\n"
                    "Student,Test,9,,x,7.0\n", encoding="utf-8")
    [row], problems = read(path)
    assert not problems and row.location.line == 3
    assert (row.given_name, row.family_name_prefix, row.family_name, row.email) == ("Noëlle", "van der", "Berg", None)
