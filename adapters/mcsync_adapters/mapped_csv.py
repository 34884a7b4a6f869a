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
from mcsync.errors import InputProblem

from ._common import clean_cells, is_no_result, parse_date
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


@dataclass(frozen=True)
class _Plan:
    columns: dict[str, str]          # RawResult field → column name, for the columns mapped
    positions: dict[str, int]        # RawResult field → column position in this file


class MappedCsvAdapter(CsvFileAdapter[_Plan]):
    """Any CSV of results, through a column map (see the module docstring)."""

    name = "csv"
    kind = "results"
    Options = MappedCsvOptions
    options: MappedCsvOptions

    def skip_lines(self) -> int:
        return self.options.skip_lines

    def prepare(self, csv_file: CsvFile) -> _Plan | InputProblem:
        mapped = {key: column for key, column in self.options.columns.model_dump().items() if column}
        missing = csv_file.require(*mapped.values(), what="the column map")
        if missing is not None:
            return missing
        positions = {key: csv_file.header.index(column) for key, column in mapped.items()}
        return _Plan(columns=mapped, positions={key: pos for key, pos in positions.items() if pos is not None})

    def convert(self, row: CsvRow, plan: _Plan) -> RawResult | InputProblem | None:
        columns, positions, options = plan.columns, plan.positions, self.options
        grade = row.get(positions["grade"])
        if is_no_result(grade, options.no_result):
            return None
        texts = {key: (column, row.get(positions[key])) for key, column in columns.items() if key != "date"}
        if texts["student_number"][1] is None:
            return self.problem(row, columns["student_number"], "row has a grade but no student number")
        if "course_code" in texts and texts["course_code"][1] is None:
            return self.problem(row, columns["course_code"], "row has a grade but no course code")
        result_date = options.result_date
        if "date" in columns and (cell := row.get(positions["date"])):
            try:
                result_date = parse_date(cell, [options.date_format] if options.date_format else [])
            except ValueError as exc:
                return self.problem(row, columns["date"], str(exc))
        if "name" in texts:
            column, whole = texts.pop("name")
            split = from_sortable(whole)
            for key, value in zip(("given_name", "family_name_prefix", "family_name"), split, strict=True):
                texts.setdefault(key, (column, value))
        elif "family_name_prefix" not in columns and "family_name" in columns:
            name = from_parts(None, texts["family_name"][1])
            texts["family_name"] = (columns["family_name"], name.family_name)
            texts["family_name_prefix"] = (columns["family_name"], name.family_name_prefix)
        cells = clean_cells(texts)
        if options.course_code:
            cells["course_code"] = options.course_code
        return RawResult(location=self.context.location(row.file, row.line), scale=options.scale,
                         result_date=result_date, **cells)
