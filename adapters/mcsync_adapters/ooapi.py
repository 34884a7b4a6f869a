"""`ooapi`: OOAPI v5 (Open Education API) course results, from JSON dumps or a live endpoint.

A result sits on an association (a student's enrolment in an offering); the student number on the
person, the course code on the course the offering belongs to (standards.md §C.4):

    association.result{state, pass, score, resultDate}
        → association.person  → person.primaryCode.code        (student number)
        → association.offering → offering.course → course.primaryCode.code   (course code)
    offering.resultValueType ('1-10', '0-100', 'pass-or-fail', 'US letter', 'UK letter') → scale

Only a student's (`role`) `courseOfferingAssociation` in state `associated` whose result is
`completed` is a result; `result.pass` passed/failed is the export's own verdict (status hint),
`unknown` leaves the verdict to the mapping. No result, or an empty score with `pass=unknown`,
yields nothing.

**Dumps** (option `path`: a folder, or a glob of files): `*.json`, `*.jsonl`, `*.ndjson`, each
holding collection pages, arrays or single objects (see `_jsonstream`), one kind of object per
file as the API serves them; the kind is told by the id key (`personId`, `courseId`,
`offeringId`, `associationId`). Persons, courses and offerings are indexed first (small
tables); associations stream last, from files whose names start with `association` or that held
associations. Associations may embed their person and offering, as the API's `expand` does.

**Live** (option `base_url`): `GET /courses` → `/courses/{id}/offerings?since=…` (the API's default
is future offerings only, which hold no results) → `/offerings/{id}/associations?role=student`
(persons come embedded, as v5 specifies; a bare person id is fetched once from `/persons/{id}`).
Each collection is paged with `pageNumber`/`pageSize` while `hasNextPage` is true. Requests are
retried (429, 5xx, timeouts; `Retry-After` honoured) with `mcsync.http.retry_async`; credentials
are a bearer token or basic auth, kept as secrets and never logged. Provenance of a live row is
the page's URL and the item's position on that page. A refused login or an endpoint still down
after the retries ends the read with one problem; a missing course or offering is a problem for
that item and the read goes on. `read()` is a plain iterator: the HTTP work runs on a private event
loop in a helper thread, so it works whether or not the caller has a loop of its own.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mcsync.adapter import AdapterContext, GradeScale, RawResult
from mcsync.csvio import UnsafeCell
from mcsync.errors import ConfigError, InputProblem, RetriableError
from mcsync.http import check_url, make_client, parse_retry_after, retry_async
from mcsync.record import ResultStatus

from ._common import cell_problem, clean_cells, coerce_options, find_files, is_no_result, parse_date
from ._jsonstream import JsonStreamError, iter_items

T = TypeVar("T")
DUMP_SUFFIXES = (".json", ".jsonl", ".ndjson")
SCALES: dict[str, GradeScale] = {"1-10": "1-10", "0-100": "0-100", "pass-or-fail": "pass-fail",
                                 "us letter": "letter", "uk letter": "letter"}
VERDICTS = {"passed": ResultStatus.PASSED, "failed": ResultStatus.FAILED}


class OoapiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(default=None, description="folder (or glob) of OOAPI JSON dumps; "
                                                       "give this or base_url")
    base_url: str | None = Field(default=None, description="live OOAPI v5 endpoint, e.g. "
                                                           "'https://ooapi.example.nl/v5'; give this or path")
    token: SecretStr | None = Field(default=None, description="bearer token for base_url (a secret)")
    token_file: Path | None = Field(default=None, description="file holding the bearer token")
    username: str | None = Field(default=None, description="user name for basic auth on base_url")
    password: SecretStr | None = Field(default=None, description="password for basic auth (a secret)")
    password_file: Path | None = Field(default=None, description="file holding the basic-auth password")
    student_code_type: str | None = Field(
        default=None, description="take the student number from the person's code of this codeType "
                                  "(primaryCode or otherCodes), e.g. 'studentNumber'; default: primaryCode")
    course_codes: list[str] = Field(default_factory=list,
                                    description="read only these courses (primaryCode.code); default: all")
    since: date = Field(default=date(2000, 1, 1),
                        description="live: offerings from this date on (OOAPI's own default is future only)")
    page_size: int = Field(default=100, ge=1, le=1000, description="live: items per page")
    timeout: float = Field(default=30.0, gt=0, description="live: seconds per request")
    attempts: int = Field(default=5, ge=1, le=20, description="live: tries per request (429, 5xx, timeouts)")
    retry_wait: float = Field(default=1.0, ge=0, description="live: first back-off in seconds (doubles, with jitter)")

    @field_validator("base_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_url(value, key="base_url")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _one_source(self) -> OoapiOptions:
        if (self.path is None) == (self.base_url is None):
            raise ValueError("give either path (JSON dumps) or base_url (a live endpoint)")
        if (self.token or self.token_file) and (self.username or self.password or self.password_file):
            raise ValueError("give a bearer token or basic auth (username/password), not both")
        if (self.password or self.password_file) and not self.username:
            raise ValueError("password needs username")
        return self


@dataclass(frozen=True, slots=True)
class _Person:
    student_number: str | None
    given_name: str | None
    prefix: str | None
    surname: str | None
    mail: str | None
    eppn: str | None


@dataclass(frozen=True, slots=True)
class _Offering:
    course: str | None               # the course's id, or None when embedded (see course_code)
    course_code: str | None          # when the course was embedded
    value_type: str | None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list | bool):
        return None
    text = str(value).strip()
    return text or None


def _code(entity: dict[str, Any], code_type: str | None = None) -> str | None:
    primary = entity.get("primaryCode")
    if code_type is None:
        return _text(primary.get("code")) if isinstance(primary, dict) else None
    for code in [primary, *(entity.get("otherCodes") or [])]:
        if isinstance(code, dict) and code.get("codeType") == code_type:
            return _text(code.get("code"))
    return None


def _kind(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    for key, kind in (("associationId", "association"), ("offeringId", "offering"), ("personId", "person"),
                      ("courseId", "course")):
        if key in item:
            return kind
    return None


class _HttpFailure(Exception):
    """One resource could not be had (404, 400, not JSON): a problem for it, the read goes on."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


class _Refused(_HttpFailure):
    """The endpoint refused the credentials (401/403): the read stops."""


class _LoopThread:
    """A private asyncio loop in a helper thread, so a plain iterator can await httpx."""

    def __enter__(self) -> _LoopThread:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mcsync-ooapi", daemon=True)
        self.thread.start()
        return self

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


Sleep = Callable[[float], Awaitable[None]]


class OoapiAdapter:
    """OOAPI v5 associations with results → raw results (see the module docstring)."""

    name: ClassVar[str] = "ooapi"
    kind: ClassVar[Literal["results", "learners"]] = "results"
    Options: ClassVar[type[OoapiOptions]] = OoapiOptions

    def __init__(self, options: BaseModel, context: AdapterContext, *,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep | None = None) -> None:
        """`transport` and `sleep` replace the network and the back-off waits in tests."""
        self.options = coerce_options(options, OoapiOptions)
        self.context = context
        self._transport = transport
        self._sleep = sleep
        self._headers = {"Accept": "application/json", **self._auth_header()}

    def _secret(self, value: SecretStr | None, file: Path | None, key: str) -> str | None:
        if value is not None:
            return value.get_secret_value()
        if file is None:
            return None
        path = file if file.is_absolute() else self.context.base_dir / file
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", key=key) from None

    def _auth_header(self) -> dict[str, str]:
        options = self.options
        token = self._secret(options.token, options.token_file, "token_file")
        if token:
            return {"Authorization": f"Bearer {token}"}
        if options.username:
            password = self._secret(options.password, options.password_file, "password_file") or ""
            pair = base64.b64encode(f"{options.username}:{password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {pair}"}
        return {}

    def read(self) -> Iterator[RawResult | InputProblem]:
        if self.options.base_url is not None:
            yield from self._read_live(self.options.base_url)
        else:
            yield from self._read_dumps(self.options.path or "")

    # -- one association → one raw result
    @staticmethod
    def _is_result(association: dict[str, Any]) -> bool:
        """A student's completed course result (everything else is not a result)."""
        result = association.get("result")
        return (association.get("associationType") in (None, "courseOfferingAssociation")
                and association.get("role") in (None, "student")
                and association.get("state") in (None, "associated")
                and isinstance(result, dict) and result.get("state") in (None, "completed"))

    def _person(self, person: dict[str, Any]) -> _Person:
        eppn = next((_text(code.get("code")) for code in person.get("otherCodes") or []
                     if isinstance(code, dict) and str(code.get("codeType", "")).casefold()
                     in ("eppn", "edupersonprincipalname")), None)
        return _Person(_code(person, self.options.student_code_type), _text(person.get("givenName")),
                       _text(person.get("surnamePrefix")), _text(person.get("surname")),
                       _text(person.get("mail")), eppn)

    @staticmethod
    def _offering(offering: dict[str, Any]) -> _Offering:
        course = offering.get("course")
        if isinstance(course, dict):
            return _Offering(None, _code(course), _text(offering.get("resultValueType")))
        return _Offering(_text(course), None, _text(offering.get("resultValueType")))

    def _convert(self, association: dict[str, Any], person: _Person, course_code: str, offering: _Offering,
                 file: str, line: int) -> RawResult | InputProblem | None:
        result: dict[str, Any] = association["result"]
        score = _text(result.get("score"))
        verdict = VERDICTS.get(str(result.get("pass", "")).casefold())
        if is_no_result(score) and verdict is None:
            return None
        location = self.context.location(file, line)
        if person.student_number is None:
            what = f"a {self.options.student_code_type} code" if self.options.student_code_type else "a primaryCode"
            return InputProblem(f"the person has no {what} (student number)",
                                self.context.location(file, line, "person.primaryCode"))
        scale = SCALES.get((offering.value_type or "1-10").casefold())
        if scale is None:
            return InputProblem(f"the offering's resultValueType {offering.value_type!r} is not one of "
                                "1-10, 0-100, pass-or-fail, US letter, UK letter",
                                self.context.location(file, line, "offering.resultValueType"))
        result_date = None
        if date_text := _text(result.get("resultDate")):
            try:
                result_date = parse_date(date_text)
            except ValueError as exc:
                return InputProblem(str(exc), self.context.location(file, line, "result.resultDate"))
        try:
            cells = clean_cells({
                "student_number": ("person.primaryCode", person.student_number),
                "course_code": ("course.primaryCode", course_code),
                "grade": ("result.score", None if is_no_result(score) else score),
                "given_name": ("person.givenName", person.given_name),
                "family_name_prefix": ("person.surnamePrefix", person.prefix),
                "family_name": ("person.surname", person.surname),
                "email": ("person.mail", person.mail),
                "eppn": ("person.otherCodes", person.eppn),
            })
        except UnsafeCell as exc:
            return cell_problem(self.context, file, line, exc)
        return RawResult(location=location, scale=scale, status_hint=verdict, result_date=result_date, **cells)

    # -- dumps
    def _dump_files(self, pattern: str) -> tuple[list[Path], InputProblem | None]:
        found, problem = find_files(self.context, pattern)
        files: list[Path] = []
        for path in found:
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.suffix.casefold() in DUMP_SUFFIXES))
            else:
                files.append(path)
        if not files and problem is None:
            problem = InputProblem("holds no *.json, *.jsonl or *.ndjson dumps", self.context.location(found[0]))
        return files, problem

    def _items(self, path: Path) -> Iterator[tuple[int, Any] | InputProblem]:
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                yield from iter_items(handle)
        except JsonStreamError as exc:
            yield InputProblem(f"is not a JSON dump: {exc.message}", self.context.location(path, exc.line),
                               hint="save the API's answers as they came (pages, arrays or JSON Lines)")
        except UnicodeDecodeError:
            yield InputProblem("is not UTF-8 text (JSON must be)", self.context.location(path))
        except OSError as exc:
            yield InputProblem(f"cannot be read: {exc.strerror or exc}", self.context.location(path))

    def _read_dumps(self, pattern: str) -> Iterator[RawResult | InputProblem]:
        files, problem = self._dump_files(pattern)
        if problem is not None:
            yield problem
            return
        persons: dict[str, _Person] = {}
        offerings: dict[str, _Offering] = {}
        courses: dict[str, str | None] = {}
        wanted = set(self.options.course_codes)
        association_files = [path for path in files if path.name.casefold().startswith("association")]
        for path in files:
            if path in association_files:
                continue
            holds_associations = False
            for entry in self._items(path):
                if isinstance(entry, InputProblem):
                    yield entry
                    continue
                _, item = entry
                kind = _kind(item)
                if kind == "person" and (key := _text(item.get("personId"))):
                    persons[key] = self._person(item)
                elif kind == "course" and (key := _text(item.get("courseId"))):
                    courses[key] = _code(item)
                elif kind == "offering" and (key := _text(item.get("offeringId"))):
                    offerings[key] = self._offering(item)
                elif kind == "association":
                    holds_associations = True
            if holds_associations:
                association_files.append(path)
        if not association_files:
            yield InputProblem("no associations (results) found in the dumps",
                               self.context.location(files[0].parent),
                               hint="dump /offerings/{id}/associations (or /persons/{id}/associations) too")
            return
        for path in association_files:
            for entry in self._items(path):
                if isinstance(entry, InputProblem):
                    yield entry
                    continue
                line, item = entry
                if _kind(item) != "association" or not self._is_result(item):
                    continue
                resolved = self._resolve(item, persons, offerings, courses, path, line)
                if isinstance(resolved, InputProblem):
                    yield resolved
                    continue
                if wanted and resolved[1] not in wanted:
                    continue
                converted = self._convert(item, *resolved, str(path), line)
                if converted is not None:
                    yield converted

    def _resolve(self, association: dict[str, Any], persons: dict[str, _Person], offerings: dict[str, _Offering],
                 courses: dict[str, str | None], path: Path,
                 line: int) -> tuple[_Person, str, _Offering] | InputProblem:
        def problem(field: str, reason: str) -> InputProblem:
            return InputProblem(reason, self.context.location(path, line, field),
                                hint="dump the persons, offerings and courses the associations refer to")

        raw_person = association.get("person")
        person = self._person(raw_person) if isinstance(raw_person, dict) else persons.get(_text(raw_person) or "")
        if person is None:
            return problem("person", f"person {_text(raw_person)!r} is not in the dumps")
        raw_offering = association.get("offering")
        offering = (self._offering(raw_offering) if isinstance(raw_offering, dict)
                    else offerings.get(_text(raw_offering) or ""))
        if offering is None:
            return problem("offering", f"offering {_text(raw_offering)!r} is not in the dumps")
        course_code = offering.course_code or (courses.get(offering.course) if offering.course else None)
        if course_code is None:
            if offering.course is not None and offering.course not in courses:
                return problem("offering.course", f"course {offering.course!r} is not in the dumps")
            return problem("offering.course", "the offering's course has no primaryCode (course code)")
        return person, course_code, offering

    # -- live
    async def _get(self, client: httpx.AsyncClient, path: str, params: dict[str, Any]) -> tuple[str, Any]:
        async def call() -> tuple[str, Any]:
            try:
                response = await client.get(path, params=params)
            except httpx.TimeoutException as exc:
                raise RetriableError(f"GET {path}: timed out") from exc
            except httpx.TransportError as exc:
                raise RetriableError(f"GET {path}: {type(exc).__name__}") from exc
            status, url = response.status_code, str(response.url)
            if status == 429 or status >= 500:
                raise RetriableError(f"GET {path}: HTTP {status}", code=str(status),
                                     retry_after=parse_retry_after(response.headers.get("Retry-After")))
            if status in (401, 403):
                raise _Refused(url, f"the endpoint refused the credentials (HTTP {status})")
            if status >= 400:
                raise _HttpFailure(url, f"HTTP {status}")
            try:
                return url, response.json()
            except ValueError:
                raise _HttpFailure(url, "the answer is not JSON") from None

        return await retry_async(call, attempts=self.options.attempts, initial=self.options.retry_wait,
                                 sleep=self._sleep)

    def _pages(self, loop: _LoopThread, client: httpx.AsyncClient, path: str,
               params: dict[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(page URL, position on the page, item) for every item of a paged collection."""
        number = 1
        while True:
            url, page = loop.run(self._get(client, path, {**params, "pageSize": self.options.page_size,
                                                          "pageNumber": number}))
            items = page.get("items") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise _HttpFailure(url, "the answer is not an OOAPI collection page (no items)")
            for position, item in enumerate(items, start=1):
                if isinstance(item, dict):
                    yield url, position, item
            if not items or page.get("hasNextPage") is not True:
                return
            number += 1

    def _live_person(self, loop: _LoopThread, client: httpx.AsyncClient, raw: Any,
                     cache: dict[str, _Person]) -> _Person:
        if isinstance(raw, dict):
            return self._person(raw)
        person_id = _text(raw) or ""
        if person_id not in cache:
            _, person = loop.run(self._get(client, f"/persons/{quote(person_id, safe='')}", {}))
            if not isinstance(person, dict):
                raise _HttpFailure(f"/persons/{person_id}", "the answer is not a person")
            cache[person_id] = self._person(person)
        return cache[person_id]

    def _read_live(self, base_url: str) -> Iterator[RawResult | InputProblem]:
        with _LoopThread() as loop:
            client = make_client(base_url, timeout=self.options.timeout, transport=self._transport,
                                 headers=self._headers)
            try:
                yield from self._walk(loop, client)
            except _Refused as exc:
                yield InputProblem(exc.reason, self.context.location(exc.url),
                                   hint="check the source's token or username/password")
            except RetriableError as exc:
                yield InputProblem(f"the endpoint did not answer after {self.options.attempts} tries: {exc.message}",
                                   self.context.location(base_url),
                                   hint="nothing was lost: the next run reads the endpoint again")
            finally:
                loop.run(client.aclose())

    def _walk(self, loop: _LoopThread, client: httpx.AsyncClient) -> Generator[RawResult | InputProblem, None, None]:
        wanted = set(self.options.course_codes)
        persons: dict[str, _Person] = {}
        for url, position, course in self._pages(loop, client, "/courses", {}):
            code = _code(course)
            if wanted and code not in wanted:
                continue
            course_id = _text(course.get("courseId"))
            if code is None or course_id is None:
                yield InputProblem("course without courseId or primaryCode", self.context.location(url, position))
                continue
            try:
                yield from self._course(loop, client, course_id, code, persons)
            except _Refused:
                raise
            except _HttpFailure as exc:
                yield InputProblem(f"offerings of course {code!r}: {exc.reason}", self.context.location(exc.url))

    def _course(self, loop: _LoopThread, client: httpx.AsyncClient, course_id: str, code: str,
                persons: dict[str, _Person]) -> Generator[RawResult | InputProblem, None, None]:
        offerings_path = f"/courses/{quote(course_id, safe='')}/offerings"
        for _, _, raw_offering in self._pages(loop, client, offerings_path, {"since": self.options.since.isoformat()}):
            offering_id = _text(raw_offering.get("offeringId"))
            if offering_id is None or raw_offering.get("resultExpected") is False:
                continue
            offering = self._offering(raw_offering)
            associations_path = f"/offerings/{quote(offering_id, safe='')}/associations"
            try:
                for url, position, association in self._pages(loop, client, associations_path, {"role": "student"}):
                    if not self._is_result(association):
                        continue
                    try:
                        person = self._live_person(loop, client, association.get("person"), persons)
                    except _Refused:
                        raise
                    except _HttpFailure as exc:
                        yield InputProblem(f"person of this association: {exc.reason}",
                                           self.context.location(url, position, "person"))
                        continue
                    converted = self._convert(association, person, code, offering, url, position)
                    if converted is not None:
                        yield converted
            except _Refused:
                raise
            except _HttpFailure as exc:
                yield InputProblem(f"associations of offering {offering_id!r}: {exc.reason}",
                                   self.context.location(exc.url))
