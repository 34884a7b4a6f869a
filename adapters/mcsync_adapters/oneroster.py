"""`oneroster-csv`: a 1EdTech OneRoster 1.2 (or 1.1) CSV export folder (standards.md §C.1).

A result row names a line item and a student by sourcedId; the course code sits three tables
away. The join, for each folder:

1. `manifest.csv` (`propertyName,value`) must list `users`, `courses`, `classes`, `lineItems` and
   `results` as `bulk` (a `delta` lookup table holds only changed rows, so a join would miss
   everyone else; such a folder is reported, not half-read).
2. The four lookup tables are read once into small indexes holding only what the join needs:
   lineItem → (class, score range), class → course, course → `courseCode`, user → (`identifier`,
   names, e-mail, eppn). Rows with `status=tobedeleted` are left out.
3. `results.csv` streams, row by row: result → lineItem → class → course gives the course code,
   result → user gives the student number. Results are never held in memory.

Per result: grade = `textScore` if set, else `score`; scale from the line item's
`resultValueMin/Max` (1–10 → "1-10", 0–100 → "0-100", 0–1 → "0-1"; no range → "1-10"; any other
range is reported, as mcsync could not judge it); `scoreStatus=exempt` → status hint exempt;
`not submitted`, `submitted` and `partially graded` are not (yet) a result and yield nothing;
`scoreDate` → result date. Names: OneRoster has no tussenvoegsel field; Dutch exports put it in
`middleName` (standards.md's fixture: familyName "Vries", middleName "de") or in `familyName`
("de Vries"). Option `middle_name` says what middleName holds (default `auto`: a tussenvoegsel when
it consists of prefix words only, else more given names). An eppn is taken from `userIds` when
one is typed `eppn` (`{eppn:s.devries@hz.nl}`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mcsync.adapter import AdapterContext, GradeScale, RawResult
from mcsync.csvio import CsvRow, UnsafeCell, is_number, parse_decimal, read_csv
from mcsync.errors import InputProblem
from mcsync.record import ResultStatus

from ._common import cell_problem, clean_cells, coerce_options, find_files, is_no_result, parse_date
from ._names import PersonName, from_parts, is_prefix

TABLES = ("users", "courses", "classes", "lineItems", "results")
FINAL_STATUSES = {"fully graded", "exempt", ""}
USER_IDS = re.compile(r"\{\s*([^:{}]+?)\s*:\s*([^{}]*?)\s*\}")
SCALES: dict[tuple[Decimal, Decimal], GradeScale] = {
    (Decimal(1), Decimal(10)): "1-10", (Decimal(0), Decimal(10)): "1-10",
    (Decimal(0), Decimal(100)): "0-100", (Decimal(1), Decimal(100)): "0-100",
    (Decimal(0), Decimal(1)): "0-1",
}


class OneRosterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the export folder (holding manifest.csv), or a glob of such folders; "
                                  "relative to the config file's folder")
    middle_name: Literal["auto", "prefix", "given", "ignore"] = Field(
        default="auto", description="what users.middleName holds: 'prefix' (the tussenvoegsel), 'given' "
                                    "(more given names), 'ignore', or 'auto' (prefix when it is one)")


@dataclass(frozen=True, slots=True)
class _User:
    identifier: str | None
    name: PersonName
    email: str | None
    eppn: str | None
    line: int


@dataclass(frozen=True, slots=True)
class _LineItem:
    class_id: str
    scale: GradeScale | None         # None: a range mcsync cannot judge
    range_text: str


_Indexes = tuple[dict[str, str], dict[str, str], dict[str, _LineItem], dict[str, _User]]


class OneRosterCsvAdapter:
    """OneRoster 1.2 CSV folder → raw results (see the module docstring)."""

    name: ClassVar[str] = "oneroster-csv"
    kind: ClassVar[Literal["results", "learners"]] = "results"
    Options: ClassVar[type[OneRosterOptions]] = OneRosterOptions

    def __init__(self, options: BaseModel, context: AdapterContext) -> None:
        self.options = coerce_options(options, OneRosterOptions)
        self.context = context

    def read(self) -> Iterator[RawResult | InputProblem]:
        folders, problem = find_files(self.context, self.options.path)
        if problem is not None:
            yield problem
            return
        for folder in folders:
            if not folder.is_dir():
                yield InputProblem("is not a folder; a OneRoster CSV export is a folder with manifest.csv",
                                   self.context.location(folder), hint="point `path` at the unzipped export folder")
                continue
            yield from self._read_folder(folder)

    # -- manifest
    def _manifest(self, folder: Path) -> Generator[InputProblem, None, dict[str, str] | None]:
        """Yields the manifest's problems; returns its properties (None when it is unusable)."""
        manifest = folder / "manifest.csv"
        if not manifest.exists():
            yield InputProblem("no manifest.csv: is this a OneRoster CSV export?", self.context.location(folder),
                               hint="point `path` at the unzipped export folder")
            return None
        properties: dict[str, str] = {}
        for row in read_csv(manifest, self.context, required=("propertyName", "value")):
            if isinstance(row, InputProblem):
                yield row
                if row.location.line is None:
                    return None
            elif key := row.get("propertyName"):
                properties[key] = row.get("value") or ""
        return properties

    def _read_folder(self, folder: Path) -> Iterator[RawResult | InputProblem]:
        properties = yield from self._manifest(folder)
        if properties is None:
            return
        location = self.context.location(folder / "manifest.csv")
        for table in TABLES:
            mode = properties.get(f"file.{table}", "").casefold()
            if mode != "bulk" and not (table == "results" and mode == "delta"):
                yield InputProblem(
                    f"manifest says file.{table} is {mode or 'not listed'!r}; mcsync needs {table}.csv as "
                    "'bulk'" + (" (a delta table holds only changed rows, so results cannot be joined)"
                               if mode == "delta" else ""),
                    location, hint="export users, courses, classes, lineItems and results in bulk mode")
                return
        indexes = yield from self._indexes(folder)
        if indexes is None:
            return
        yield from self._results(folder, *indexes)

    # -- lookup tables
    def _indexes(self, folder: Path) -> Generator[InputProblem, None, _Indexes | None]:
        """Yields the lookup tables' problems; returns the indexes (None when a table is unusable)."""
        courses: dict[str, str] = {}
        classes: dict[str, str] = {}
        line_items: dict[str, _LineItem] = {}
        users: dict[str, _User] = {}

        def add_course(row: CsvRow) -> None:
            if (sourced := row.get("sourcedId")) and (code := row.get("courseCode")):
                courses[sourced] = code

        def add_class(row: CsvRow) -> None:
            if (sourced := row.get("sourcedId")) and (course := row.get("courseSourcedId")):
                classes[sourced] = course

        def add_line_item(row: CsvRow) -> None:
            if (sourced := row.get("sourcedId")) and (class_id := row.get("classSourcedId")):
                line_items[sourced] = self._line_item(class_id, row.get("resultValueMin"), row.get("resultValueMax"))

        def add_user(row: CsvRow) -> None:
            if sourced := row.get("sourcedId"):
                users[sourced] = self._user(row)

        tables: tuple[tuple[str, tuple[str, ...], Callable[[CsvRow], None]], ...] = (
            ("courses.csv", ("sourcedId", "courseCode"), add_course),
            ("classes.csv", ("sourcedId", "courseSourcedId"), add_class),
            ("lineItems.csv", ("sourcedId", "classSourcedId"), add_line_item),
            ("users.csv", ("sourcedId", "identifier"), add_user),
        )
        broken = False
        for name, required, add in tables:
            for row in read_csv(folder / name, self.context, required=required):
                if isinstance(row, InputProblem):
                    broken = broken or row.location.line is None
                    yield row
                elif (row.get("status") or "").casefold() != "tobedeleted":
                    add(row)
        if broken:
            return None
        return courses, classes, line_items, users

    @staticmethod
    def _line_item(class_id: str, low: str | None, high: str | None) -> _LineItem:
        if low is None and high is None:
            return _LineItem(class_id, "1-10", "")
        try:
            bounds = (parse_decimal(low or "0"), parse_decimal(high or ""))
        except ValueError:
            return _LineItem(class_id, None, f"{low}-{high}")
        return _LineItem(class_id, SCALES.get(bounds), f"{low or 0}-{high}")

    def _user(self, row: CsvRow) -> _User:
        given, middle, family = row.get("givenName"), row.get("middleName"), row.get("familyName")
        mode = self.options.middle_name
        prefix = None
        if middle and (mode == "prefix" or (mode == "auto" and is_prefix(middle))):
            prefix = middle
        elif middle and mode in ("given", "auto"):
            given = f"{given} {middle}" if given else middle
        eppn = next((value for kind, value in USER_IDS.findall(row.get("userIds") or "")
                     if kind.casefold() in ("eppn", "edupersonprincipalname") and value), None)
        return _User(row.get("identifier"), from_parts(given, family, prefix), row.get("email"), eppn, row.line)

    # -- results
    def _results(self, folder: Path, courses: dict[str, str], classes: dict[str, str],
                 line_items: dict[str, _LineItem], users: dict[str, _User]) -> Iterator[RawResult | InputProblem]:
        path = folder / "results.csv"
        required = ("lineItemSourcedId", "studentSourcedId", "scoreStatus", "score", "scoreDate")
        for row in read_csv(path, self.context, required=required):
            if isinstance(row, InputProblem):
                yield row
                continue
            try:
                item = self._result(row, courses, classes, line_items, users)
            except UnsafeCell as exc:
                item = cell_problem(self.context, path, row.line, exc)
            if item is not None:
                yield item

    def _problem(self, row: CsvRow, field: str, reason: str, hint: str | None = None) -> InputProblem:
        return InputProblem(reason, self.context.location(row.file, row.line, field), hint=hint)

    def _result(self, row: CsvRow, courses: dict[str, str], classes: dict[str, str],
                line_items: dict[str, _LineItem], users: dict[str, _User]) -> RawResult | InputProblem | None:
        if (row.get("status") or "").casefold() == "tobedeleted":
            return None
        status = (row.get("scoreStatus") or "").casefold()
        exempt = status == "exempt"
        grade_column = "textScore" if row.get("textScore") else "score"
        grade = row.get(grade_column)
        if status not in FINAL_STATUSES or (not exempt and is_no_result(grade)):
            return None
        line_item_id = row.get("lineItemSourcedId") or ""
        line_item = line_items.get(line_item_id)
        if line_item is None:
            return self._problem(row, "lineItemSourcedId", f"line item {line_item_id!r} is not in lineItems.csv")
        course_id = classes.get(line_item.class_id)
        if course_id is None:
            return self._problem(row, "lineItemSourcedId",
                                 f"class {line_item.class_id!r} of line item {line_item_id!r} is not in classes.csv")
        course_code = courses.get(course_id)
        if course_code is None:
            return self._problem(row, "lineItemSourcedId", f"course {course_id!r} (via line item "
                                                           f"{line_item_id!r}) is not in courses.csv")
        student_id = row.get("studentSourcedId") or ""
        user = users.get(student_id)
        if user is None:
            return self._problem(row, "studentSourcedId", f"user {student_id!r} is not in users.csv")
        if user.identifier is None:
            return self._problem(row, "studentSourcedId",
                                 f"user {student_id!r} (users.csv line {user.line}) has no identifier (student number)")
        if line_item.scale is None and grade is not None and is_number(grade):
            return self._problem(row, grade_column,
                                 f"line item {line_item_id!r} has score range {line_item.range_text}, "
                                 "which is not 1-10, 0-100 or 0-1",
                                 hint="set the line item's range in the source, or send a textScore")
        result_date = None
        if date_text := row.get("scoreDate"):
            try:
                result_date = parse_date(date_text)
            except ValueError as exc:
                return self._problem(row, "scoreDate", str(exc))
        cells = clean_cells({
            "student_number": ("users.identifier", user.identifier),
            "course_code": ("courses.courseCode", course_code),
            "grade": (grade_column, grade),
            "given_name": ("users.givenName", user.name.given_name),
            "family_name_prefix": ("users.familyName", user.name.family_name_prefix),
            "family_name": ("users.familyName", user.name.family_name),
            "email": ("users.email", user.email),
            "eppn": ("users.userIds", user.eppn),
        })
        return RawResult(location=self.context.location(row.file, row.line), scale=line_item.scale or "1-10",
                         status_hint=ResultStatus.EXEMPT if exempt else None, result_date=result_date, **cells)
