"""`brightspace-csv`: the D2L Brightspace grade export (Grades → Export, standards.md §C.3).

Columns: `OrgDefinedId`, `Username` (both written with a leading `#` so spreadsheets keep them as
text), optional `Last Name`, `First Name`, `Email`, `Sections`; per grade item
`<Item> Points Grade <Numeric MaxPoints:100 Weight:70 Category:… CategoryWeight:…>` (or `Grade
Symbol`, `Text Grade`); `<Category> Subtotal Numerator/Denominator`; `Calculated Final Grade
Numerator/Denominator`, `Adjusted Final Grade Numerator/Denominator`; last `End-of-Line Indicator`,
whose cells are `#`. Header suffixes in `<…>` are ignored when matching column names.

Taken: `OrgDefinedId` without `#` → student number; the final grade from `Adjusted Final Grade
Numerator / Denominator` when both are filled, else `Calculated …`, scaled to 10. The scaled grade
is cut (not rounded) to 4 decimals, so it never crosses a pass mark that a rounding would push it
over (5.49996 stays below 5.5). Option `grade_column` picks one item instead: a `Points Grade`
column is scaled by its `MaxPoints`, a `Grade Symbol` or `Text Grade` column is taken as found.
Course code: option `course_code`, else the file name `<code>_GradesExport_<timestamp>.csv`; date:
option `result_date`, else the date in that timestamp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_DOWN, Decimal

from pydantic import Field

from mcsync.adapter import GradeScale, RawResult
from mcsync.csvio import CsvFile, CsvHeader, CsvRow, format_decimal, parse_decimal
from mcsync.errors import InputProblem

from ._common import clean_cells, is_no_result
from ._csvbase import CsvFileAdapter, CsvOptions
from ._names import from_parts

FILE_NAME = re.compile(
    r"(?P<code>.+?)_GradesExport_(?P<stamp>\d{4}-\d{2}-\d{2})[-_T\d]*(?: ?\(\d+\))?\.csv", re.I)
MAX_POINTS = re.compile(r"MaxPoints:\s*([0-9]+(?:[.,][0-9]+)?)", re.I)
FINAL_PAIRS = (("Adjusted Final Grade Numerator", "Adjusted Final Grade Denominator"),
               ("Calculated Final Grade Numerator", "Calculated Final Grade Denominator"))
QUANTUM = Decimal("0.0001")


class BrightspaceOptions(CsvOptions):
    course_code: str | None = Field(
        default=None, description="course code for every row; default: from the file name "
                                  "'<code>_GradesExport_<timestamp>.csv'")
    grade_column: str | None = Field(
        default=None, description="one grade item instead of the final grade, e.g. 'Eindopdracht Points "
                                  "Grade' (scaled to 10 by its MaxPoints) or '… Grade Symbol' (as found)")
    result_date: date | None = Field(
        default=None, description="result date for every row; default: the date in the file name")
    scale: GradeScale = Field(
        default="1-10", description="scale of a 'Grade Symbol'/'Text Grade' column; scaled grades are 1-10")


def strip_hash(value: str | None) -> str | None:
    if value is None:
        return None
    if value.startswith("#"):
        return value[1:].strip() or None
    return value


def _base(column: str) -> str:
    """A column name without its `<…>` suffix, normalised for matching."""
    return " ".join(column.split("<", 1)[0].split()).casefold()


@dataclass(frozen=True)
class _Plan:
    course_code: str
    result_date: date | None
    pairs: tuple[tuple[int, int, str], ...]   # (numerator, denominator, name) in order of preference
    item: int | None                           # option grade_column
    item_max: Decimal | None
    org_id: int
    first: int | None
    last: int | None
    email: int | None


def _find(header: CsvHeader, name: str) -> int | None:
    wanted = _base(name)
    return next((i for i, column in enumerate(header.names) if _base(column) == wanted), None)


def scale_to_ten(points: Decimal, maximum: Decimal) -> str:
    return format_decimal((points / maximum * 10).quantize(QUANTUM, rounding=ROUND_DOWN))


class BrightspaceCsvAdapter(CsvFileAdapter[_Plan]):
    """Brightspace grade export → raw results (see the module docstring)."""

    name = "brightspace-csv"
    kind = "results"
    Options = BrightspaceOptions
    options: BrightspaceOptions

    def prepare(self, csv_file: CsvFile) -> _Plan | InputProblem:
        header, options = csv_file.header, self.options
        missing = csv_file.require("OrgDefinedId", what="a Brightspace grade export")
        if missing is not None:
            return missing
        pairs = tuple((num, den, name) for name, other in FINAL_PAIRS
                      if (num := _find(header, name)) is not None and (den := _find(header, other)) is not None)
        item = item_max = None
        if options.grade_column:
            item = _find(header, options.grade_column)
            if item is None:
                return csv_file.require(options.grade_column, what="the grade")  # type: ignore[return-value]
            found = MAX_POINTS.search(header.names[item])
            item_max = parse_decimal(found.group(1)) if found else None
            if item_max is not None and item_max <= 0:
                return csv_file.file_problem(f"column {header.names[item]!r} has MaxPoints 0")
        elif not pairs:
            return csv_file.require(*FINAL_PAIRS[0], what="the final grade")  # type: ignore[return-value]
        match = FILE_NAME.fullmatch(csv_file.path.name)
        course_code = options.course_code or (match.group("code") if match else None)
        if not course_code:
            return csv_file.file_problem(
                "no course code: the file name is not Brightspace's '<code>_GradesExport_<timestamp>.csv' "
                "and the source has no course_code option",
                hint="set course_code in the source's options, or keep the file name Brightspace gave it")
        org_id = _find(header, "OrgDefinedId")
        assert org_id is not None  # required above
        return _Plan(
            course_code=course_code,
            result_date=options.result_date or (date.fromisoformat(match.group("stamp")) if match else None),
            pairs=pairs, item=item, item_max=item_max, org_id=org_id,
            first=_find(header, "First Name"), last=_find(header, "Last Name"), email=_find(header, "Email"),
        )

    def _grade(self, row: CsvRow, plan: _Plan) -> tuple[str | None, str, GradeScale] | InputProblem:
        """(grade, column, scale), grade None when there is no result."""
        names = row.header.names
        if plan.item is not None:
            text = row.get(plan.item)
            if plan.item_max is None or is_no_result(text):
                return text, names[plan.item], self.options.scale
            try:
                return scale_to_ten(parse_decimal(text or ""), plan.item_max), names[plan.item], "1-10"
            except ValueError:
                return self.problem(row, names[plan.item], "points are not a number")
        for numerator, denominator, name in plan.pairs:
            num, den = row.get(numerator), row.get(denominator)
            if num is None and den is None:
                continue
            if num is None or den is None:
                missing = names[numerator] if num is None else names[denominator]
                return self.problem(row, missing, f"{name.rsplit(' ', 1)[0]}: numerator and denominator "
                                                  "must both be filled")
            try:
                points, maximum = parse_decimal(num), parse_decimal(den)
            except ValueError:
                return self.problem(row, name, "final grade numerator or denominator is not a number")
            if maximum <= 0:
                return self.problem(row, names[denominator], "denominator is not above 0")
            return scale_to_ten(points, maximum), name, "1-10"
        return None, "", "1-10"

    def convert(self, row: CsvRow, plan: _Plan) -> RawResult | InputProblem | None:
        found = self._grade(row, plan)
        if isinstance(found, InputProblem):
            return found
        grade, column, scale = found
        if is_no_result(grade):
            return None
        student = strip_hash(row.get(plan.org_id))
        if student is None:
            return self.problem(row, "OrgDefinedId", "row has a grade but no OrgDefinedId (student number)")
        name = from_parts(row.get(plan.first), row.get(plan.last))
        cells = clean_cells({
            "student_number": ("OrgDefinedId", student),
            "course_code": ("file name", plan.course_code),
            "grade": (column, grade),
            "given_name": ("First Name", name.given_name),
            "family_name_prefix": ("Last Name", name.family_name_prefix),
            "family_name": ("Last Name", name.family_name),
            "email": ("Email", row.get(plan.email)),
        })
        return RawResult(location=self.context.location(row.file, row.line),
                         scale=scale, result_date=plan.result_date, **cells)
