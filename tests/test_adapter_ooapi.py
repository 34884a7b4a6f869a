"""ooapi: standards.md §C.4's sample from JSON dumps, and the live endpoint (httpx.MockTransport
playing an OOAPI v5 server: paging, embedded persons, Retry-After, auth, failures)."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from mcsync.adapter import AdapterContext, RawResult
from mcsync.errors import InputProblem
from mcsync.record import ResultStatus
from mcsync.testing import block_network, read_adapter
from mcsync_adapters.ooapi import OoapiAdapter, OoapiOptions

DUMP = Path(__file__).parent / "fixtures" / "exports" / "ooapi" / "dump"


def split(items: list[Any]) -> tuple[list[RawResult], list[InputProblem]]:
    return ([i for i in items if isinstance(i, RawResult)], [i for i in items if isinstance(i, InputProblem)])


def read_dump(path: Path, **options: object) -> tuple[list[RawResult], list[InputProblem]]:
    return split(read_adapter(OoapiAdapter, {"path": str(path), **options}, base_dir=path.parent))


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    target = tmp_path / "dump"
    shutil.copytree(DUMP, target)
    return target


# -- dumps ----------------------------------------------------------------------------------------

def test_standards_sample_from_dumps() -> None:
    rows, problems = read_dump(DUMP)
    assert not problems
    associations = str(DUMP / "associations.jsonl")
    assert [(r.location.file, r.location.line) for r in rows] == [(associations, n) for n in (1, 2, 3, 4)]
    assert [(r.student_number, r.course_code, r.grade, r.scale, r.status_hint, r.result_date) for r in rows] == [
        ("2210451", "MC-DATA01", "7.5", "1-10", ResultStatus.PASSED, date(2025, 6, 27)),
        ("2198733", "MC-DATA01", "5.2", "1-10", ResultStatus.FAILED, date(2025, 6, 27)),
        ("2301877", "MC-CIRC02", "pass", "pass-fail", ResultStatus.PASSED, date(2025, 6, 20)),
        ("2245190", "MC-ZORG03", "8.4", "1-10", None, date(2025, 7, 4)),        # pass=unknown
        # line 5: a lecturer; line 6: a result still in progress: neither is a result
    ]
    assert [(r.given_name, r.family_name_prefix, r.family_name, r.email, r.eppn) for r in rows] == [
        ("Sanne", "de", "Vries", "s.devries@student.hz.nl", None),
        ("Mohammed", None, "El Amrani", "m.elamrani@student.hz.nl", None),
        ("Femke", None, "Bakker", "f.bakker@outlook.com", None),
        ("Noëlle", "van der", "Berg", "n.vanderberg@student.hz.nl", "n.vanderberg@hz.nl"),
    ]


def test_course_filter_and_code_type(dump: Path) -> None:
    rows, _ = read_dump(dump, course_codes=["MC-CIRC02"])
    assert [r.student_number for r in rows] == ["2301877"]
    rows, problems = read_dump(dump, student_code_type="employeeNumber")
    assert not rows and len(problems) == 4 and problems[0].location.field == "person.primaryCode"


def test_embedded_person_and_offering(dump: Path) -> None:
    association = {
        "associationId": "x-1", "associationType": "courseOfferingAssociation", "role": "student",
        "state": "associated", "result": {"state": "completed", "pass": "passed", "score": "9", "resultDate": "2025-07-04"},
        "person": {"personId": "p-9", "primaryCode": {"codeType": "studentNumber", "code": "2260001"},
                   "givenName": "Eva", "surname": "Jansen"},
        "offering": {"offeringId": "o-9", "resultValueType": "0-100",
                     "course": {"courseId": "c-9", "primaryCode": {"codeType": "identifier", "code": "MC-EXTRA"}}},
    }
    (dump / "associations-expanded.json").write_text(json.dumps([association], indent=2), encoding="utf-8")
    rows, problems = read_dump(dump)
    assert not problems
    [eva] = [r for r in rows if r.student_number == "2260001"]
    assert (eva.course_code, eva.scale, eva.given_name, eva.location.line) == ("MC-EXTRA", "0-100", "Eva", 2)
    assert eva.location.file.endswith("associations-expanded.json") and len(rows) == 5


def test_reference_and_value_problems(dump: Path) -> None:
    lines = (dump / "associations.jsonl").read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].replace("6f1d2c9a-44b1-4b7e-9d0e-8c1a2b3c4d5e", "unknown-person")
    lines[1] = lines[1].replace('"resultDate":"2025-06-27"', '"resultDate":"27 juni"')
    lines[2] = lines[2].replace("a1c2e3f4-0000-4000-8000-00000000c002", "unknown-offering")
    (dump / "associations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    offerings = (dump / "offerings.json").read_text(encoding="utf-8").replace('"resultValueType":"1-10","startDate":"2025-02-03","endDate":"2025-07-04"',
                                                                              '"resultValueType":"ECTS-grade","startDate":"2025-02-03","endDate":"2025-07-04"')
    (dump / "offerings.json").write_text(offerings, encoding="utf-8")
    rows, problems = read_dump(dump)
    assert not rows
    assert [(p.location.line, p.location.field) for p in problems] == [
        (1, "person"), (2, "result.resultDate"), (3, "offering"), (4, "offering.resultValueType")]
    assert "unknown-person" in problems[0].reason


def test_broken_json_keeps_what_came_before(dump: Path) -> None:
    text = (dump / "associations.jsonl").read_text(encoding="utf-8").splitlines()
    (dump / "associations.jsonl").write_text("\n".join(text[:2]) + '\n{"associationId": "x", "result": {\n', encoding="utf-8")
    rows, [problem] = read_dump(dump)
    assert [r.student_number for r in rows] == ["2210451", "2198733"]
    assert "not a JSON dump" in problem.reason and problem.location.line == 4


def test_dump_without_associations(dump: Path) -> None:
    (dump / "associations.jsonl").unlink()
    rows, [problem] = read_dump(dump)
    assert "no associations" in problem.reason


# -- live -----------------------------------------------------------------------------------------

BASE = "http://127.0.0.1:8765/ooapi/v5"
PERSONS = {
    "p-1": {"personId": "p-1", "primaryCode": {"codeType": "studentNumber", "code": "2210451"},
            "givenName": "Sanne", "surnamePrefix": "de", "surname": "Vries", "mail": "s.devries@student.hz.nl"},
    "p-2": {"personId": "p-2", "primaryCode": {"codeType": "studentNumber", "code": "2198733"},
            "givenName": "Mohammed", "surname": "El Amrani"},
    "p-3": {"personId": "p-3", "primaryCode": {"codeType": "studentNumber", "code": "2301877"},
            "givenName": "Femke", "surname": "Bakker"},
}


def association(n: int, person: Any, score: str, verdict: str, role: str = "student") -> dict[str, Any]:
    return {"associationId": f"a-{n}", "associationType": "courseOfferingAssociation", "role": role,
            "state": "associated", "person": person,
            "result": {"state": "completed", "pass": verdict, "score": score, "resultDate": "2025-06-27"}}


class FakeOoapi:
    """An OOAPI v5 server as the spec describes it: paged collections (pageNumber from 1,
    hasNextPage), persons embedded in offering associations, errors as status codes."""

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.requests: list[httpx.Request] = []
        self.fail: dict[str, list[int]] = {}          # path → status codes to answer first
        self.collections: dict[str, list[dict[str, Any]]] = {
            "/courses": [{"courseId": "c-1", "primaryCode": {"codeType": "identifier", "code": "MC-DATA01"}},
                         {"courseId": "c-2", "primaryCode": {"codeType": "identifier", "code": "MC-CIRC02"}},
                         {"courseId": "c-3", "primaryCode": {"codeType": "identifier", "code": "MC-ZORG03"}}],
            "/courses/c-1/offerings": [{"offeringId": "o-1", "resultExpected": True, "resultValueType": "1-10"}],
            "/courses/c-2/offerings": [{"offeringId": "o-2", "resultExpected": True, "resultValueType": "pass-or-fail"},
                                       {"offeringId": "o-old", "resultExpected": False}],
            "/courses/c-3/offerings": [{"offeringId": "o-3", "resultExpected": True, "resultValueType": "1-10"}],
            "/offerings/o-1/associations": [association(1, PERSONS["p-1"], "7.5", "passed"),
                                            association(2, "p-2", "5.2", "failed"),
                                            association(3, PERSONS["p-3"], "", "unknown"),
                                            association(4, PERSONS["p-3"], "8", "passed", role="lecturer")],
            "/offerings/o-2/associations": [association(5, PERSONS["p-3"], "pass", "passed")],
            "/offerings/o-3/associations": [],
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/ooapi/v5")
        if self.fail.get(path):
            status = self.fail[path].pop(0)
            return httpx.Response(status, headers={"Retry-After": "7"} if status in (429, 503) else {},
                                  json={"status": status})
        if path.startswith("/persons/"):
            person = PERSONS.get(path.rsplit("/", 1)[1])
            return httpx.Response(200, json=person) if person else httpx.Response(404, json={"status": 404})
        if path not in self.collections:
            return httpx.Response(404, json={"status": 404, "title": "not found"})
        items = self.collections[path]
        number = int(request.url.params.get("pageNumber", "1"))
        size = int(request.url.params.get("pageSize", str(self.page_size)))
        size = min(size, self.page_size)
        page = items[(number - 1) * size: number * size]
        return httpx.Response(200, json={"pageSize": size, "pageNumber": number, "hasPreviousPage": number > 1,
                                         "hasNextPage": number * size < len(items), "items": page})


def read_live(server: FakeOoapi, sleeps: list[float] | None = None, **options: Any) -> tuple[list[RawResult], list[InputProblem]]:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    adapter = OoapiAdapter(OoapiOptions.model_validate({"base_url": BASE, **options}),
                           AdapterContext(source="ooapi-live", base_dir=Path(".")),
                           transport=httpx.MockTransport(server), sleep=sleep)
    with block_network() as attempts:    # MockTransport: nothing leaves the process
        items = list(adapter.read())
    assert not attempts
    return split(items)


def test_live_walk_with_paging_and_bearer_token() -> None:
    server = FakeOoapi()
    rows, problems = read_live(server, token="s3cret-token")
    assert not problems
    assert [(r.student_number, r.course_code, r.grade, r.scale, r.status_hint, r.result_date) for r in rows] == [
        ("2210451", "MC-DATA01", "7.5", "1-10", ResultStatus.PASSED, date(2025, 6, 27)),
        ("2198733", "MC-DATA01", "5.2", "1-10", ResultStatus.FAILED, date(2025, 6, 27)),
        ("2301877", "MC-CIRC02", "pass", "pass-fail", ResultStatus.PASSED, date(2025, 6, 27)),
    ]
    assert (rows[0].given_name, rows[0].family_name_prefix, rows[0].family_name) == ("Sanne", "de", "Vries")
    assert rows[0].location.file.startswith(f"{BASE}/offerings/o-1/associations?") and rows[0].location.line == 1
    assert rows[1].family_name == "El Amrani"          # a bare person id, fetched from /persons/p-2
    assert all(r.headers["Authorization"] == "Bearer s3cret-token" for r in server.requests)
    assert all(r.headers["Accept"] == "application/json" for r in server.requests)
    paths = [(r.url.path.removeprefix("/ooapi/v5"), r.url.params.get("pageNumber")) for r in server.requests]
    assert ("/courses", "1") in paths and ("/courses", "2") in paths and ("/courses", "3") not in paths
    assert ("/offerings/o-1/associations", "2") in paths and ("/offerings/o-old/associations", "1") not in paths
    offerings = [r for r in server.requests if r.url.path.endswith("/offerings")]
    assert {r.url.params["since"] for r in offerings} == {"2000-01-01"}
    associations = [r for r in server.requests if r.url.path.endswith("/associations")]
    assert {r.url.params["role"] for r in associations} == {"student"}
    assert [r.url.path for r in server.requests].count("/ooapi/v5/persons/p-2") == 1


def test_live_basic_auth_and_course_filter(tmp_path: Path) -> None:
    server = FakeOoapi()
    secret = tmp_path / "password"
    secret.write_text("pa55word\n", encoding="utf-8")
    rows, problems = read_live(server, username="mcsync", password_file=str(secret), course_codes=["MC-CIRC02"])
    assert [r.student_number for r in rows] == ["2301877"] and not problems
    assert {r.headers["Authorization"] for r in server.requests} == {"Basic bWNzeW5jOnBhNTV3b3Jk"}
    assert not any("/courses/c-1/" in str(r.url) for r in server.requests)


def test_live_retries_honour_retry_after() -> None:
    server = FakeOoapi()
    server.fail["/courses"] = [503, 429]
    sleeps: list[float] = []
    rows, problems = read_live(server, sleeps, retry_wait=0.01)
    assert len(rows) == 3 and not problems
    assert len(sleeps) == 2 and all(seconds >= 7 for seconds in sleeps)


def test_live_endpoint_down_is_one_problem() -> None:
    server = FakeOoapi()
    server.fail["/courses"] = [503] * 10
    sleeps: list[float] = []
    rows, [problem] = read_live(server, sleeps, attempts=3, token="s3cret-token")
    assert not rows and len(sleeps) == 2 and len(server.requests) == 3
    assert "did not answer after 3 tries" in problem.reason and "s3cret" not in str(problem)


def test_live_refused_credentials_stop_the_read() -> None:
    server = FakeOoapi()
    server.fail["/courses/c-1/offerings"] = [401]
    rows, [problem] = read_live(server, token="wrong")
    assert not rows and "refused the credentials (HTTP 401)" in problem.reason
    assert len(server.requests) == 2      # /courses page 1, then the refused call: nothing more


def test_live_missing_resource_is_a_problem_and_the_rest_goes_on() -> None:
    server = FakeOoapi()
    server.fail["/offerings/o-1/associations"] = [404]
    rows, [problem] = read_live(server)
    assert [r.student_number for r in rows] == ["2301877"]
    assert "associations of offering 'o-1': HTTP 404" in problem.reason


def test_options_validation(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not an https:// URL"):
        OoapiOptions(base_url="http://ooapi.example.nl/v5")
    with pytest.raises(ValidationError, match="either path"):
        OoapiOptions(path="dump", base_url="https://ooapi.example.nl/v5")
    with pytest.raises(ValidationError, match="either path"):
        OoapiOptions()
    with pytest.raises(ValidationError, match="not both"):
        OoapiOptions(base_url="https://ooapi.example.nl/v5", token="t", username="u")
    options = OoapiOptions(base_url="https://ooapi.example.nl/v5", token="s3cret-token")
    assert "s3cret" not in repr(options) and "s3cret" not in str(options.model_dump())
