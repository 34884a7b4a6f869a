"""`csv`: any CSV of results, read through a column map (Osiris, SAP SLcM and home-grown exports).

Osiris and SAP SLcM have no public export format (standards.md §C.5): each institution builds its
own. This adapter reads any such file given which column holds what:

    [sources.options]
    path = "exports/osiris/resultaten-*.csv"
    date_format = "%d-%m-%Y"
    [sources.options.columns]
    student_number = "Studentnummer"
    course_code = "Cursus"
    grade = "Resultaat"
    date = "Toetsdatum"
    family_name = "Achternaam"

`course_code` may instead be one fixed code for the whole file (option `course_code`), and `date`
a fixed `result_date`. Dates are ISO (`2025-06-27`) or in `date_format`. Grades are kept as found;
cells listed in `no_result` (besides empty and `-`) mean "no result yet" and yield nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcsync.adapter import GradeScale, RawResult
from mcsync.csvio import CsvFile, CsvRow
from mcsync.errors import InputProblem, Location

from ._common import (
    clean_cells,
    may_hold_formula,
    new_raw_result,
    no_result_values,
    parse_date,
)
from ._csvbase import CsvFileAdapter, CsvOptions
from ._names import from_parts, from_sortable


class ResultColumns(BaseModel):
    """Which column holds what; only student_number and grade are required."""

    model_config = ConfigDict(extra="forbid")

    student_number: str = Field(description="column with the student number")
    grade: str = Field(description="column with the grade or result code")
    course_code: str | None = Field(default=None, description="column with the course code")
    date: str | None = Field(default=None, description="column with the result date")
    given_name: str | None = Field(default=None, description="column with the given name(s)")
    family_name_prefix: str | None = Field(default=None, description="column with the tussenvoegsel")
    family_name: str | None = Field(
        default=None, description="column with the family name; a lower-case prefix ('de Vries') "
                                  "is split off when there is no family_name_prefix column")
    name: str | None = Field(
        default=None, description="column with the whole name ('Vries, Sanne de' or 'Sanne de Vries'), "
                                  "split into given name, prefix and family name; for files without "
                                  "separate name columns")
    email: str | None = Field(default=None, description="column with the e-mail address")
    eppn: str | None = Field(default=None, description="column with the eduPersonPrincipalName")


class MappedCsvOptions(CsvOptions):
    columns: ResultColumns = Field(description="the column map: which column holds what")
    course_code: str | None = Field(
        default=None, description="one course code for every row, when the file has no course column")
    result_date: date | None = Field(
        default=None, description="one result date for every row, when the file has no date column")
    date_format: str | None = Field(
        default=None, description="strptime format of the date column, e.g. '%d-%m-%Y'; ISO dates "
                                  "(YYYY-MM-DD) are always accepted")
    scale: GradeScale = Field(default="1-10", description="scale of the grades")
    no_result: list[str] = Field(
        default_factory=list, description="cell values that mean 'no result yet', besides empty and '-'")
    skip_lines: int = Field(default=0, ge=0, description="lines before the header to skip (a title, say)")

    @model_validator(mode="after")
    def _course_code_source(self) -> MappedCsvOptions:
        if bool(self.columns.course_code) == bool(self.course_code):
            raise ValueError("give either columns.course_code (a column) or course_code (one code "
                             "for the whole file), not both and not neither")
        return self


NAME_PARTS = ("given_name", "family_name_prefix", "family_name")


@dataclass(frozen=True)
class _Plan:
    file: str                        # the file's path, for row locations
    columns: dict[str, str]          # RawResult field → column name, for the columns mapped
    grade: int                       # positions in this file of the grade column...
    date: int | None                 # ...and of the date column, if mapped
    texts: tuple[tuple[str, int], ...]   # (field, position) of every mapped column but the date
    sources: dict[str, str]          # RawResult text field → the column it comes from
    no_result: frozenset[str]        # grade cells (stripped, casefolded) that mean "no result yet"
    date_formats: tuple[str, ...]
    split_family_name: bool          # a family_name column and no family_name_prefix column


class MappedCsvAdapter(CsvFileAdapter[_Plan]):
    """Any CSV of results, through a column map (see the module docstring)."""

    name = "csv"
    kind = "results"
    Options = MappedCsvOptions
    options: MappedCsvOptions

    def skip_lines(self) -> int:
        return self.options.skip_lines

    def prepare(self, csv_file: CsvFile) -> _Plan | InputProblem:
        options = self.options
        mapped = {key: column for key, column in options.columns.model_dump().items() if column}
        missing = csv_file.require(*mapped.values(), what="the column map")
        if missing is not None:
            return missing
        positions = {key: position for key, column in mapped.items()
                     if (position := csv_file.header.index(column)) is not None}   # all, checked above
        split_family_name = "family_name" in mapped and "family_name_prefix" not in mapped
        sources = dict(mapped)
        if "name" in mapped:             # name parts not mapped to columns of their own
            sources.update((key, mapped["name"]) for key in NAME_PARTS if key not in mapped)
        elif split_family_name:
            sources["family_name_prefix"] = mapped["family_name"]
        return _Plan(file=str(csv_file.path), columns=mapped, grade=positions["grade"], date=positions.get("date"),
                     texts=tuple((key, position) for key, position in positions.items() if key != "date"),
                     sources=sources, no_result=no_result_values(options.no_result),
                     date_formats=(options.date_format,) if options.date_format else (),
                     split_family_name=split_family_name)

    def convert(self, row: CsvRow, plan: _Plan) -> RawResult | InputProblem | None:
        # The hot path of the benchmark, so it indexes `row.cells` directly instead of `row.get`
        # (csvio hands out only rows with exactly one cell per header column, and every position in
        # the plan is a header column) and makes the Location as `context.location` would, from the
        # path text in the plan.
        columns, options, cells = plan.columns, self.options, row.cells
        if cells[plan.grade].strip().casefold() in plan.no_result:
            return None
        texts = {key: cells[position].strip() or None for key, position in plan.texts}
        if texts["student_number"] is None:
            return self.problem(row, columns["student_number"], "row has a grade but no student number")
        if "course_code" in texts and texts["course_code"] is None:
            return self.problem(row, columns["course_code"], "row has a grade but no course code")
        result_date = options.result_date
        if plan.date is not None and (cell := cells[plan.date].strip()):
            try:
                result_date = parse_date(cell, plan.date_formats)
            except ValueError as exc:
                return self.problem(row, columns["date"], str(exc))
        if "name" in texts:
            whole = texts.pop("name")
            for key, value in zip(NAME_PARTS, from_sortable(whole), strict=True):
                texts.setdefault(key, value)
        elif plan.split_family_name:
            name = from_parts(None, texts["family_name"])
            texts["family_name"] = name.family_name
            texts["family_name_prefix"] = name.family_name_prefix
        if may_hold_formula(texts.values()):
            # rare: held to the exact per-cell rule, which raises UnsafeCell naming the column
            texts = clean_cells({key: (plan.sources[key], value) for key, value in texts.items()})
        if options.course_code:
            texts["course_code"] = options.course_code
        return new_raw_result({"location": Location(self.context.source, plan.file, row.line),
                               "scale": options.scale, "result_date": result_date, **texts})
