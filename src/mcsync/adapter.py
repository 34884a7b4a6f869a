"""The adapter interface: how an export becomes a stream of raw result rows.

An adapter is a class registered under the entry point group `mcsync.adapters` (the built-in
ones in `adapters/` register exactly like a third-party package would). It has:

- `name`: its entry point name, e.g. "canvas-csv";
- `kind`: "results" (yields `RawResult`) or "learners" (yields `LearnerRow`);
- `Options`: a pydantic model of its `[sources.options]` table;
- `__init__(options, context)` and `read()`, an iterator over rows.

`read()` streams: it never holds a whole export in memory. It yields one item per row, in file
order, each with its provenance (source, file, line). A row the adapter cannot make sense of is
not raised but yielded as an `InputProblem` (with file, line, field and reason), so one broken row
never stops the others. A file that cannot be read at all (missing columns, wrong format) is
yielded as one `InputProblem` for that file; the adapter then goes on with the next file.
Adapters make no network calls unless that is their purpose (e.g. `ooapi` against a live endpoint).

Raw rows are deliberately close to the export: text as found (stripped), a course code, a raw grade.
Turning them into canonical records (grading rules, the microcredential definition, the learner
directory) is the mapping's job (`mcsync.mapping`), not the adapter's.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .errors import InputProblem, Location
from .record import ResultStatus

GradeScale = Literal["1-10", "0-100", "0-1", "pass-fail", "letter"]


class RawResult(BaseModel):
    """One learner's result for one course as the export states it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    location: Location
    student_number: str | None
    course_code: str | None
    grade: str | None = Field(default=None, description="raw grade text; None = no result yet")
    scale: GradeScale = "1-10"
    status_hint: ResultStatus | None = Field(
        default=None, description="the export's own verdict (OOAPI result.pass, OneRoster exempt)")
    result_date: date | None = None
    given_name: str | None = None
    family_name_prefix: str | None = None
    family_name: str | None = None
    email: str | None = None
    eppn: str | None = None


class LearnerRow(BaseModel):
    """One learner from a SIS personal-data export (joined to results by student number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    location: Location
    student_number: str
    bsn: str | None = None
    onderwijsnummer: str | None = None
    date_of_birth: date | None = None
    given_name: str | None = None
    family_name_prefix: str | None = None
    family_name: str | None = None
    email: str | None = None
    eppn: str | None = None

    def __repr__(self) -> str:  # never show personal numbers
        return f"LearnerRow(student_number={self.student_number!r}, location={self.location})"

    __str__ = __repr__


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter gets from the engine besides its options."""

    source: str           # the [[sources]] name
    base_dir: Path        # relative paths in options are resolved against this (the config's folder)

    def resolve(self, pattern: str) -> list[Path]:
        """The files a path or glob names, sorted; relative to the config's folder."""
        path = Path(pattern).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if glob.has_magic(str(path)):
            return sorted(Path(p) for p in glob.glob(str(path)))
        return [path]

    def location(self, file: Path | str, line: int | None = None, field: str | None = None) -> Location:
        return Location(source=self.source, file=str(file), line=line, field=field)


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class Adapter(Protocol):
    """What the engine needs from an adapter. See the module docstring for the contract."""

    name: ClassVar[str]
    kind: ClassVar[Literal["results", "learners"]]
    Options: ClassVar[type[BaseModel]]

    def __init__(self, options: BaseModel, context: AdapterContext) -> None: ...

    def read(self) -> Iterator[RawResult | LearnerRow | InputProblem]: ...
