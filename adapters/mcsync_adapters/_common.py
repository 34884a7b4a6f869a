"""Small pieces every built-in adapter uses: finding files, "no result" values, dates, clean cells."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypedDict, TypeVar, cast

from pydantic import BaseModel
from zoneinfo import ZoneInfo

from mcsync.adapter import AdapterContext, LearnerRow, RawResult
from mcsync.csvio import FORMULA_PREFIXES, UnsafeCell, safe_grade, safe_text
from mcsync.errors import InputProblem

#: Cells that mean "no result (yet)": empty, Moodle's "-", Canvas's EX (excused) and N/A
#: (not assigned), OneRoster's "not submitted". Such rows yield nothing: they are not problems.
NO_RESULT = frozenset({"", "-", "ex", "n/a", "not submitted"})

TIMEZONE = ZoneInfo("Europe/Amsterdam")
Options = TypeVar("Options", bound=BaseModel)


def coerce_options(options: BaseModel | Mapping[str, object], model: type[Options]) -> Options:
    """The adapter's own options model (the engine passes it; tests may pass a dict)."""
    if isinstance(options, model):
        return options
    return model.model_validate(options.model_dump() if isinstance(options, BaseModel) else options)


def is_no_result(text: str | None, extra: Sequence[str] = ()) -> bool:
    if text is None:
        return True
    value = text.strip().casefold()
    return value in NO_RESULT or (bool(extra) and value in no_result_values(extra))


def no_result_values(extra: Sequence[str] = ()) -> frozenset[str]:
    """Every cell value (stripped, casefolded) that means "no result": NO_RESULT and `extra`."""
    return NO_RESULT | {item.strip().casefold() for item in extra}


def find_files(context: AdapterContext, pattern: str) -> tuple[list[Path], InputProblem | None]:
    """The files a path or glob names; a problem when there are none (a source that reads
    nothing is almost always a wrong path, not an empty export)."""
    files = [path for path in context.resolve(pattern) if path.exists()]
    if files:
        return files, None
    where = context.base_dir / pattern if not Path(pattern).is_absolute() else Path(pattern)
    return [], InputProblem(f"no files match {pattern!r}", context.location(where),
                            hint="check the source's `path` option (relative paths start at the config's folder)")


_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?")


def parse_date(text: str, formats: Sequence[str] = ()) -> date:
    """An ISO date (or the date of an ISO date-time), else the first of `formats` that fits."""
    value = text.strip()
    if len(value) == 10 and value[4] == "-" and value[7] == "-":
        # Fast path for the usual plain date (2025-06-27): one C call. Of the forms
        # date.fromisoformat reads, only YYYY-MM-DD has its dashes at these places (not
        # 2025-W26-5); what it refuses, with the error message, is left to the pattern below.
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    match = _ISO_DATE.fullmatch(value)
    if match:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    for fmt in formats:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise ValueError("not a date" + (f" in format {', '.join(formats)}" if formats else " (YYYY-MM-DD)"))


def date_from_unix(text: str) -> date:
    """The Dutch calendar date of a Unix timestamp (Moodle writes those)."""
    return datetime.fromtimestamp(int(text.strip()), TIMEZONE).date()


class TextFields(TypedDict, total=False):
    """The text fields of RawResult and LearnerRow that come straight from cells."""

    student_number: str | None
    course_code: str | None
    grade: str | None
    given_name: str | None
    family_name_prefix: str | None
    family_name: str | None
    email: str | None
    eppn: str | None


def clean_cells(values: Mapping[str, tuple[str, str | None]]) -> TextFields:
    """RawResult text fields from (column, cell) pairs, held to csvio's formula rule.

    The key "grade" is a grade (numbers kept as found); every other key is text. Raises
    UnsafeCell naming the column.
    """
    cleaned: dict[str, str | None] = {}
    for key, (column, value) in values.items():
        if value is not None:
            value = value.strip() or None
            # What safe_grade/safe_text do, without calling them for the (usual) value that does
            # not start like a formula: for such a value both return it stripped, or None if empty.
            if value is not None and value.startswith(FORMULA_PREFIXES):
                value = safe_grade(value, column=column) if key == "grade" else safe_text(value, column=column)
        cleaned[key] = value
    return cast(TextFields, cleaned)


#: The characters a spreadsheet formula starts with (csvio.FORMULA_PREFIXES).
_FORMULA_STARTS = frozenset(prefix[0] for prefix in FORMULA_PREFIXES)


def may_hold_formula(values: Iterable[str | None]) -> bool:
    """False when none of the (stripped) values starts like a spreadsheet formula.

    The fast test for a whole row, one character per value. When it says True, hold the values
    to the exact per-cell rule (`clean_cells`), which decides and names the column.
    """
    for value in values:
        if value and value[0] in _FORMULA_STARTS:
            return True
    return False


def new_raw_result(fields: dict[str, Any]) -> RawResult:
    """`RawResult(**fields)`, for adapters that make one per row of a big export.

    The model's own pydantic validator, called directly: the same validation (same errors) and
    an equal object, but about 0.8 µs per row faster than the constructor, which validates into
    an instance it made beforehand. Elsewhere, use the constructor.
    """
    return cast(RawResult, RawResult.__pydantic_validator__.validate_python(fields))


def new_learner_row(fields: dict[str, Any]) -> LearnerRow:
    """`LearnerRow(**fields)`, made as `new_raw_result` makes a RawResult (and as fast)."""
    return cast(LearnerRow, LearnerRow.__pydantic_validator__.validate_python(fields))


def cell_problem(context: AdapterContext, file: Path | str, line: int | None, exc: UnsafeCell) -> InputProblem:
    return InputProblem(exc.reason, context.location(file, line, exc.column),
                        hint="correct the cell in the source system and export again")


def row_problem(context: AdapterContext, file: Path | str, line: int | None, field: str | None,
                reason: str, hint: str | None = None) -> InputProblem:
    return InputProblem(reason, context.location(file, line, field), hint=hint)
