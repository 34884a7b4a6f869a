"""brightspace-csv: standards.md §C.3's sample, final-grade choice and scaling, `#` prefixes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

from mcsync.adapter import RawResult
from mcsync.errors import InputProblem
from mcsync.testing import read_adapter
from mcsync_adapters.brightspace import BrightspaceCsvAdapter, scale_to_ten

SAMPLE = (Path(__file__).parent / "fixtures" / "exports" / "brightspace"
          / "MC-DATA01_GradesExport_2025-06-27-14-05.csv")


def read(path: Path, **options: object) -> tuple[list[RawResult], list[InputProblem]]:
    items = read_adapter(BrightspaceCsvAdapter, {"path": str(path), **options}, base_dir=path.parent)
    return ([i for i in items if isinstance(i, RawResult)], [i for i in items if isinstance(i, InputProblem)])


def test_standards_sample() -> None:
    rows, problems = read(SAMPLE)
    assert not problems
    day = date(2025, 6, 27)
    assert [(r.location.line, r.student_number, r.course_code, r.grade, r.scale, r.result_date, r.given_name,
             r.family_name_prefix, r.family_name, r.email) for r in rows] == [
        (2, "2210451", "MC-DATA01", "7.8", "1-10", day, "Sanne", "de", "Vries", "s.devries@student.hz.nl"),  # Adjusted 78/100
        (3, "2198733", "MC-DATA01", "5.2", "1-10", day, "Mohammed", None, "El Amrani", "m.elamrani@student.hz.nl"),
        # line 4: Femke Bakker, nothing graded: no result
        (5, "2245190", "MC-DATA01", "8.445", "1-10", day, "Noëlle", "van der", "Berg", "n.vanderberg@student.hz.nl"),  # Calculated
        (6, "2251234", "MC-DATA01", "5.499", "1-10", day, "Loïs", None, "Jørgensen", "l.jorgensen@student.hz.nl"),
    ]


def test_scaling_cuts_instead_of_rounding_over_the_pass_mark() -> None:
    assert scale_to_ten(Decimal("54.9999"), Decimal(100)) == "5.4999"      # rounding would say 5.5
    assert scale_to_ten(Decimal("55"), Decimal(100)) == "5.5"
    assert scale_to_ten(Decimal("31"), Decimal(40)) == "7.75"
    assert scale_to_ten(Decimal("2"), Decimal(3)) == "6.6666"


def test_one_grade_item_scaled_by_its_max_points() -> None:
    rows, problems = read(SAMPLE, grade_column="Kennistoets Points Grade")
    assert not problems
    assert [(r.student_number, r.grade) for r in rows] == [
        ("2210451", "7.75"), ("2198733", "5.5"), ("2245190", "8.25"), ("2251234", "5.5")]


def test_row_problems_and_locale(tmp_path: Path) -> None:
    path = tmp_path / "MC-ZORG03_GradesExport_2025-07-04-09-30.csv"
    path.write_text(
        "OrgDefinedId;Username;Adjusted Final Grade Numerator;Adjusted Final Grade Denominator;End-of-Line Indicator\n"
        "#2310001;#r.hoogeveen;81,5;100;#\n"
        "#2310002;#z.devries;54;;#\n"
        "#2310003;#m.celik;veel;100;#\n"
        "#2310004;#t.vandijk;5;0;#\n"
        ";#x;7;10;#\n", encoding="cp1252")
    rows, problems = read(path)
    assert [(r.student_number, r.grade, r.course_code, r.result_date) for r in rows] == [
        ("2310001", "8.15", "MC-ZORG03", date(2025, 7, 4))]
    assert [(p.location.line, p.location.field) for p in problems] == [
        (3, "Adjusted Final Grade Denominator"), (4, "Adjusted Final Grade Numerator"),
        (5, "Adjusted Final Grade Denominator"), (6, "OrgDefinedId")]


def test_not_a_brightspace_export(tmp_path: Path) -> None:
    path = tmp_path / "X_GradesExport_2025-07-04-09-30.csv"
    path.write_text("OrgDefinedId,Username,Points\n#1,#a,5\n", encoding="utf-8")
    rows, [problem] = read(path)
    assert "missing columns for the final grade: 'Adjusted Final Grade Numerator'" in problem.reason
