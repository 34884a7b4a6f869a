"""Mapping files: from a course code and a raw grade to a canonical record.

A mapping file (TOML, interface.md §2) has a `[grading]` table and `[[microcredentials]]` entries.
Loading validates everything up front and reports *all* problems at once, each with the file, the
entry (number and code) and the field, so a person can fix the file in one go.

Grade normalisation (`Grading.judge`), in this order:
1. the institution's codes, compared case-insensitively: `passed`, `failed`, `exempt`, `absent`, `fraud`;
2. a number (decimal comma accepted) on the row's scale:
   "1-10"  passed when >= pass_threshold (5.5 by default, unrounded: 5.5 passes, 5.4 fails);
   "0-100" the same after dividing by 10 (55 passes);
   "0-1" / "pass-fail"  1 passes, 0 fails;
3. anything else is an input problem naming the grade and what was expected.
When the export states its own verdict (`status_hint`: OOAPI `pass`, OneRoster `exempt`) and the
grade says something else, the row is an input problem: we never award on conflicting data.
Only a passed result leads to an award; the other statuses are kept so that a withdrawal can
follow a correction.
"""

from __future__ import annotations

import fnmatch
import tomllib
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .adapter import RawResult
from .errors import ConfigError, InputProblem, Location
from .record import (
    Issuer,
    Learner,
    MicrocredentialDefinition,
    MicrocredentialRecord,
    Provenance,
    Result,
    ResultStatus,
)


class Grading(BaseModel):
    """The `[grading]` table: how this institution writes its results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pass_threshold: Decimal = Field(default=Decimal("5.5"), ge=1, le=10)
    passed: list[str] = ["V", "VLD", "VD", "G", "voldaan", "pass", "passed"]
    failed: list[str] = ["O", "ONV", "NVD", "GGR", "fail", "failed"]
    exempt: list[str] = ["VR"]
    absent: list[str] = ["ND", "NO"]
    fraud: list[str] = ["F", "FR"]

    @field_validator("passed", "failed", "exempt", "absent", "fraud")
    @classmethod
    def _codes(cls, codes: list[str]) -> list[str]:
        return [c.strip() for c in codes if c.strip()]

    _codes_by_text: dict[str, ResultStatus] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index_codes(self) -> Grading:
        for status in ResultStatus:
            for code in getattr(self, status.value):
                key = code.casefold()
                if key in self._codes_by_text and self._codes_by_text[key] is not status:
                    raise ValueError(f"code {code!r} is listed as both "
                                     f"{self._codes_by_text[key].value} and {status.value}")
                self._codes_by_text[key] = status
        return self

    def judge(self, grade: str, scale: str = "1-10",
              hint: ResultStatus | None = None) -> tuple[ResultStatus, Decimal | None]:
        """The status of a raw grade, and its value on the 1–10 scale if it is a number.

        Raises ValueError with a reason a person understands.
        """
        text = grade.strip()
        status: ResultStatus | None = self._codes_by_text.get(text.casefold())
        numeric: Decimal | None = None
        if status is None and text:
            numeric = parse_decimal(text)
            if numeric is None:
                if hint is not None:
                    return hint, None
                known = ", ".join(c for s in ResultStatus for c in getattr(self, s.value))
                raise ValueError(f"grade {text!r} is neither a number nor one of the codes in [grading] ({known})")
            status, numeric = self._judge_number(numeric, scale)
        if status is None:
            if hint is None:
                raise ValueError("the grade is empty")
            return hint, None
        if hint is not None and hint is not status:
            if hint is ResultStatus.EXEMPT:
                return hint, numeric
            raise ValueError(f"grade {text!r} means {status.value}, but the export says {hint.value}")
        return status, numeric

    def _judge_number(self, value: Decimal, scale: str) -> tuple[ResultStatus, Decimal | None]:
        if scale == "1-10":
            if not Decimal(1) <= value <= Decimal(10):
                raise ValueError(f"grade {value} is outside the 1–10 scale")
            return (ResultStatus.PASSED if value >= self.pass_threshold else ResultStatus.FAILED), value
        if scale == "0-100":
            if not Decimal(0) <= value <= Decimal(100):
                raise ValueError(f"score {value} is outside 0–100")
            on_ten = value / 10
            return (ResultStatus.PASSED if on_ten >= self.pass_threshold else ResultStatus.FAILED), on_ten
        if scale in ("0-1", "pass-fail"):
            if value == 1:
                return ResultStatus.PASSED, None
            if value == 0:
                return ResultStatus.FAILED, None
            raise ValueError(f"grade {value} on a pass/fail scale must be 1 or 0")
        raise ValueError(f"grade {value} is a number, but the scale {scale!r} takes codes only")


def parse_decimal(text: str) -> Decimal | None:
    """A number as institutions write it: '7.5', '7,5', ' 8 '. None if it is not a plain number."""
    cleaned = text.strip().replace(",", ".")
    if not cleaned or cleaned.count(".") > 1:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


class MappingFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grading: Grading = Grading()
    ignore_codes: list[str] = Field(
        default_factory=list, description="course codes (glob patterns) that are not microcredentials: skipped silently")
    microcredentials: list[MicrocredentialDefinition] = Field(min_length=1)


@dataclass(frozen=True)
class Mapping:
    """A loaded, validated mapping file."""

    path: Path
    grading: Grading
    definitions: dict[str, MicrocredentialDefinition]   # by code, case-folded
    ignore_codes: tuple[str, ...]

    def definition_for(self, course_code: str) -> MicrocredentialDefinition | None:
        return self.definitions.get(course_code.strip().casefold())

    def ignored(self, course_code: str) -> bool:
        code = course_code.strip()
        return any(fnmatch.fnmatchcase(code.casefold(), pattern.casefold()) for pattern in self.ignore_codes)


def load_mapping(path: Path) -> Mapping:
    """Read and validate a mapping file; ConfigError names file, entry and field of every problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("mapping file not found", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    try:
        parsed = MappingFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, data), file=str(path),
                          hint="fix these entries; nothing is synced with a broken mapping") from None
    definitions: dict[str, MicrocredentialDefinition] = {}
    duplicates = []
    for number, definition in enumerate(parsed.microcredentials, start=1):
        key = definition.code.casefold()
        if key in definitions:
            duplicates.append(f"microcredentials[{number}] ({definition.code}): code is used twice")
        definitions[key] = definition
    if duplicates:
        raise ConfigError("; ".join(duplicates), file=str(path))
    return Mapping(path, parsed.grading, definitions, tuple(parsed.ignore_codes))


def describe_errors(exc: ValidationError, data: dict[str, Any]) -> str:
    """Pydantic errors as 'microcredentials[2] (MC-DATA01) → ects: ...' lines, one per problem."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = []
        if len(loc) >= 2 and loc[0] == "microcredentials" and isinstance(loc[1], int):
            index = loc[1]
            entries = data.get("microcredentials") or []
            code = entries[index].get("code") if index < len(entries) and isinstance(entries[index], dict) else None
            where.append(f"microcredentials[{index + 1}]" + (f" ({code})" if code else ""))
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        lines.append(" → ".join(where + ([field] if field else [])) + f": {message}")
    return "; ".join(lines)


def to_record(raw: RawResult, mapping: Mapping, issuer: Issuer,
              directory: Learner | dict[str, Any] | None, *, today: date | None = None, record_id: uuid.UUID | None = None
              ) -> MicrocredentialRecord | InputProblem | None:
    """Map one raw row: a record, an input problem, or None (no result yet, or an ignored course).
    `record_id`: the row's record id if the caller computed it already (saves computing it twice)."""
    loc = raw.location

    def problem(reason: str, field: str) -> InputProblem:
        return InputProblem(reason, Location(loc.source, loc.file, loc.line, field))

    if raw.grade is None or not raw.grade.strip():
        if raw.status_hint is None:
            return None
    if not raw.student_number or not raw.student_number.strip():
        return problem("no student number", "student_number")
    if not raw.course_code or not raw.course_code.strip():
        return problem("no course code", "course_code")
    definition = mapping.definition_for(raw.course_code)
    if definition is None:
        if mapping.ignored(raw.course_code):
            return None
        return problem(f"course code {raw.course_code.strip()!r} is not a microcredential in {mapping.path.name} "
                       "(add it there, or to ignore_codes)", "course_code")
    try:
        status, numeric = mapping.grading.judge(raw.grade or "", raw.scale, raw.status_hint)
    except ValueError as exc:
        return problem(str(exc), "grade")
    if raw.result_date is None:
        return problem("no result date", "date")
    if raw.result_date > (today or date.today()):
        return problem(f"result date {raw.result_date.isoformat()} lies in the future", "date")
    try:
        learner = Learner(
            student_number=raw.student_number.strip(), given_name=raw.given_name,
            family_name_prefix=raw.family_name_prefix, family_name=raw.family_name,
            email=raw.email or None, eppn=raw.eppn or None).merged_with(directory)
    except ValidationError as exc:
        first = exc.errors()[0]
        return problem(f"learner {first['loc'][0]} {first['msg'].removeprefix('Value error, ')}",
                       str(first["loc"][0]))
    grade_raw = (raw.grade or "").strip() or None
    if grade_raw is not None and len(grade_raw) > 40:
        return problem("grade text is longer than 40 characters", "grade")
    return MicrocredentialRecord.build(
        issuer=issuer, learner=learner, microcredential=definition,
        result=Result(status=status, grade_raw=grade_raw, grade_numeric=numeric,
                      assessment_date=raw.result_date),
        provenance=Provenance(source=loc.source, file=loc.file, line=loc.line), record_id=record_id)
