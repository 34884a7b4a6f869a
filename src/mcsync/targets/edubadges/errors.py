"""How Edubadges answers go wrong, as a table: (status, body shape, text) → error class.

Edubadges answers 400 for almost everything, even for transient trouble upstream (edubadges-api.md §4),
so the status alone decides little. Its bodies come in three shapes, plus DRF's own:

    FIELD_ERRORS  {"detail": "validation_error", "fields": {"error_message": {field: [{error_code, error_message}],
                   "direct_awards": [{}, {"eppn": [...]}]}, "error_code": 999}}      serializer validation
    BUSINESS      {"detail": "validation_error", "fields": {"error_message": "text", "error_code": 100}}
    ERROR         {"error": "<str(exception)>"}     any other exception on a JSON request (ExceptionHandlerMiddleware)
    DETAIL        {"detail": "text"}                DRF: 403 authentication, 404, 405, 415
    OTHER         empty, HTML (a non-JSON request that failed, a proxy page), anything else

`RULES` is read top to bottom; the first row whose status, shape and pattern fit decides. Its `error`
column is the mcsync error class, so the policy follows (see mcsync.errors): PermanentError parks the
item, RetriableError is retried with back-off, AuthError renews the token once, TargetUnavailable stops
the target for this run, UnknownOutcome leaves the items in_flight for a lookup. `on_create` overrides
`error` when the failed call was a create the server may have applied (a gateway that gave up while
Edubadges went on): such a call must never be retried blindly. Every 400 on a create is safe to take
as "nothing created": Edubadges creates a bundle in one atomic transaction, and every error raised in
it rolls the whole bundle back.

`meaning` tells the target which answers need more than parking: the per-award field errors of a
bundle, "No valid DirectAwards are created" (inspect each rejection), "already exists" (the learner
already has an unclaimed award: look it up instead of failing), "already deleted/revoked" (done).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from ...errors import AuthError, DeliveryError, PermanentError, RetriableError, TargetUnavailable, UnknownOutcome


class Shape(StrEnum):
    FIELD_ERRORS = "field_errors"
    BUSINESS = "business"
    ERROR = "error"
    DETAIL = "detail"
    OTHER = "other"


class Meaning(StrEnum):
    CREDENTIALS_REFUSED = "credentials_refused"
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    SERVER_ERROR = "server_error"
    CLIENT_NOT_LINKED = "client_not_linked"
    TRANSIENT = "transient"
    INVALID = "invalid"                    # field errors: per award or for the whole bundle
    ALL_REJECTED = "all_rejected"          # "No valid DirectAwards are created/deleted. All of them were rejected: [...]"
    ALREADY_OFFERED = "already_offered"    # an Unaccepted award with this eppn and badge class exists
    ALREADY_DONE = "already_done"          # already deleted / already revoked
    NOT_FOUND = "not_found"
    REFUSED = "refused"                    # permissions, direct awarding disabled, draft or archived badge class
    BAD_REQUEST = "bad_request"


@dataclass(frozen=True)
class Rule:
    statuses: frozenset[int]
    shape: Shape | None                    # None: any shape
    pattern: re.Pattern[str] | None        # searched in the body's text; None: any text
    meaning: Meaning
    error: type[DeliveryError]
    on_create: type[DeliveryError] | None = None
    hint: str | None = None


def _codes(*spec: int | range) -> frozenset[int]:
    found: set[int] = set()
    for item in spec:
        found.update(item if isinstance(item, range) else (item,))
    return frozenset(found)


def _text(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_TRANSIENT = _text(r"timed? ?out|timeout|connection|connectionpool|max retries exceeded|temporar|"
                   r"unavailable|deadlock|lost connection|too many connections|try again")
_4XX = _codes(range(400, 500))
_5XX = _codes(range(500, 600))

RULES: tuple[Rule, ...] = (
    Rule(_codes(401, 403), None, None, Meaning.CREDENTIALS_REFUSED, AuthError,
         hint="mcsync renews the token once; if Edubadges still refuses it, ask SURF to link the client id "
              "to the institution (manage_client_id, sis_integration_enabled)"),
    Rule(_codes(429), None, None, Meaning.THROTTLED, RetriableError),
    Rule(_codes(503), None, None, Meaning.UNAVAILABLE, RetriableError),
    Rule(_5XX, None, None, Meaning.SERVER_ERROR, RetriableError, on_create=UnknownOutcome),
    Rule(_codes(400), Shape.FIELD_ERRORS, None, Meaning.INVALID, PermanentError,
         hint="correct the field Edubadges names, then `mcsync retry`"),
    Rule(_codes(400), Shape.BUSINESS, None, Meaning.REFUSED, PermanentError,
         hint="Edubadges refused the request: check the client's permissions on the badge class with SURF"),
    Rule(_codes(400), Shape.ERROR, _text(r"^No valid DirectAwards are"), Meaning.ALL_REJECTED, PermanentError),
    Rule(_codes(400), Shape.ERROR, _text(r"already exists for badgeclass"), Meaning.ALREADY_OFFERED,
         PermanentError),
    Rule(_codes(400), Shape.ERROR, _text(r"already (been )?(deleted|revoked)"), Meaning.ALREADY_DONE,
         PermanentError),
    Rule(_codes(400), Shape.ERROR, _text(r"manage_client_id|sis_integration_enabled"), Meaning.CLIENT_NOT_LINKED,
         TargetUnavailable,
         hint="ask SURF to set the client id as the institution's manage_client_id and enable SIS integration"),
    Rule(_codes(400), Shape.ERROR, _TRANSIENT, Meaning.TRANSIENT, RetriableError),
    Rule(_codes(400), Shape.ERROR, _text(r"does not exist|matching query"), Meaning.NOT_FOUND, PermanentError,
         hint="Edubadges does not know what was named: for a badge class check edubadges.badgeclass in the "
              "mapping file, for an award look the learner up in Edubadges"),
    Rule(_codes(400), Shape.ERROR, _text(r"disabled|not published|archived|permission"), Meaning.REFUSED,
         PermanentError,
         hint="the badge class does not accept direct awards: publish it or enable direct awarding in "
              "Edubadges, or map the microcredential to another badge class"),
    Rule(_codes(404), None, None, Meaning.NOT_FOUND, PermanentError),
    Rule(_4XX, None, None, Meaning.BAD_REQUEST, PermanentError,
         hint="Edubadges refused the request as sent; report it with the text above"),
)


class EdubadgesRejection(PermanentError):
    """A permanent refusal, with what the target needs to treat it award by award."""

    def __init__(self, message: str, *, meaning: Meaning, status: int, code: str | None = None,
                 remote_text: str = "", field_errors: Mapping[str, Any] | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, code=code, hint=hint)
        self.meaning = meaning
        self.status = status
        self.remote_text = remote_text or message     # Edubadges' own words, as it sent them
        self.field_errors: Mapping[str, Any] = field_errors or {}


@dataclass(frozen=True)
class Body:
    """A response body, sorted into one of the shapes."""

    shape: Shape
    text: str                                  # the message a person reads
    code: str | None = None                    # Edubadges' error_code, if any
    field_errors: Mapping[str, Any] | None = None

    @classmethod
    def read(cls, content: bytes) -> Body:
        try:
            data = json.loads(content.decode("utf-8")) if content else None
        except (UnicodeDecodeError, ValueError):
            data = None
        if isinstance(data, dict):
            fields = data.get("fields")
            if isinstance(fields, dict) and "error_message" in fields:
                message = fields["error_message"]
                code = str(fields["error_code"]) if fields.get("error_code") is not None else None
                if isinstance(message, dict):
                    return cls(Shape.FIELD_ERRORS, describe_field_errors(message), code, message)
                return cls(Shape.BUSINESS, str(message), code)
            if isinstance(data.get("error"), str):
                return cls(Shape.ERROR, data["error"])
            if isinstance(data.get("detail"), str):
                return cls(Shape.DETAIL, data["detail"])
            return cls(Shape.OTHER, json.dumps(data)[:500])
        text = content.decode("utf-8", "replace").strip()
        return cls(Shape.OTHER, re.sub(r"<[^>]+>", " ", text)[:300].strip() or "(empty body)")


def describe_field_errors(errors: Mapping[str, Any], prefix: str = "") -> str:
    """'notify_recipients: This field is required. (904); direct_awards[1].eppn: Incorrect eppn format (999)'."""
    parts: list[str] = []
    for name, value in errors.items():
        where = f"{prefix}{name}"
        entries = value if isinstance(value, list) else [value]
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and "error_message" in entry:
                parts.append(f"{where}: {entry['error_message']} ({entry.get('error_code')})")
            elif isinstance(entry, dict):
                if entry:
                    parts.append(describe_field_errors(entry, f"{where}[{index}]."))
            else:
                parts.append(f"{where}: {entry}")
    return "; ".join(parts)


def find_rule(status: int, body: Body) -> Rule:
    for rule in RULES:
        if status in rule.statuses and rule.shape in (None, body.shape) and (
                rule.pattern is None or rule.pattern.search(body.text)):
            return rule
    return Rule(frozenset({status}), None, None, Meaning.BAD_REQUEST, TargetUnavailable,
                hint="Edubadges answered in a way mcsync does not know")


def classify(response: httpx.Response, *, creating: bool, retry_after: float | None = None) -> DeliveryError:
    """The error for a non-success answer. `creating`: the call was a bundle create."""
    body = Body.read(response.content)
    rule = find_rule(response.status_code, body)
    error = rule.on_create if creating and rule.on_create is not None else rule.error
    message = f"Edubadges answered {response.status_code} to {response.request.method} " \
              f"{response.request.url.path}: {body.text}"
    code = body.code or str(response.status_code)
    if error is PermanentError:
        return EdubadgesRejection(message, meaning=rule.meaning, status=response.status_code, code=code,
                                  remote_text=body.text, field_errors=body.field_errors, hint=rule.hint)
    if issubclass(error, RetriableError):
        return error(message, code=code, retry_after=retry_after, hint=rule.hint)
    return error(message, code=code, hint=rule.hint)


def text_rule(text: str) -> Rule:
    """The rule for an error text on its own (one award's rejection inside a bundle answer)."""
    return find_rule(400, Body(Shape.ERROR, text))


#: Transport failures: (exception class, error for a read or a withdrawal, error for a create).
#: A request that never left (no connection) is safe to repeat; one whose answer was lost may be applied.
TRANSPORT_RULES: tuple[tuple[type[httpx.TransportError], type[DeliveryError], type[DeliveryError]], ...] = (
    (httpx.ConnectError, RetriableError, RetriableError),
    (httpx.ConnectTimeout, RetriableError, RetriableError),
    (httpx.PoolTimeout, RetriableError, RetriableError),
    (httpx.TimeoutException, RetriableError, UnknownOutcome),
    (httpx.TransportError, RetriableError, UnknownOutcome),
)


def classify_transport(exc: httpx.TransportError, *, creating: bool, what: str) -> DeliveryError:
    for kind, for_read, for_create in TRANSPORT_RULES:
        if isinstance(exc, kind):
            error = for_create if creating else for_read
            break
    else:  # pragma: no cover - TransportError is the last row
        error = UnknownOutcome if creating else RetriableError
    reason = str(exc) or type(exc).__name__
    message = f"{what}: {type(exc).__name__}: {reason}"
    if error is UnknownOutcome:
        return UnknownOutcome(message, hint="the awards stay in_flight and are looked up on Edubadges before "
                                            "anything is sent again")
    return error(message)


def parse_rejections(text: str) -> list[dict[str, Any]] | None:
    """The list in "No valid DirectAwards are created. All of them were rejected: [{...}, ...]".

    Edubadges writes it with Python's str() of a list of dicts, so it is read as a Python literal
    (ast.literal_eval: literals only, nothing is executed). None if it cannot be read.
    """
    start = text.find("[")
    if start < 0:
        return None
    try:
        value = ast.literal_eval(text[start:])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        return None
    return value
