"""Fault injection in front of the simulators (`mcsync.sandbox.base.Faults`): each kind does what it
says to the request (answered or not, applied or not), in-process and over real loopback HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter
from email.utils import parsedate_to_datetime

import httpx
import pytest

from mcsync.cli import build_parser, main
from mcsync.http import parse_retry_after
from mcsync.sandbox import Sandbox
from mcsync.sandbox.base import (
    Faults,
    SandboxServer,
    SimRequest,
    SimResponse,
    mock_transport,
)


class Remote:
    """A remote that applies every request it gets (a write counter) and answers 201."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self._lock = threading.Lock()

    def handle(self, request: SimRequest) -> SimResponse:
        with self._lock:
            self.applied.append(request.path)
        return SimResponse.json(201, {"applied": len(self.applied)})


def client(sim: Remote, faults: Faults, **kwargs) -> httpx.Client:
    return httpx.Client(transport=mock_transport(sim, faults=faults), base_url="http://remote.test", **kwargs)


def test_a_5xx_is_answered_with_retry_after_and_nothing_is_applied():
    sim = Remote()
    with client(sim, Faults(error_rate=1.0, error_status=(500, 502, 503, 504), retry_after="3")) as http:
        answers = [http.post("/write") for _ in range(40)]
    assert {a.status_code for a in answers} == {500, 502, 503, 504}
    assert all(a.headers["Retry-After"] == "3" for a in answers)
    assert sim.applied == []


def test_a_429_asks_to_wait_in_seconds_or_as_an_http_date_and_nothing_is_applied():
    sim = Remote()
    faults = Faults(throttle_rate=1.0, throttle_after=30)
    with client(sim, faults) as http:
        answers = [http.post("/write") for _ in range(40)]
    assert {a.status_code for a in answers} == {429}
    forms = Counter("date" if "GMT" in a.headers["Retry-After"] else "seconds" for a in answers)
    assert forms["date"] > 5 and forms["seconds"] > 5            # both forms of RFC 9110 §10.2.3
    for answer in answers:
        value = answer.headers["Retry-After"]
        if "GMT" in value:
            parsedate_to_datetime(value)                           # a valid HTTP-date
        assert 28 <= parse_retry_after(value) <= 30                # what mcsync's client reads from it
    assert sim.applied == [] and faults.injected == {"throttle": 40}


@pytest.mark.parametrize("applied", [0.0, 1.0])
def test_a_timeout_holds_the_answer_past_the_client_timeout_applied_or_not(applied):
    sim = Remote()
    with client(sim, Faults(timeout_rate=1.0, timeout_hold=5.0, timeout_applied=applied), timeout=1.0) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/write")
    assert sim.applied == (["/write"] if applied else [])


def test_a_hold_shorter_than_the_client_timeout_is_only_a_slow_answer():
    sim = Remote()
    with client(sim, Faults(timeout_rate=1.0, timeout_hold=0.01, timeout_applied=1.0), timeout=5.0) as http:
        assert http.post("/write").status_code == 201
    assert sim.applied == ["/write"]


def test_apply_then_drop_applies_the_write_and_never_answers():
    sim = Remote()
    with client(sim, Faults(drop_rate=1.0)) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/write")
    assert sim.applied == ["/write"]


def test_a_gateway_error_after_the_write_was_applied():
    sim = Remote()
    with client(sim, Faults(gateway_rate=1.0)) as http:
        answer = http.post("/write")
    assert answer.status_code == 502 and "Bad Gateway" in answer.text
    assert sim.applied == ["/write"]


def test_rates_are_shares_of_the_requests_and_the_rest_is_served():
    sim = Remote()
    faults = Faults(error_rate=0.1, throttle_rate=0.1, drop_rate=0.1, gateway_rate=0.1, seed=11)
    outcomes: Counter[str] = Counter()
    with client(sim, faults) as http:
        for _ in range(2000):
            try:
                outcomes[str(http.post("/write").status_code)] += 1
            except httpx.RemoteProtocolError:
                outcomes["dropped"] += 1
    assert {k: round(v / 2000, 1) for k, v in outcomes.items()} == \
        {"503": 0.1, "429": 0.1, "dropped": 0.1, "502": 0.1, "201": 0.6}
    assert sum(faults.injected.values()) == 2000 - outcomes["201"]
    assert len(sim.applied) == outcomes["201"] + outcomes["dropped"] + outcomes["502"]


def test_the_same_seed_gives_the_same_faults_to_the_same_requests():
    def run(seed: int) -> list[str]:
        seen = []
        with client(Remote(), Faults(error_rate=0.2, drop_rate=0.2, throttle_rate=0.2, seed=seed)) as http:
            for _ in range(200):
                try:
                    seen.append(str(http.post("/write").status_code))
                except httpx.RemoteProtocolError:
                    seen.append("dropped")
        return seen

    assert run(7) == run(7)
    assert run(7) != run(8)
    faults = Faults(drop_rate=0.5, seed=3)
    first = [faults.draw()[0] for _ in range(50)]
    faults.reseed(3)
    assert [faults.draw()[0] for _ in range(50)] == first


def test_switched_off_nothing_is_injected_and_on_again_it_is():
    sim = Remote()
    faults = Faults(drop_rate=1.0, latency=30.0)     # off means no latency either: this would hang
    faults.off()
    with client(sim, faults) as http:
        assert http.post("/write").status_code == 201
        faults.on()
        faults.latency = 0.0
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/write")
    assert len(sim.applied) == 2


def test_a_mount_can_have_its_own_faults_and_the_switch_covers_them():
    a, b = Remote(), Remote()
    faults = Faults(mounts={"/b": Faults(drop_rate=1.0)})
    with httpx.Client(transport=mock_transport({"/a": a, "/b": b}, faults=faults), base_url="http://x.test") as http:
        assert http.post("/a/write").status_code == 201
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/b/write")
        faults.off()
        assert http.post("/b/write").status_code == 201
    assert a.applied == ["/write"] and b.applied == ["/write", "/write"]


def test_latency_delays_every_request_and_switched_off_it_does_not():
    sim = Remote()
    faults = Faults(latency=0.05, jitter=0.05)
    with client(sim, faults) as http:
        begin = time.monotonic()
        for _ in range(4):
            http.post("/write")
        assert time.monotonic() - begin >= 4 * 0.05            # a lower bound: never shorter than asked
        faults.latency = 3600.0
        faults.off()
        http.post("/write")                                     # would hang for an hour if it waited
    assert len(sim.applied) == 5


def test_over_real_http_a_timeout_and_a_drop_look_like_the_network_failing():
    sim = Remote()
    faults = Faults(timeout_rate=1.0, timeout_hold=1.0, timeout_applied=1.0)
    with SandboxServer({"/remote": sim}, faults=faults) as server:
        with httpx.Client(base_url=server.url, timeout=0.2) as http:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/remote/write", content=b"x")
            faults.timeout_rate, faults.drop_rate = 0.0, 1.0
            with pytest.raises(httpx.RemoteProtocolError):
                http.post("/remote/write", content=b"x")
            faults.drop_rate, faults.throttle_rate, faults.http_date_share = 0.0, 1.0, 1.0
            answer = http.post("/remote/write", content=b"x")
            assert answer.status_code == 429 and answer.headers["Retry-After"].endswith("GMT")
            faults.off()
            assert http.post("/remote/write", content=b"x").status_code == 201
    assert sim.applied == ["/write", "/write", "/write"]


def test_bad_rates_and_specs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="add up to 1.5"):
        Faults(error_rate=0.9, drop_rate=0.6)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        Faults.parse("explode=0.1")
    with pytest.raises(ValueError, match="not a number"):
        Faults.parse("drop=lots")
    faults = Faults.parse("drop=0.05, error=0.02,throttle=0.03,timeout=0.01,gateway=0.01,latency=0.2,seed=7,"
                          "error_status=502/503")
    assert (faults.drop_rate, faults.error_rate, faults.throttle_rate, faults.timeout_rate, faults.gateway_rate,
            faults.latency, faults.seed, faults.error_status) == (0.05, 0.02, 0.03, 0.01, 0.01, 0.2, 7, (502, 503))


def test_the_sandbox_serves_its_faults_over_the_network_and_in_process():
    faults = Faults(error_rate=1.0, error_status=503)
    sandbox = Sandbox(badgeclasses={"bc": "Badge"}, clients={"c": "s"}, faults=faults).start()
    try:
        for http in (httpx.Client(transport=sandbox.transport(), base_url="http://sandbox.test"),
                     httpx.Client(base_url=sandbox.url)):
            with http:
                faults.on()
                assert http.get("/duo/rmc/v1/resultaten/x").status_code == 503
                faults.off()
                assert http.get("/duo/rmc/v1/resultaten/x").status_code == 404     # the register's own answer
        assert faults.injected == {"error": 2}
    finally:
        sandbox.close()
    slow = Sandbox(badgeclasses={}, clients={}, latency=0.5).start()
    slow.close()
    assert slow.faults is not None and slow.faults.latency == 0.5


def test_mcsync_sandbox_takes_a_fault_spec_and_refuses_a_bad_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["sandbox", "--faults", "drop=0.1,seed=3"])
    assert args.faults == "drop=0.1,seed=3"
    assert main(["sandbox", "--faults", "drop=often"]) == 2
    assert "--faults" in capsys.readouterr().err


def test_a_sandbox_that_never_served_closes_at_once():
    Sandbox(badgeclasses={}, clients={}).close()        # used to wait forever for a server loop
