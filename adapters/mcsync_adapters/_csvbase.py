"""The shape shared by the adapters that read one kind of CSV file per `path` glob.

`read()` resolves the glob, opens each file with `mcsync.csvio` (encoding, delimiter, ragged rows,
line numbers), asks the subclass to `prepare` a per-file plan from the header and the file name
(or a problem for the whole file), then turns each row into a result with `convert`. A cell that
breaks csvio's formula rule (`UnsafeCell`) becomes a problem for that row and field.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from mcsync.adapter import AdapterContext, LearnerRow, RawResult
from mcsync.csvio import CsvFile, CsvRow, UnsafeCell, open_csv
from mcsync.errors import InputProblem

from ._common import cell_problem, coerce_options, find_files

Plan = TypeVar("Plan")


class CsvOptions(BaseModel):
    """Options every CSV adapter takes."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the export file, or a glob such as 'exports/lms/*.csv'; "
                                  "relative to the config file's folder")
    delimiter: Literal[",", ";", "\t"] | None = Field(
        default=None, description="column separator; default: detected from the header line")
    encoding: str | None = Field(
        default=None, description="text encoding; default: UTF-8 (with or without BOM), "
                                  "falling back to Windows-1252 (logged)")


class CsvFileAdapter(ABC, Generic[Plan]):
    """Base of the built-in CSV adapters; subclasses set name, Options, prepare() and convert()."""

    name: ClassVar[str]
    kind: ClassVar[Literal["results", "learners"]] = "results"
    Options: ClassVar[type[CsvOptions]] = CsvOptions

    def __init__(self, options: BaseModel, context: AdapterContext) -> None:
        self.options = coerce_options(options, self.Options)
        self.context = context

    def read(self) -> Iterator[RawResult | LearnerRow | InputProblem]:
        files, problem = find_files(self.context, self.options.path)
        if problem is not None:
            yield problem
            return
        for path in files:
            yield from self.read_file(path)

    def read_file(self, path: Path) -> Iterator[RawResult | LearnerRow | InputProblem]:
        with open_csv(path, self.context, delimiter=self.options.delimiter, encoding=self.options.encoding,
                      skip_lines=self.skip_lines()) as csv_file:
            if csv_file.problem is not None:
                yield csv_file.problem
                return
            plan = self.prepare(csv_file)
            if isinstance(plan, InputProblem):
                yield plan
                return
            for row in csv_file.rows():
                if isinstance(row, InputProblem):
                    yield row
                    continue
                try:
                    item = self.convert(row, plan)
                except UnsafeCell as exc:
                    item = cell_problem(self.context, path, row.line, exc)
                if item is not None:
                    yield item

    def skip_lines(self) -> int:
        return 0

    @abstractmethod
    def prepare(self, csv_file: CsvFile) -> Plan | InputProblem:
        """Check the header; what `convert` needs to read each row (column positions), or a problem."""

    @abstractmethod
    def convert(self, row: CsvRow, plan: Plan) -> RawResult | LearnerRow | InputProblem | None:
        """One row: a raw row, a problem, or None when the row holds no result."""

    # helpers for subclasses
    def problem(self, row: CsvRow, field: str | None, reason: str, hint: str | None = None) -> InputProblem:
        return InputProblem(reason, self.context.location(row.file, row.line, field), hint=hint)
