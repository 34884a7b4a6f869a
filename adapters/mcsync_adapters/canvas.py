"""`canvas-csv`: the Canvas LMS gradebook export (Grades → Export → CSV).

What the export looks like (instructure/canvas-lms `lib/gradebook_exporter.rb`, standards.md §C.2):
a header row (`Student` or `LastName,FirstName`, `ID`, `SIS User ID`, `SIS Login ID`, `Section`,
one column per assignment, totals, and with a grading scheme `Current/Final Grade`; with final
grade override `Override Score`/`Override Grade`), an optional row with `Manual Posting` under
assignments whose grades are posted by hand, the row `    Points Possible`, then one row per
student (the Student View "Test Student" last, without SIS id). Total columns get a grading-period
suffix, `Final Grade (Periode 2)`, when one period is exported. `EX` (excused) and `N/A` (not
assigned) are no result. Separator and decimal comma follow the user's locale (`;`, `7,5`); csvio
deals with those and with Windows-1252 files.

Taken per row: `SIS User ID` → student number; the grade column (option `grade_column`, default
`Final Grade`; the matching `Override` column wins when the teacher set one, option
`use_override`) → grade, kept as found (`7,5` stays `7,5`: the mapping reads decimal commas);
`Student` ("Vries, Sanne de") → given name, tussenvoegsel, family name; `SIS Login ID` → e-mail
when it is an address. Course code: option `course_code`, else the file name Canvas gives the
download, `<timestamp>_Grades-<code>.csv`; result date: option `result_date`, else the date in that
timestamp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from pydantic import Field

from mcsync.adapter import GradeScale, RawResult
from mcsync.csvio import CsvFile, CsvHeader, CsvRow
from mcsync.errors import InputProblem

from ._common import clean_cells, is_no_result
from ._csvbase import CsvFileAdapter, CsvOptions
from ._names import PersonName, from_parts, from_sortable, split_trailing_prefix

FILE_NAME = re.compile(r"(?P<stamp>\d{4}-\d{2}-\d{2})T\d{4}_Grades-(?P<code>.+?)(?: ?\(\d+\))?\.csv", re.I)
TEST_STUDENT_NAMES = {"student, test", "test student", "student test"}   # Student View's user


class CanvasOptions(CsvOptions):
    course_code: str | None = Field(
        default=None, description="course code for every row; default: from the file name "
                                  "'<timestamp>_Grades-<code>.csv'")
    grade_column: str = Field(
        default="Final Grade", description="the column with the grade; a grading-period suffix "
                                           "such as 'Final Grade (Periode 2)' is matched too")
    use_override: bool = Field(
        default=True, description="take 'Override Grade' (or 'Override Score' for a score column) "
                                  "when the teacher set one")
    result_date: date | None = Field(
        default=None, description="result date for every row; default: the date in the file name")
    scale: GradeScale | None = Field(
        default=None, description="grade scale; default: '0-100' for a '... Score' column, else '1-10'")


def find_column(header: CsvHeader, name: str) -> tuple[int | None, list[str]]:
    """The column `name`, or `name (<grading period>)`; with the candidates when ambiguous."""
    exact = header.index(name)
    if exact is not None:
        return exact, []
    wanted = " ".join(name.split()).casefold()
    candidates = [i for i, column in enumerate(header.names)
                  if (base := column.rsplit(" (", 1)[0]) != column and column.endswith(")")
                  and " ".join(base.split()).casefold() == wanted]
    if len(candidates) == 1:
        return candidates[0], []
    return None, [header.names[i] for i in candidates]


@dataclass(frozen=True)
class _Plan:
    course_code: str
    result_date: date | None
    grade: int
    override: int | None
    scale: GradeScale
    student: int | None
    last_name: int | None
    first_name: int | None
    sis_user_id: int
    login_id: int | None
    canvas_id: int | None


class CanvasCsvAdapter(CsvFileAdapter[_Plan]):
    """Canvas gradebook CSV export → raw results (see the module docstring)."""

    name = "canvas-csv"
    kind = "results"
    Options = CanvasOptions
    options: CanvasOptions

    def prepare(self, csv_file: CsvFile) -> _Plan | InputProblem:
        header = csv_file.header
        options = self.options
        missing = csv_file.require("SIS User ID", what="a Canvas gradebook export")
        if missing is not None:
            return missing
        grade, ambiguous = find_column(header, options.grade_column)
        if grade is None:
            if ambiguous:
                return csv_file.file_problem(
                    f"several columns match grade_column {options.grade_column!r}: "
                    + ", ".join(repr(name) for name in ambiguous),
                    hint="set grade_column to the exact column name")
            return csv_file.require(options.grade_column, what="the grade") or csv_file.file_problem(
                f"no column {options.grade_column!r}")
        grade_name = header.names[grade]
        if grade_name.endswith(")"):                 # a grading-period suffix
            grade_name = grade_name.rsplit(" (", 1)[0]
        override = None
        if options.use_override:
            base = grade_name.casefold()
            if base.endswith("final grade"):
                override = find_column(header, "Override Grade")[0]
            elif base.endswith("final score"):
                override = find_column(header, "Override Score")[0]
        match = FILE_NAME.fullmatch(csv_file.path.name)
        course_code = options.course_code or (match.group("code") if match else None)
        if not course_code:
            return csv_file.file_problem(
                "no course code: the file name is not Canvas's '<timestamp>_Grades-<code>.csv' "
                "and the source has no course_code option",
                hint="set course_code in the source's options, or keep the file name Canvas gave it")
        result_date = options.result_date or (date.fromisoformat(match.group("stamp")) if match else None)
        sis_user_id = header.index("SIS User ID")
        assert sis_user_id is not None  # required above
        scale: GradeScale = options.scale or ("0-100" if "score" in grade_name.casefold() else "1-10")
        return _Plan(
            course_code=course_code, result_date=result_date, grade=grade, override=override, scale=scale,
            student=header.index("Student"), last_name=header.index("LastName"),
            first_name=header.index("FirstName"), sis_user_id=sis_user_id,
            login_id=header.index("SIS Login ID"), canvas_id=header.index("ID"),
        )

    def _name(self, row: CsvRow, plan: _Plan) -> PersonName:
        if plan.student is not None:
            return from_sortable(row.get(plan.student))
        given, trailing = split_trailing_prefix(row.get(plan.first_name))
        return from_parts(given, row.get(plan.last_name), trailing)

    def convert(self, row: CsvRow, plan: _Plan) -> RawResult | InputProblem | None:
        first_cell = row.get(0)          # Student, or LastName in the LastName,FirstName layout
        if first_cell == "Points Possible":
            return None
        if row.get(plan.canvas_id) is None and row.get(plan.sis_user_id) is None and any(
                cell.strip().startswith("Manual Posting") for cell in row.cells):
            return None
        grade, grade_column = row.get(plan.grade), row.header.names[plan.grade]
        if plan.override is not None and (override := row.get(plan.override)):
            grade, grade_column = override, row.header.names[plan.override]
        if is_no_result(grade):
            return None
        if row.get(plan.sis_user_id) is None:
            shown_name = first_cell if plan.student is not None else " ".join(
                filter(None, (row.get(plan.last_name), row.get(plan.first_name))))
            if (shown_name or "").casefold() in TEST_STUDENT_NAMES:
                return None
            return self.problem(row, "SIS User ID", "row has a grade but no SIS User ID (student number)",
                                hint="add the student's SIS id in Canvas, or export with SIS ids shown")
        name = self._name(row, plan)
        login = row.get(plan.login_id)
        cells = clean_cells({
            "student_number": ("SIS User ID", row.get(plan.sis_user_id)),
            "course_code": ("file name", plan.course_code),
            "grade": (grade_column, grade),
            "given_name": ("Student", name.given_name),
            "family_name_prefix": ("Student", name.family_name_prefix),
            "family_name": ("Student", name.family_name),
            "email": ("SIS Login ID", login if login and "@" in login else None),
        })
        return RawResult(location=self.context.location(row.file, row.line), scale=plan.scale,
                         result_date=plan.result_date, **cells)
