"""Every built-in adapter passes the reusable conformance suite (mcsync.testing) on its sample."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from mcsync_adapters.brightspace import BrightspaceCsvAdapter
from mcsync_adapters.canvas import CanvasCsvAdapter
from mcsync_adapters.learners import LearnersCsvAdapter
from mcsync_adapters.mapped_csv import MappedCsvAdapter
from mcsync_adapters.moodle import MoodleCsvAdapter, MoodleXmlAdapter
from mcsync_adapters.ooapi import OoapiAdapter
from mcsync_adapters.oneroster import OneRosterCsvAdapter

from mcsync.adapter import AdapterContext, RawResult
from mcsync.errors import InputProblem
from mcsync.testing import AdapterConformance

EXPORTS = Path(__file__).parent / "fixtures" / "exports"


class TestOneRosterConformance(AdapterConformance):
    adapter = OneRosterCsvAdapter
    sample = EXPORTS / "oneroster" / "hz-2025"
    stream_file = "results.csv"


class TestCanvasConformance(AdapterConformance):
    adapter = CanvasCsvAdapter
    sample = EXPORTS / "canvas" / "plain" / "2025-06-27T1405_Grades-MC-DATA01.csv"


class TestCanvasLocaleConformance(AdapterConformance):
    adapter = CanvasCsvAdapter
    sample = EXPORTS / "canvas" / "locale" / "2025-07-04T0930_Grades-MC-ZORG03.csv"


class TestMoodleCsvConformance(AdapterConformance):
    adapter = MoodleCsvAdapter
    sample = EXPORTS / "moodle" / "csv" / "MC-DATA01 Grades.csv"


class TestMoodleXmlConformance(AdapterConformance):
    adapter = MoodleXmlAdapter
    sample = EXPORTS / "moodle" / "xml" / "grades.xml"
    header_lines = 2        # the XML declaration and <results>
    footer_lines = 1        # </results>


class TestBrightspaceConformance(AdapterConformance):
    adapter = BrightspaceCsvAdapter
    sample = EXPORTS / "brightspace" / "MC-DATA01_GradesExport_2025-06-27-14-05.csv"


class TestOoapiDumpConformance(AdapterConformance):
    adapter = OoapiAdapter
    sample = EXPORTS / "ooapi" / "dump"
    stream_file = "associations.jsonl"
    header_lines = 0


class TestMappedCsvConformance(AdapterConformance):
    adapter = MappedCsvAdapter
    options = {"date_format": "%d-%m-%Y",
               "columns": {"student_number": "Studentnummer", "name": "Naam", "course_code": "Cursus",
                           "date": "Toetsdatum", "grade": "Resultaat"}}
    sample = EXPORTS / "mapped" / "osiris-resultaten.csv"
    sample_problems = True  # its last row has no student number, on purpose


class TestLearnersConformance(AdapterConformance):
    adapter = LearnersCsvAdapter
    sample = EXPORTS / "learners" / "learners.csv"
    sample_problems = True  # an invalid BSN and an impossible date, on purpose


# ---------------------------------------------------------------------------------------------
# The suite catches what it claims to catch: adapters that break the contract fail it.

class _PathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the file")


class _Slurping:
    """Reads the whole file before the first row: not streaming."""

    name: ClassVar[str] = "slurping"
    kind: ClassVar[Literal["results", "learners"]] = "results"
    Options: ClassVar[type[BaseModel]] = _PathOptions

    def __init__(self, options: _PathOptions, context: AdapterContext) -> None:
        self.path = Path(options.path)
        self.context = context

    def read(self) -> Iterator[RawResult | InputProblem]:
        try:
            lines = self.path.read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            yield InputProblem(f"unreadable: {exc}", self.context.location(self.path))
            return
        if not lines or lines[0] != "student,grade":
            yield InputProblem("wrong columns", self.context.location(self.path))
            return
        for number, line in enumerate(lines[1:], start=2):
            student, grade = line.split(",")
            yield RawResult(location=self.context.location(self.path, number), student_number=student,
                            course_code="X", grade=grade)


class _Raising(_Slurping):
    """Streams, but raises on bytes that are not UTF-8 instead of reporting them."""

    name: ClassVar[str] = "raising"

    def read(self) -> Iterator[RawResult | InputProblem]:
        with open(self.path, encoding="utf-8") as handle:   # missing file and junk raise
            header = handle.readline().strip()
            if header != "student,grade":
                yield InputProblem("wrong columns", self.context.location(self.path, 1))
                return
            for number, line in enumerate(handle, start=2):
                student, grade = line.strip().split(",")
                yield RawResult(location=self.context.location(self.path, number), student_number=student,
                                course_code="X", grade=grade)


class _Calling(_Raising):
    """Streams and reports garbage, but phones home while reading."""

    name: ClassVar[str] = "calling"

    def read(self) -> Iterator[RawResult | InputProblem]:
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=0.1)
        except Exception:  # even a swallowed attempt must be caught by the suite
            pass
        yield from super().read()


@pytest.fixture
def small_sample(tmp_path: Path) -> Path:
    sample = tmp_path / "sample" / "grades.csv"
    sample.parent.mkdir()
    sample.write_text("student,grade\n2210451,7.5\n2198733,5.2\n", encoding="utf-8")
    return sample


def _suite(adapter_class: type, sample: Path) -> AdapterConformance:
    suite = type("Suite", (AdapterConformance,), {"adapter": adapter_class, "sample": sample,
                                                  "first_row_timeout": 1.0})
    return suite()


def test_suite_catches_an_adapter_that_reads_the_whole_file_first(small_sample: Path, tmp_path: Path) -> None:
    suite = _suite(_Slurping, small_sample)
    suite.test_reads_the_sample()                       # it does read the sample right...
    with pytest.raises(AssertionError, match="whole\\s+file first"):
        suite.test_streams_first_row_before_the_file_ends(tmp_path / "stream")
    _suite(_Raising, small_sample).test_streams_first_row_before_the_file_ends(tmp_path / "ok")


def test_suite_catches_exceptions_on_garbage(small_sample: Path, tmp_path: Path) -> None:
    suite = _suite(_Raising, small_sample)
    with pytest.raises(UnicodeDecodeError):
        suite.test_garbage_gives_problems_not_exceptions(tmp_path / "junk", "binary junk")
    with pytest.raises(FileNotFoundError):
        suite.test_missing_path_is_a_problem(tmp_path / "missing")


def test_suite_catches_network_access(small_sample: Path) -> None:
    with pytest.raises(AssertionError, match="network"):
        _suite(_Calling, small_sample).test_reads_the_sample()


def test_suite_catches_undocumented_options(small_sample: Path) -> None:
    class Bare(_Slurping):
        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            path: str

    with pytest.raises(AssertionError, match="without a description"):
        _suite(Bare, small_sample).test_declares_name_kind_and_options()
