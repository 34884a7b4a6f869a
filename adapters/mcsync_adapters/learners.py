"""`learners-csv`: personal data from the SIS, joined to results by student number.

LMS exports often lack what the national systems need (date of birth, BSN or onderwijsnummer for
DUO, the tussenvoegsel apart, an eppn for Edubadges). This adapter reads them from a SIS export
with the columns `student_number,bsn,onderwijsnummer,date_of_birth,given_name,family_name_prefix,
family_name,email,eppn` (interface.md §1); option `columns` renames any of them, and only
`student_number` must exist.

Checks, each an `InputProblem` for the row and field: a BSN must be nine digits passing the
"elfproef" (an eight-digit BSN, as Excel leaves it after dropping the leading zero, gets its zero
back); an onderwijsnummer must be nine digits passing its own check (remainder 5); dates are ISO
or `date_format`. Problem texts never contain a BSN, onderwijsnummer or date of birth: they name
the field only, and `LearnerRow` hides them from its repr.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from mcsync.adapter import LearnerRow
from mcsync.csvio import CsvFile, CsvRow
from mcsync.errors import InputProblem, Location
from mcsync.personal_numbers import passes_elfproef, passes_onderwijsnummer_check

from ._common import clean_cells, may_hold_formula, new_learner_row, parse_date
from ._csvbase import CsvFileAdapter, CsvOptions

class LearnerColumns(BaseModel):
    """Column names in the file; the defaults are the documented ones."""

    model_config = ConfigDict(extra="forbid")

    student_number: str = Field(default="student_number", description="column with the student number (required)")
    bsn: str = Field(default="bsn", description="column with the BSN")
    onderwijsnummer: str = Field(default="onderwijsnummer", description="column with the onderwijsnummer")
    date_of_birth: str = Field(default="date_of_birth", description="column with the date of birth")
    given_name: str = Field(default="given_name", description="column with the given name(s)")
    family_name_prefix: str = Field(default="family_name_prefix", description="column with the tussenvoegsel")
    family_name: str = Field(default="family_name", description="column with the family name")
    email: str = Field(default="email", description="column with the e-mail address")
    eppn: str = Field(default="eppn", description="column with the eduPersonPrincipalName")


class LearnersOptions(CsvOptions):
    columns: LearnerColumns = Field(default_factory=LearnerColumns,
                                    description="column names, when the file does not use the standard ones")
    date_format: str | None = Field(
        default=None, description="strptime format of date_of_birth, e.g. '%d-%m-%Y'; ISO dates are always accepted")


@dataclass(frozen=True)
class _Plan:
    file: str                        # the file's path, for row locations
    columns: dict[str, str]          # LearnerRow field → column name, for the columns present
    positions: tuple[tuple[str, int], ...]   # (LearnerRow field, column position) for those columns
    date_formats: tuple[str, ...]


class LearnersCsvAdapter(CsvFileAdapter[_Plan]):
    """SIS personal data → learner rows (see the module docstring)."""

    name = "learners-csv"
    kind = "learners"
    Options = LearnersOptions
    options: LearnersOptions

    def prepare(self, csv_file: CsvFile) -> _Plan | InputProblem:
        mapped = self.options.columns.model_dump()
        missing = csv_file.require(mapped["student_number"], what="a learners file")
        if missing is not None:
            return missing
        header = csv_file.header
        columns = {key: column for key, column in mapped.items() if column in header}
        positions = tuple((key, position) for key, column in columns.items()
                          if (position := header.index(column)) is not None)
        date_format = self.options.date_format
        return _Plan(file=str(csv_file.path), columns=columns, positions=positions,
                     date_formats=(date_format,) if date_format else ())

    def convert(self, row: CsvRow, plan: _Plan) -> LearnerRow | InputProblem | None:
        # The hot path of the benchmark, so it indexes `row.cells` directly instead of `row.get`
        # (csvio hands out only rows with exactly one cell per header column, and every position in
        # the plan is a header column) and makes the Location as `context.location` would, from the
        # path text in the plan.
        columns, cells = plan.columns, row.cells
        values = {key: cells[position].strip() or None for key, position in plan.positions}
        if values["student_number"] is None:
            return self.problem(row, columns["student_number"], "row has no student number")
        bsn = values.pop("bsn", None)
        if bsn is not None:
            bsn = bsn.replace(" ", "").replace(".", "")
            if len(bsn) == 8 and bsn.isdigit():
                bsn = "0" + bsn
            if not passes_elfproef(bsn):
                return self.problem(row, columns["bsn"], "not a valid BSN (nine digits passing the elfproef)",
                                    hint="correct it in the SIS; mcsync never sends an invalid BSN")
        onderwijsnummer = values.pop("onderwijsnummer", None)
        if onderwijsnummer is not None and not passes_onderwijsnummer_check(onderwijsnummer.replace(" ", "")):
            return self.problem(row, columns["onderwijsnummer"], "not a valid onderwijsnummer (nine digits, check 5)")
        birth = values.pop("date_of_birth", None)
        date_of_birth: date | None = None
        if birth is not None:
            try:
                date_of_birth = parse_date(birth, plan.date_formats)
            except ValueError:
                return self.problem(row, columns["date_of_birth"], "not a date"
                                    + (f" in format {self.options.date_format}" if self.options.date_format
                                       else " (YYYY-MM-DD)"))
        if may_hold_formula(values.values()):
            # rare: held to the exact per-cell rule, which raises UnsafeCell naming the column
            values = clean_cells({key: (columns[key], value) for key, value in values.items()})
        student_number = values["student_number"]
        assert student_number is not None  # checked above
        return new_learner_row({
            "location": Location(self.context.source, plan.file, row.line), "student_number": student_number,
            "bsn": bsn, "onderwijsnummer": onderwijsnummer.replace(" ", "") if onderwijsnummer else None,
            "date_of_birth": date_of_birth, "given_name": values.get("given_name"),
            "family_name_prefix": values.get("family_name_prefix"), "family_name": values.get("family_name"),
            "email": values.get("email"), "eppn": values.get("eppn")})
