"""`moodle-csv` and `moodle-xml`: Moodle's gradebook exports (standards.md §C.3).

**CSV** (`gradeexport_txt`): identity columns as the site shows them (`First name`, `Last name` or
`Surname` in older versions, `ID number`, `Institution`, `Department`, `Email address`), one column
per grade item titled `<Module>: <Item> (<display type>)`, `Course total (Real)` (or `(Percentage)`,
`(Letter)`), `Last downloaded from this course` (a Unix timestamp). A missing grade is `-`.
Taken: `ID number` → student number; option `grade_column` (default `Course total (Real)`; when that
exact column is absent the same item in another display type is used: Real, then Percentage, then
Letter) → grade as found, the display type giving the scale (Real → 1-10, Percentage → 0-100,
Letter → letter) unless option `scale` says otherwise; names with the tussenvoegsel split off the
last name ("de Vries"); course code from option `course_code`, else Moodle's download name
`<course short name> Grades.csv`; date from option `result_date`, else the download timestamp.

**XML** (`grade/export/xml`): `<results batch="xml_export_<unixtime>">` with one
`<result><state/><assignment/><student/><score/><feedback/></result>` per grade; `assignment` is the
grade item's ID number and becomes the course code, `student` the user's ID number. The file comes
from outside, so it is parsed with entity resolution, DTD loading and network access off, and a
document with a DOCTYPE is refused as a whole (that is where XXE and "billion laughs" live; Moodle
never writes one). Parsing streams with `iterparse`, clearing each `<result>` once read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from mcsync.adapter import AdapterContext, GradeScale, RawResult
from mcsync.csvio import CsvFile, CsvRow, UnsafeCell
from mcsync.errors import InputProblem

from ._common import cell_problem, clean_cells, coerce_options, date_from_unix, find_files, is_no_result, row_problem
from ._csvbase import CsvFileAdapter, CsvOptions
from ._names import from_parts

FILE_NAME = re.compile(r"(?P<code>.+?) Grades(?: ?\(\d+\))?\.csv", re.I)
DISPLAY_SCALES: dict[str, GradeScale] = {"real": "1-10", "percentage": "0-100", "letter": "letter"}
DISPLAY_ORDER = ("real", "percentage", "letter")
DOWNLOADED = "Last downloaded from this course"


class MoodleCsvOptions(CsvOptions):
    course_code: str | None = Field(
        default=None, description="course code for every row; default: from the file name "
                                  "'<course short name> Grades.csv'")
    grade_column: str = Field(
        default="Course total (Real)",
        description="the column with the grade; if absent, the same item in another display type "
                    "(Real, Percentage, Letter) is used")
    result_date: date | None = Field(
        default=None, description="result date for every row; default: 'Last downloaded from this course'")
    scale: GradeScale | None = Field(
        default=None, description="grade scale; default: from the display type (Real 1-10, "
                                  "Percentage 0-100, Letter letter)")


def _split_display(column: str) -> tuple[str, str | None]:
    match = re.fullmatch(r"(.*\S)\s*\(([^()]*)\)", column.strip())
    if not match:
        return column.strip(), None
    return match.group(1), match.group(2).strip().casefold()


@dataclass(frozen=True)
class _CsvPlan:
    course_code: str
    grade: int
    grade_name: str
    scale: GradeScale
    result_date: date | None
    downloaded: int | None
    id_number: int
    first: int | None
    last: int | None
    email: int | None


class MoodleCsvAdapter(CsvFileAdapter[_CsvPlan]):
    """Moodle gradebook CSV export → raw results (see the module docstring)."""

    name = "moodle-csv"
    kind = "results"
    Options = MoodleCsvOptions
    options: MoodleCsvOptions

    def _grade_column(self, csv_file: CsvFile) -> int | None:
        header = csv_file.header
        exact = header.index(self.options.grade_column)
        if exact is not None:
            return exact
        wanted, _ = _split_display(self.options.grade_column)
        by_display: dict[str | None, int] = {}
        for position, column in enumerate(header.names):
            base, display = _split_display(column)
            if base.casefold() == wanted.casefold():
                by_display.setdefault(display, position)
        for display in (*DISPLAY_ORDER, *by_display):
            if display in by_display:
                return by_display[display]
        return None

    def prepare(self, csv_file: CsvFile) -> _CsvPlan | InputProblem:
        options, header = self.options, csv_file.header
        missing = csv_file.require("ID number", what="a Moodle grade export")
        grade = self._grade_column(csv_file)
        if missing is not None or grade is None:
            return missing or csv_file.require(options.grade_column, what="the grade")  # type: ignore[return-value]
        match = FILE_NAME.fullmatch(csv_file.path.name)
        course_code = options.course_code or (match.group("code").strip() if match else None)
        if not course_code:
            return csv_file.file_problem(
                "no course code: the file name is not Moodle's '<course> Grades.csv' "
                "and the source has no course_code option",
                hint="set course_code in the source's options, or keep the file name Moodle gave it")
        _, display = _split_display(header.names[grade])
        id_number = header.index("ID number")
        assert id_number is not None  # required above
        return _CsvPlan(
            course_code=course_code, grade=grade, grade_name=header.names[grade],
            scale=options.scale or DISPLAY_SCALES.get(display or "", "1-10"),
            result_date=options.result_date, downloaded=header.index(DOWNLOADED), id_number=id_number,
            first=header.index("First name"),
            last=header.index("Last name") if "Last name" in header else header.index("Surname"),
            email=header.index("Email address"),
        )

    def convert(self, row: CsvRow, plan: _CsvPlan) -> RawResult | InputProblem | None:
        grade = row.get(plan.grade)
        if is_no_result(grade):
            return None
        student = row.get(plan.id_number)
        if student is None:
            return self.problem(row, "ID number", "row has a grade but no ID number (student number)",
                                hint="fill in the user's ID number in Moodle and export again")
        result_date = plan.result_date
        if result_date is None and plan.downloaded is not None and (stamp := row.get(plan.downloaded)):
            try:
                result_date = date_from_unix(stamp)
            except (ValueError, OverflowError, OSError):
                return self.problem(row, DOWNLOADED, "not a Unix timestamp")
        name = from_parts(row.get(plan.first), row.get(plan.last))
        cells = clean_cells({
            "student_number": ("ID number", student),
            "course_code": ("file name", plan.course_code),
            "grade": (plan.grade_name, grade),
            "given_name": ("First name", name.given_name),
            "family_name_prefix": ("Last name", name.family_name_prefix),
            "family_name": ("Last name", name.family_name),
            "email": ("Email address", row.get(plan.email)),
        })
        return RawResult(location=self.context.location(row.file, row.line),
                         scale=plan.scale, result_date=result_date, **cells)


# ---------------------------------------------------------------------------------------------
# XML

class MoodleXmlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the XML export, or a glob such as 'exports/moodle/*.xml'; "
                                  "relative to the config file's folder")
    result_date: date | None = Field(
        default=None, description="result date for every result; default: the export's batch timestamp")
    scale: GradeScale = Field(default="1-10", description="scale of the numeric scores")


BATCH = re.compile(r"xml_export_(\d+)")


def safe_parser_events(source: BinaryIO) -> etree.iterparse:
    """iterparse with everything that reaches outside the document switched off."""
    return etree.iterparse(source, events=("start", "end"), resolve_entities=False, no_network=True,
                           load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True)


class MoodleXmlAdapter:
    """Moodle XML grade export → raw results (see the module docstring)."""

    name: ClassVar[str] = "moodle-xml"
    kind: ClassVar[Literal["results", "learners"]] = "results"
    Options: ClassVar[type[MoodleXmlOptions]] = MoodleXmlOptions

    def __init__(self, options: BaseModel, context: AdapterContext) -> None:
        self.options = coerce_options(options, MoodleXmlOptions)
        self.context = context

    def read(self) -> Iterator[RawResult | InputProblem]:
        files, problem = find_files(self.context, self.options.path)
        if problem is not None:
            yield problem
            return
        for path in files:
            yield from self._read_file(path)

    def _file_problem(self, path: Path, reason: str, line: int | None = None) -> InputProblem:
        return InputProblem(reason, self.context.location(path, line),
                            hint="is this a Moodle XML grade export? export it again")

    def _read_file(self, path: Path) -> Iterator[RawResult | InputProblem]:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed in finally
        except OSError as exc:
            yield self._file_problem(path, f"cannot be opened: {exc.strerror or exc}")
            return
        try:
            root: etree._Element | None = None
            batch_date: date | None = None
            for event, element in safe_parser_events(handle):
                if root is None:
                    root = element
                    if element.getroottree().docinfo.doctype:
                        yield self._file_problem(
                            path, "has a DOCTYPE (a DTD or entity declarations); mcsync refuses those "
                                  "in XML from outside", element.sourceline)
                        return
                    if element.tag != "results":
                        yield self._file_problem(path, f"is not a Moodle grade export: its root element is "
                                                       f"<{str(element.tag)[:40]}>, expected <results>",
                                                 element.sourceline)
                        return
                    stamp = BATCH.fullmatch((element.get("batch") or "").strip())
                    if stamp:
                        try:
                            batch_date = date_from_unix(stamp.group(1))
                        except (ValueError, OverflowError, OSError):
                            batch_date = None
                    continue
                if event != "end" or element.tag != "result" or element.getparent() is not root:
                    continue
                item = self._result(path, element, batch_date)
                if item is not None:
                    yield item
                element.clear()
                while element.getprevious() is not None:
                    del root[0]
            if root is None:
                yield self._file_problem(path, "is empty")
        except etree.XMLSyntaxError as exc:
            message = exc.msg or str(exc)
            yield self._file_problem(path, f"is not well-formed XML: {message}", exc.lineno or None)
        finally:
            handle.close()

    def _result(self, path: Path, element: etree._Element, batch_date: date | None) -> RawResult | InputProblem | None:
        line = element.sourceline
        texts = {tag: (element.findtext(tag) or "").strip() or None
                 for tag in ("state", "assignment", "student", "score")}
        if is_no_result(texts["score"]):
            return None
        for tag, what in (("student", "the user's ID number"), ("assignment", "the grade item's ID number")):
            if texts[tag] is None:
                return row_problem(self.context, path, line, tag, f"<result> has a score but no <{tag}> ({what})")
        try:
            cells = clean_cells({
                "student_number": ("student", texts["student"]),
                "course_code": ("assignment", texts["assignment"]),
                "grade": ("score", texts["score"]),
            })
        except UnsafeCell as exc:
            return cell_problem(self.context, path, line, exc)
        return RawResult(location=self.context.location(path, line), scale=self.options.scale,
                         result_date=self.options.result_date or batch_date, **cells)
