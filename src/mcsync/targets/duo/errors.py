"""What the DUO target does with each answer of the register: the policy, as tables.

The register's contract (duo-register.md) decides every row. Reading down a table tells you what
happens; the target's code only looks actions up, it never reinterprets a status code itself.

HTTP answers to `POST /leveringen` (key: status, `<fout code>`; the first match wins, then the
status alone, then its class):

    202                 SUBMITTED  the register took the delivery; its report comes later
    400 XSD001          SPLIT      schema-invalid, nothing processed: halve it, park a lone culprit
    400 XSD002          SPLIT      more than 1000 records: halve it
    400 (other)         PARK       refused as a whole: park its records with the register's text
    401, 403 (AUT001)   STOP       our certificate or OIN is refused: nothing stored; stop the target
    409 LEV409          BUG        a different body under a known leveringId: log ERROR, park, no re-send
    413                 SPLIT      larger than the register takes: halve it
    429, 503            BACK_OFF   nothing stored: wait Retry-After, send the identical bytes again
    5xx (other)         UNKNOWN    may be stored: send the identical bytes again (idempotent)
    no answer           UNKNOWN    (timeout, cut connection) the same
    4xx (other)         PARK

HTTP answers to `GET /leveringen/{id}` and `GET /resultaten/{recordId}`:

    200                 OK         read it
    404                 NOT_FOUND  delivery: never received (or forgotten); record: not registered
    429, 503            BACK_OFF   wait Retry-After, ask again
    5xx, no answer      UNKNOWN    ask again (a GET changes nothing)
    401, 403, 4xx       STOP       refused: stop the target for this run, the work stays queued

Per record, in a processed report (`regel`): `geaccepteerd` (R000, R301) confirms what was sent;
`afgekeurd` with R900 only is sent again later; R401 on an `<intrekking>` means the register holds
nothing, which is what a withdrawal wants; every other `afgekeurd` code is permanent for that
content and parks the record with the code, the register's text and what to do (`SIGNALS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from .messages import Regel, Signaal


class Action(StrEnum):
    SUBMITTED = "submitted"
    OK = "ok"
    SPLIT = "split"
    PARK = "park"
    BUG = "bug"
    STOP = "stop"
    BACK_OFF = "back_off"
    UNKNOWN = "unknown"
    NOT_FOUND = "not_found"


POST_RULES: dict[tuple[int, str | None], Action] = {
    (202, None): Action.SUBMITTED,
    (400, "XSD001"): Action.SPLIT,
    (400, "XSD002"): Action.SPLIT,
    (400, None): Action.PARK,
    (401, None): Action.STOP,
    (403, None): Action.STOP,
    (409, None): Action.BUG,
    (413, None): Action.SPLIT,
    (429, None): Action.BACK_OFF,
    (503, None): Action.BACK_OFF,
}

GET_RULES: dict[tuple[int, str | None], Action] = {
    (200, None): Action.OK,
    (404, None): Action.NOT_FOUND,
    (429, None): Action.BACK_OFF,
    (503, None): Action.BACK_OFF,
}


def _lookup(rules: dict[tuple[int, str | None], Action], status: int, code: str | None,
            client_error: Action) -> Action:
    if (status, code) in rules:
        return rules[(status, code)]
    if (status, None) in rules:
        return rules[(status, None)]
    if status >= 500:
        return Action.UNKNOWN
    if status >= 400:
        return client_error
    return Action.UNKNOWN  # 1xx/2xx/3xx the contract does not name: treat as no answer


def post_action(status: int, code: str | None = None) -> Action:
    """What to do with the register's answer to POST /leveringen."""
    return _lookup(POST_RULES, status, code, Action.PARK)


def get_action(status: int, code: str | None = None) -> Action:
    """What to do with the register's answer to a GET."""
    return _lookup(GET_RULES, status, code, Action.STOP)


class Outcome(StrEnum):
    ACCEPTED = "accepted"    # the register holds what was sent
    NOT_HELD = "not_held"    # the register holds nothing (R401 on an intrekking): a withdrawal is done
    RETRY = "retry"          # R900: deliver the record again later, in a new delivery
    PARK = "park"            # permanent for this content: a person must look at it


@dataclass(frozen=True)
class SignalRule:
    outcome: Outcome
    hint: str


#: Every signal of the contract, with what it leads to and what a person should do about it.
SIGNALS: dict[str, SignalRule] = {
    "R000": SignalRule(Outcome.ACCEPTED, "accepted"),
    "R001": SignalRule(Outcome.PARK, "the register does not know this learner: check the BSN or "
                                     "onderwijsnummer in the learners directory, then `mcsync retry`"),
    "R002": SignalRule(Outcome.PARK, "correct the BSN in the learners directory; the record then goes by itself"),
    "R101": SignalRule(Outcome.PARK, "the register does not know the unit's RIO code: check the unit in RIO "
                                     "(`mcsync status`, `mcsync failures --target rio`), then `mcsync retry`"),
    "R102": SignalRule(Outcome.PARK, "the register requires the unit's RIO code: enable [targets.rio] so RIO "
                                     "registers the unit; the record then goes by itself"),
    "R201": SignalRule(Outcome.PARK, "a microcredential has 3 to 30 ECTS: correct ects in the mapping file"),
    "R202": SignalRule(Outcome.PARK, "the result date lies in the future: correct it in the source export"),
    "R301": SignalRule(Outcome.ACCEPTED, "identical to what the register holds"),
    "R401": SignalRule(Outcome.NOT_HELD, "the register did not hold the record: nothing to withdraw"),
    "R900": SignalRule(Outcome.RETRY, "a temporary failure at the register: sent again automatically"),
}

_UNKNOWN_SIGNAL = SignalRule(Outcome.PARK, "a signal this mcsync does not know: see the register's documentation, "
                                           "then `mcsync retry`")


def signal_rule(code: str) -> SignalRule:
    return SIGNALS.get(code, _UNKNOWN_SIGNAL)


def regel_outcome(regel: Regel, kind: Literal["resultaat", "intrekking"]) -> tuple[Outcome, tuple[Signaal, ...]]:
    """What one line of a processed report means for its record, and the signals that decide it.

    `geaccepteerd` is accepted whatever its signals. `afgekeurd` parks when any signal is permanent
    (a permanent answer wins over a temporary one), retries when R900 is all there is, and counts
    as done for an intrekking answered with R401 alone.
    """
    if regel.status == "geaccepteerd":
        return Outcome.ACCEPTED, regel.signalen
    permanent = tuple(s for s in regel.signalen
                      if signal_rule(s.code).outcome is Outcome.PARK
                      or (s.code == "R401" and kind == "resultaat")
                      or (signal_rule(s.code).outcome is Outcome.ACCEPTED))  # accepted codes cannot reject
    if permanent or not regel.signalen:
        return Outcome.PARK, permanent or regel.signalen
    if any(s.code == "R900" for s in regel.signalen):
        return Outcome.RETRY, tuple(s for s in regel.signalen if s.code == "R900")
    return Outcome.NOT_HELD, regel.signalen
