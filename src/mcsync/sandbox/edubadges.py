"""A local SURF Edubadges (and its SURFconext token endpoint) for tests, the sandbox and the benchmark.

It follows edubadges-server as ../shared/reference/edubadges-api.md documents it, not mcsync's wishes:

- `POST /oidc/token`: client credentials with HTTP Basic; a bad client gets 401 `{"error": "invalid_client"}`.
- Every API call introspects its bearer token: unknown or expired → 403 `{"detail": "Authentication
  credentials were not provided."}`; `X-Requested-With: client|mobile` skips OIDC, so → 403 too.
- Errors: DRF exceptions (403, 404, 405, 415, validation) render as JSON; any other exception renders
  as 400 `{"error": str(exc)}` only for a JSON request (Content-Type containing "json"), else 500 HTML.
  Validation bodies carry error codes 901 null, 902 invalid, 903 blank, 904 required, 999 other.
  Responses are `application/ld+json` unless the request accepts `application/json`. Bodies over 5 MiB → 400.
- `POST /directaward/create`: one atomic bundle; only an *Unaccepted* award with the same eppn (or, in
  an email bundle, the same e-mail address) and badge class blocks a new one ("already exists for
  badgeclass"), so after a claim, rejection or deletion a second award IS created, like the real one.
  Refused awards come back in `un_successful_direct_award`; if none was made → 400 "No valid DirectAwards
  are created. All of them were rejected: [...]" (Python's str() of the list, as Edubadges writes it).
- `GET /directaward/bundle/{id}` (404 with an empty body if unknown), `PUT /directaward/delete-direct-awards`,
  `POST /issuer/revoke-assertions` (not atomic: stops at the first failure), `GET /queries/direct-awards`,
  `GET /queries/badge-classes`.
- The learner's side and time are control methods: `claim()` deletes the direct award and makes an
  assertion, `reject()`, `expire()` (hard delete, like the 82-day cron).

Tests script failures with `fail_next()` (answer without applying, or apply and then drop the connection,
answer late or answer something else) and `fail_introspection()`; they inspect with `awards_for()`, `direct_awards()`,
`assertions()` and `calls`. All state sits behind one lock.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from .base import SimRequest, SimResponse

MAX_BODY = 5 * 1024 * 1024                     # DATA_UPLOAD_MAX_MEMORY_SIZE
EXPIRY_DAYS = 82                               # EXPIRY_DIRECT_AWARDS_DELETION_THRESHOLD_DAYS
DELETED_KEPT_DAYS = 30                         # DIRECT_AWARDS_DELETION_THRESHOLD_DAYS
NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided."}
INTROSPECTION_TIMEOUT = ("HTTPSConnectionPool(host='connect.test.surfconext.nl', port=443): "
                         "Read timed out. (read timeout=60)")
UNACCEPTED, SCHEDULED, REJECTED, DELETED = "Unaccepted", "Scheduled", "Rejected", "Deleted"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HTML_400 = b"<!doctype html>\n<html lang=\"en\"><head><title>Bad Request (400)</title></head>" \
            b"<body><h1>Bad Request (400)</h1><p></p></body></html>"
_HTML_404 = b"<!doctype html>\n<html lang=\"en\"><head><title>Not Found</title></head><body><h1>Not Found</h1>" \
            b"<p>The requested resource was not found on this server.</p></body></html>"
_HTML_500 = b"<!doctype html>\n<html lang=\"en\"><head><title>Server Error (500)</title></head>" \
            b"<body><h1>Server Error (500)</h1><p></p></body></html>"


def entity_id() -> str:
    """22-character url-safe base64 of a random (version 4) UUID, like mainsite.utils.generate_entity_uri
    (the UUID's bytes made directly: a bundle makes thousands)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40          # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80          # RFC 4122 variant
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass
class BadgeClass:
    entity_id: str
    name: str
    pk: int
    archived: bool = False
    is_private: bool = False
    direct_awarding_disabled: bool = False
    badge_class_type: str = "micro_credential"
    may_award: bool = True            # the SIS user's permission on it (staff membership)


@dataclass
class Bundle:
    entity_id: str
    badgeclass: str
    initial_total: int
    identifier_type: str
    status: str
    sis_user_id: str | None
    client_id: str
    created_at: datetime


@dataclass
class DirectAward:
    entity_id: str
    bundle: str
    badgeclass: str
    eppn: str | None
    recipient_email: str
    status: str
    created_at: datetime
    expiration_date: datetime
    first_name: str | None = None
    surname: str | None = None
    grade_achieved: str | None = None
    revocation_reason: str | None = None
    delete_at: datetime | None = None


@dataclass
class Assertion:
    entity_id: str
    bundle: str
    badgeclass: str
    eppn: str | None                   # the claimer's first linked eppn
    email: str
    full_name: str
    grade_achieved: str | None = None
    revoked: bool = False
    revocation_reason: str | None = None


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


@dataclass
class _Script:
    method: str
    path: str
    response: SimResponse | None
    after_apply: bool
    drop: bool
    delay: float
    times: int


class _ApiError(Exception):
    """A DRF APIException: rendered as JSON whatever the request's Content-Type."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _ServerError(Exception):
    """Any other exception in a view (KeyError, DoesNotExist, BadRequest, a timeout)."""


def _field_error(code: int, message: str) -> dict[str, Any]:
    return {"error_code": code, "error_message": message}


def _validation(errors: dict[str, Any]) -> _ApiError:
    return _ApiError(400, {"detail": "validation_error", "fields": {"error_message": errors, "error_code": 999}})


def _required(data: dict[str, Any], name: str) -> Any:
    """BadgrValidationFieldError(name, "This field is required", 999) when the field is missing or empty."""
    value = data.get(name)
    if not value:
        raise _validation({name: [_field_error(999, "This field is required")]})
    return value


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class EdubadgesSimulator:
    """One institution's Edubadges: its badge classes, SIS clients, bundles, awards and assertions."""

    def __init__(self, badgeclasses: dict[str, str] | None = None, clients: dict[str, str] | None = None,
                 eppn_pattern: str | None = r"^[^@\s]+@[^@\s]+$", token_ttl: int = 3600,
                 clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self.eppn_pattern = eppn_pattern
        self.token_ttl = token_ttl
        self.clients = dict(clients or {})
        self.badgeclasses: dict[str, BadgeClass] = {}
        self.bundles: dict[str, Bundle] = {}
        self._direct_awards: dict[str, DirectAward] = {}
        self._unaccepted: dict[tuple[str, str, str], set[str]] = {}   # (badge class, kind, eppn/email) → ids
        self._bundle_awards: dict[str, list[str]] = {}                  # bundle id → its awards' ids
        self._assertions: dict[str, Assertion] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._scripts: list[_Script] = []
        self._introspection_failures = 0
        self.calls: list[Call] = []
        self.tokens_issued = 0
        for badgeclass_id, name in (badgeclasses or {}).items():
            self.add_badgeclass(badgeclass_id, name)

    # set-up and control -------------------------------------------------------------------------------------
    def add_badgeclass(self, badgeclass_id: str, name: str, *, archived: bool = False, is_private: bool = False,
                       direct_awarding_disabled: bool = False, badge_class_type: str = "micro_credential",
                       may_award: bool = True) -> None:
        with self._lock:
            self.badgeclasses[badgeclass_id] = BadgeClass(
                badgeclass_id, name, len(self.badgeclasses) + 1, archived, is_private, direct_awarding_disabled,
                badge_class_type, may_award)

    def fail_next(self, method: str, path: str, response: SimResponse | None = None, *, after_apply: bool = False,
                  drop: bool = False, delay: float = 0.0, times: int = 1) -> None:
        """Script the next `times` calls of `method path` (`path` may hold shell wildcards: "/directaward/bundle/*").

        Without `after_apply`: answer `response` and change nothing (a 503, a 429 with Retry-After).
        With `after_apply`: handle the call, wait `delay` seconds (a client timeout), then cut the connection
        (`drop`), or answer `response` instead of the real answer (a gateway's 502), or the real answer.
        """
        if not after_apply and response is None:
            raise ValueError("a failure before applying needs the response to give")
        with self._lock:
            self._scripts.append(_Script(method.upper(), path, response, after_apply, drop, delay, times))

    def fail_introspection(self, times: int = 1) -> None:
        """The next `times` token introspections time out (Edubadges then answers 400 {"error": ...})."""
        with self._lock:
            self._introspection_failures += times

    def claim(self, da_id: str, *, eppn: str | None = None, email: str | None = None,
              full_name: str | None = None) -> str:
        """The learner accepts: the direct award row is deleted and an assertion made. Returns its id."""
        with self._lock:
            award = self._direct_awards[da_id]
            if award.status != UNACCEPTED:
                raise ValueError(f"direct award {da_id} is {award.status}, not claimable")
            del self._direct_awards[da_id]
            name = full_name or " ".join(p for p in (award.first_name, award.surname) if p) or "Student"
            assertion = Assertion(entity_id(), award.bundle, award.badgeclass, eppn or award.eppn,
                                  email or award.recipient_email, name, award.grade_achieved)
            self._assertions[assertion.entity_id] = assertion
            return assertion.entity_id

    def revoke_by_hand(self, assertion_id: str, reason: str = "Revoked by staff") -> None:
        """Staff revoke a claimed badge in the Edubadges UI (what `mcsync failures` may ask a person to do)."""
        with self._lock:
            assertion = self._assertions[assertion_id]
            assertion.revoked, assertion.revocation_reason = True, reason

    def reject(self, da_id: str) -> None:
        with self._lock:
            self._direct_awards[da_id].status = REJECTED

    def expire(self, da_id: str) -> None:
        """Unclaimed too long: hard-deleted, silently gone."""
        with self._lock:
            del self._direct_awards[da_id]

    # inspection --------------------------------------------------------------------------------------------
    def direct_awards(self, *, eppn: str | None = None, badgeclass: str | None = None) -> list[DirectAward]:
        with self._lock:
            return [replace(a) for a in self._direct_awards.values()
                    if (eppn is None or a.eppn == eppn.lower()) and (badgeclass is None or a.badgeclass == badgeclass)]

    def assertions(self, *, eppn: str | None = None, badgeclass: str | None = None) -> list[Assertion]:
        with self._lock:
            return [replace(a) for a in self._assertions.values()
                    if (eppn is None or a.eppn == eppn.lower()) and (badgeclass is None or a.badgeclass == badgeclass)]

    def awards_for(self, eppn: str, badgeclass: str) -> int:
        """What the learner holds or can claim: live direct awards plus unrevoked assertions."""
        live = [a for a in self.direct_awards(eppn=eppn, badgeclass=badgeclass) if a.status in (UNACCEPTED, SCHEDULED)]
        held = [a for a in self.assertions(eppn=eppn, badgeclass=badgeclass) if not a.revoked]
        return len(live) + len(held)

    def summary(self) -> str:
        """One line for the sandbox's report."""
        with self._lock:
            statuses = [a.status for a in self._direct_awards.values()]
            revoked = sum(1 for a in self._assertions.values() if a.revoked)
            return (f"{len(self.bundles)} bundles, {statuses.count(UNACCEPTED) + statuses.count(SCHEDULED)} unclaimed "
                    f"awards, {len(self._assertions) - revoked} claimed badges, {statuses.count(DELETED)} deleted, "
                    f"{revoked} revoked")

    def write_calls(self) -> list[Call]:
        """Calls that may change something (the token endpoint excluded)."""
        with self._lock:
            return [c for c in self.calls if c.method in ("POST", "PUT", "PATCH", "DELETE") and c.path != "/oidc/token"]

    # HTTP ----------------------------------------------------------------------------------------------------
    def handle(self, request: SimRequest) -> SimResponse:
        script = self._take_script(request)
        if script is not None and not script.after_apply and script.response is not None:
            response = script.response
        else:
            with self._lock:
                response = self._serve(request)
            if script is not None:
                if script.delay:
                    time.sleep(script.delay)          # outside the lock: other calls go on meanwhile
                if script.drop:
                    response = SimResponse(response.status, drop_connection=True)
                elif script.response is not None:
                    response = script.response
        with self._lock:
            self.calls.append(Call(request.method, request.path, request.query, dict(request.headers),
                                   response.status))
        return response

    def _take_script(self, request: SimRequest) -> _Script | None:
        with self._lock:
            for script in self._scripts:
                if script.method == request.method and script.times > 0 and fnmatch.fnmatchcase(request.path,
                                                                                                  script.path):
                    script.times -= 1
                    return script
        return None

    def _serve(self, request: SimRequest) -> SimResponse:
        if len(request.body) > MAX_BODY:      # RequestDataTooBig: Django's SuspiciousOperation page
            return SimResponse(400, _HTML_400, {"Content-Type": "text/html; charset=utf-8"})
        if request.path != "/" and request.path.endswith("/"):   # TrailingSlashMiddleware
            return SimResponse(301, b"", {"Location": request.path.rstrip("/")})
        if request.path == "/oidc/token":
            return self._token(request)
        view = self._resolve(request.path)
        if view is None:
            return SimResponse(404, _HTML_404, {"Content-Type": "text/html; charset=utf-8"})
        methods, handler, kwargs = view
        json_request = "json" in (request.headers.get("Content-Type") or "").lower()
        try:
            client_id = self._authenticate(request)
            if request.method not in methods:
                raise _ApiError(405, {"detail": f'Method "{request.method}" not allowed.'})
            return handler(request, client_id, **kwargs)
        except _ApiError as exc:
            return self._render(request, exc.status, exc.body)
        except _ServerError as exc:
            if json_request:
                return SimResponse.json(400, {"error": str(exc)})
            return SimResponse(500, _HTML_500, {"Content-Type": "text/html; charset=utf-8"})

    def _resolve(self, path: str) -> tuple[tuple[str, ...], Callable[..., SimResponse], dict[str, str]] | None:
        if path == "/directaward/create":
            return ("POST",), self._create, {}
        if match := re.fullmatch(r"/directaward/bundle/([^/]+)", path):
            return ("GET",), self._bundle, {"bundle_id": match.group(1)}
        if path == "/directaward/delete-direct-awards":
            return ("PUT",), self._delete, {}
        if path == "/issuer/revoke-assertions":
            return ("POST",), self._revoke, {}
        if path == "/queries/direct-awards":
            return ("GET",), self._query_direct_awards, {}
        if path == "/queries/badge-classes":
            return ("GET",), self._query_badge_classes, {}
        return None

    def _render(self, request: SimRequest, status: int, data: Any) -> SimResponse:
        accept = (request.headers.get("Accept") or "").lower()
        content_type = "application/json" if "application/json" in accept else "application/ld+json"
        return SimResponse(status, json.dumps(data).encode("utf-8"), {"Content-Type": content_type})

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # authentication --------------------------------------------------------------------------------------------
    def _token(self, request: SimRequest) -> SimResponse:
        if request.method != "POST":
            return SimResponse.json(405, {"error": "invalid_request"})
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                client_id = secret = None
        if client_id is None or self.clients.get(client_id) != secret or not secret:
            return SimResponse.json(401, {"error": "invalid_client"}, {"WWW-Authenticate": 'Basic realm="oidc"'})
        if form.get("grant_type") != "client_credentials":
            return SimResponse.json(400, {"error": "unsupported_grant_type"})
        scope = form.get("scope", "edubadges.nl/sis")
        if "edubadges.nl/sis" not in scope.split():
            return SimResponse.json(400, {"error": "invalid_scope"})
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (client_id, self._clock() + self.token_ttl)
        self.tokens_issued += 1
        return SimResponse.json(200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl,
                                      "scope": scope})

    def _authenticate(self, request: SimRequest) -> str:
        if (request.headers.get("X-Requested-With") or "").lower() in ("client", "mobile"):
            raise _ApiError(403, NOT_AUTHENTICATED)       # OIDC skipped; no other scheme takes our token
        auth = request.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise _ApiError(403, NOT_AUTHENTICATED)
        if self._introspection_failures:
            self._introspection_failures -= 1
            raise _ServerError(INTROSPECTION_TIMEOUT)
        entry = self._tokens.get(auth[7:].strip())
        if entry is None or entry[1] <= self._clock():
            raise _ApiError(403, NOT_AUTHENTICATED)
        return entry[0]

    def _body(self, request: SimRequest) -> Any:
        content_type = request.headers.get("Content-Type") or ""
        if "json" not in content_type.lower():
            raise _ApiError(415, {"detail": f'Unsupported media type "{content_type}" in request.'})
        try:
            return json.loads(request.body.decode("utf-8")) if request.body else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise _ApiError(400, {"detail": f"JSON parse error - {exc}"}) from None

    # direct awards ---------------------------------------------------------------------------------------------
    def _create(self, request: SimRequest, client_id: str) -> SimResponse:
        data = self._body(request)
        if not isinstance(data, dict):
            raise _validation({"non_field_errors": [_field_error(902, "Invalid data. Expected a dictionary.")]})
        identifier_type = data.get("identifier_type", "eppn")
        awards = self._validate_create(data, identifier_type)
        if "badgeclass" not in data:
            raise _ServerError("'badgeclass'")
        badgeclass = self.badgeclasses[data["badgeclass"]]
        if badgeclass.direct_awarding_disabled:
            raise _ServerError(f"Direct awarding disabled for {badgeclass.name}")
        if badgeclass.is_private:
            raise _ServerError(f" Badgeclass {badgeclass.name} is not published. Direct awarding not allowed")
        if badgeclass.archived:                              # PR #379
            raise _ServerError(f"Badgeclass {badgeclass.name} is archived. Direct awarding not allowed")
        now = self._now()
        status = UNACCEPTED
        if data.get("scheduled_at"):
            try:
                scheduled = datetime.fromisoformat(str(data["scheduled_at"]).replace("Z", "+00:00"))
            except ValueError:
                raise _validation({"scheduled_at": [_field_error(902, "Datetime has wrong format.")]}) from None
            if scheduled.tzinfo is None:
                scheduled = scheduled.replace(tzinfo=UTC)
            if scheduled <= now:
                raise _ApiError(400, {"scheduled_at": ["Scheduled time must be in the future."]})
            status = SCHEDULED
        if not badgeclass.may_award:                       # BadgrValidationError(msg, 100)
            raise _ApiError(400, {"detail": "validation_error", "fields": {
                "error_message": "You don't have the necessary permissions", "error_code": 100}})
        bundle = Bundle(entity_id(), badgeclass.entity_id, len(awards), identifier_type,
                        SCHEDULED if status == SCHEDULED else "Active", data.get("sis_user_id"), client_id, now)
        made: list[DirectAward] = []                           # one transaction: nothing kept unless committed
        made_keys: set[str] = set()                            # ... and what of them blocks a later one
        refused: list[dict[str, Any]] = []
        for award in awards:
            if "recipient_email" not in award:
                raise _ServerError("'recipient_email'")
            email = str(award["recipient_email"]).lower()
            eppn: str | None = None
            if identifier_type == "eppn":
                if "eppn" not in award:
                    raise _ServerError("'eppn'")
                if award["eppn"] is None:
                    raise _ServerError("'NoneType' object has no attribute 'lower'")
                eppn = str(award["eppn"]).lower()
            if self._unaccepted_duplicate(eppn, email, badgeclass.entity_id, identifier_type, made_keys):
                refused.append({"error": f"DirectAward with eppn: {eppn} / email: {email} and status Unaccepted "
                                         f"already exists for badgeclass {badgeclass.name} ({badgeclass.pk}).",
                                "eppn": eppn, "email": email})
                continue
            made.append(DirectAward(
                entity_id(), bundle.entity_id, badgeclass.entity_id, eppn, email, status, now,
                now + timedelta(days=EXPIRY_DAYS), award.get("first_name") or None, award.get("surname") or None,
                award.get("grade_achieved")))
            key = eppn if identifier_type == "eppn" else email
            if status == UNACCEPTED and key is not None:
                made_keys.add(key)
        if not made:
            raise _ServerError(f"No valid DirectAwards are created. All of them were rejected: {refused!s}")
        self.bundles[bundle.entity_id] = bundle
        self._direct_awards.update((a.entity_id, a) for a in made)
        for award in made:
            self._index_award(award, identifier_type)
            self._bundle_awards.setdefault(award.bundle, []).append(award.entity_id)
        answer: dict[str, Any] = {"badgeclass": badgeclass.entity_id, "entity_id": bundle.entity_id}
        if refused:
            answer["un_successful_direct_award"] = refused
        return self._render(request, 201, answer)

    def _validate_create(self, data: dict[str, Any], identifier_type: Any) -> list[dict[str, Any]]:
        """DirectAwardBundleSerializer validation; raises the validation shape with all field errors."""
        errors: dict[str, Any] = {}
        if "badgeclass" in data:
            value = data["badgeclass"]
            if value is None:
                errors["badgeclass"] = [_field_error(901, "This field may not be null.")]
            elif not isinstance(value, str) or value not in self.badgeclasses:
                errors["badgeclass"] = [_field_error(999, f"Object with entity_id={value} does not exist.")]
        if "notify_recipients" not in data:
            errors["notify_recipients"] = [_field_error(904, "This field is required.")]
        elif data["notify_recipients"] is None:
            errors["notify_recipients"] = [_field_error(901, "This field may not be null.")]
        elif data["notify_recipients"] not in (True, False, "true", "false", "True", "False", 1, 0, "1", "0"):
            errors["notify_recipients"] = [_field_error(902, "Must be a valid boolean.")]
        if identifier_type is None:
            errors["identifier_type"] = [_field_error(901, "This field may not be null.")]
        awards = data.get("direct_awards")
        if "direct_awards" not in data:
            errors["direct_awards"] = [_field_error(904, "This field is required.")]
        elif awards is None:
            errors["direct_awards"] = [_field_error(901, "This field may not be null.")]
        elif not isinstance(awards, list):
            errors["direct_awards"] = [_field_error(
                999, f'Expected a list of items but got type "{type(awards).__name__}".')]
        else:
            per_award = [self._validate_award(a, identifier_type) for a in awards]
            if any(per_award):
                errors["direct_awards"] = per_award
        if errors:
            raise _validation(errors)
        return [a for a in awards if isinstance(a, dict)] if isinstance(awards, list) else []

    def _validate_award(self, award: Any, identifier_type: Any) -> dict[str, Any]:
        if not isinstance(award, dict):
            return {"non_field_errors": [_field_error(
                902, f"Invalid data. Expected a dictionary, but got {type(award).__name__}.")]}
        errors: dict[str, Any] = {}
        if "recipient_email" in award:
            email = award["recipient_email"]
            if email is None:
                errors["recipient_email"] = [_field_error(901, "This field may not be null.")]
            elif email == "":
                errors["recipient_email"] = [_field_error(903, "This field may not be blank.")]
            elif not isinstance(email, str) or not _EMAIL.match(email):
                errors["recipient_email"] = [_field_error(902, "Enter a valid email address.")]
        eppn = award.get("eppn")
        if isinstance(eppn, str) and identifier_type == "eppn" and self.eppn_pattern:
            if not re.match(self.eppn_pattern, eppn, re.IGNORECASE):
                errors["eppn"] = [_field_error(999, "Incorrect eppn format")]
        return errors

    def _unaccepted_duplicate(self, eppn: str | None, email: str, badgeclass: str, identifier_type: str,
                              made: set[str]) -> bool:
        """DirectAward.validate_unique: only an Unaccepted award of the same badge class blocks.

        Same eppn among awards of eppn bundles, or same e-mail address among awards of email bundles
        (whatever the new award's own bundle type), the awards made earlier in this request included:
        `made` holds their eppns (eppn bundle) or e-mail addresses (email bundle) if they are Unaccepted.
        """
        if (eppn if identifier_type == "eppn" else email) in made:
            return True
        # the index holds every award that was Unaccepted when made; its current status decides
        candidates = set()
        if eppn is not None:
            candidates |= self._unaccepted.get((badgeclass, "eppn", eppn), set())
        candidates |= self._unaccepted.get((badgeclass, "email", email), set())
        stored = (self._direct_awards.get(da_id) for da_id in candidates)
        for award in (a for a in stored if a is not None):
            if award.badgeclass != badgeclass or award.status != UNACCEPTED:
                continue
            bundle = self.bundles.get(award.bundle)
            kind = bundle.identifier_type if bundle is not None else identifier_type
            if kind == "eppn" and eppn is not None and award.eppn == eppn:
                return True
            if kind == "email" and award.recipient_email == email:
                return True
        return False

    def _index_award(self, award: DirectAward, identifier_type: str) -> None:
        """Remember where a new award could block a later one (looked up by `_unaccepted_duplicate`)."""
        if award.status != UNACCEPTED:
            return
        key = award.eppn if identifier_type == "eppn" else award.recipient_email
        if key is not None:
            self._unaccepted.setdefault((award.badgeclass, identifier_type, key), set()).add(award.entity_id)

    def _bundle(self, request: SimRequest, client_id: str, bundle_id: str) -> SimResponse:
        bundle = self.bundles.get(bundle_id)
        if bundle is None:
            return SimResponse(404, b"")
        awards = [a for a in (self._direct_awards.get(i) for i in self._bundle_awards.get(bundle_id, ()))
                  if a is not None and a.bundle == bundle_id]
        assertions = [a for a in self._assertions.values() if a.bundle == bundle_id]

        def count(status: str) -> int:
            return sum(1 for a in awards if a.status == status)

        return self._render(request, 200, {
            "initial_total": bundle.initial_total, "status": bundle.status,
            "badgeclass": self.badgeclasses[bundle.badgeclass].name,
            "assertion_count": sum(1 for a in assertions if not a.revoked),
            "direct_award_count": count(UNACCEPTED), "direct_award_rejected_count": count(REJECTED),
            "direct_award_scheduled_count": count(SCHEDULED), "direct_award_deleted_count": count(DELETED),
            "direct_award_revoked_count": sum(1 for a in assertions if a.revoked) + count("Revoked"),
            "direct_awards": [{"recipient_email": a.recipient_email, "eppn": a.eppn, "status": a.status,
                               "entity_id": a.entity_id} for a in awards],
            "badge_assertions": [{"full_name": a.full_name, "email": a.email, "public": False, "revoked": a.revoked,
                                  "entity_id": a.entity_id, "eppn": a.eppn if a.eppn else []} for a in assertions],
        })

    def _object(self, request: SimRequest) -> dict[str, Any]:
        """The JSON body of a view that reads it with request.data.get(...)."""
        data = self._body(request)
        if not isinstance(data, dict):
            raise _ServerError(f"'{type(data).__name__}' object has no attribute 'get'")
        return data

    def _delete(self, request: SimRequest, client_id: str) -> SimResponse:
        data = self._object(request)
        items = _required(data, "direct_awards")
        reason = data.get("revocation_reason")
        delete_at = self._now() + timedelta(days=DELETED_KEPT_DAYS)
        refused: list[dict[str, Any]] = []
        deleted = 0
        for item in items:
            item = item if isinstance(item, dict) else {}
            award = self._direct_awards.get(str(item.get("entity_id")))
            if "entity_id" not in item:
                refused.append({"error": "'entity_id'", "eppn": item.get("eppn"), "email": item.get("recipient_email")})
            elif award is None:
                refused.append({"error": "DirectAward matching query does not exist.", "eppn": item.get("eppn"),
                                "email": item.get("recipient_email")})
            elif award.status == DELETED:
                refused.append({"error": "DirectAward has already been deleted", "eppn": award.eppn,
                                "email": award.recipient_email})
            else:
                award.status, award.delete_at, award.revocation_reason = DELETED, delete_at, reason
                deleted += 1
        if not deleted:
            raise _ServerError(f"No valid DirectAwards are deleted. All of them were rejected: {refused!s}")
        return self._render(request, 200, {"result": "ok", "un_successful_direct_awards": refused})

    def _revoke(self, request: SimRequest, client_id: str) -> SimResponse:
        data = self._object(request)
        reason = _required(data, "revocation_reason")
        items = _required(data, "assertions")
        for item in items:                       # not atomic: what is revoked before a failure stays revoked
            if not isinstance(item, dict) or "entity_id" not in item:
                raise _ServerError("'entity_id'")
            assertion = self._assertions.get(str(item["entity_id"]))
            if assertion is None:
                raise _ServerError("BadgeInstance matching query does not exist.")
            if assertion.revoked:
                raise _ServerError("['Assertion is already revoked']")
            assertion.revoked, assertion.revocation_reason = True, str(reason)
        return self._render(request, 200, {"result": "ok"})

    # queries -----------------------------------------------------------------------------------------------------
    def _query_direct_awards(self, request: SimRequest, client_id: str) -> SimResponse:
        unclaimed = (request.query.get("status") or ["unclaimed"])[0] == "unclaimed"
        statuses = (UNACCEPTED, SCHEDULED) if unclaimed else (DELETED,)
        rows = [{"created_at": _iso(a.created_at), "resend_at": None, "delete_at": _iso(a.delete_at),
                 "recipientEmail": a.recipient_email, "eppn": a.eppn, "entityId": a.entity_id,
                 "expiration_date": _iso(a.expiration_date), "name": self.badgeclasses[a.badgeclass].name,
                 "bc_entity_id": a.badgeclass}
                for a in self._direct_awards.values() if a.status in statuses]
        return self._render(request, 200, rows)

    def _query_badge_classes(self, request: SimRequest, client_id: str) -> SimResponse:
        claimed = {b: sum(1 for a in self._assertions.values() if a.badgeclass == b) for b in self.badgeclasses}
        return self._render(request, 200, [
            {"name": b.name, "archived": b.archived, "entityId": b.entity_id, "isPrivate": b.is_private,
             "isMicroCredentials": b.badge_class_type == "micro_credential", "typeBadgeClass": b.badge_class_type,
             "selfRequestedAssertionsCount": 0,
             "directAwardedAssertionsCount": claimed[b.entity_id]}       # revoked ones included, as in the SQL
            for b in self.badgeclasses.values()])
