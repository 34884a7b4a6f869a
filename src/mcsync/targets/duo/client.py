"""The register over HTTP: a POST that is only ever repeated byte for byte, GETs, and what each
answer means (looked up in the policy tables of `errors.py`).

Retries (tenacity through `mcsync.http.retry_async`, honouring Retry-After):
- `post_levering` repeats the identical bytes on 429/503, on 5xx and when no answer arrives. That is
  safe because the register is idempotent by leveringId. It reports whether an attempt *may* have
  been stored (no answer, 5xx, an unreadable 202): then the caller keeps the items in_flight and
  looks the delivery up later; if every attempt provably stored nothing (429/503, no connection),
  the caller may put them back in the queue.
- `get` repeats on 429/503, 5xx and no answer; a refusal (401/403/4xx) or running out of attempts
  is `TargetUnavailable`: the work stays queued.

Texts from the register pass through `redact()` before they are kept or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from tenacity import RetryCallState

from ...errors import RetriableError, TargetUnavailable
from ...http import Sleep, make_client, parse_retry_after, retry_async
from . import messages
from ...personal_numbers import redact
from .errors import Action, get_action, post_action
from .messages import MessageError

log = logging.getLogger("mcsync.targets.duo")


@dataclass(frozen=True)
class Answer:
    """The register's answer to one call, classified."""

    action: Action
    status: int | None = None
    code: str | None = None               # the `<fout code>`
    text: str = ""                        # the `<fout>` text (redacted) or what went wrong
    retry_after: float | None = None
    response: httpx.Response | None = None

    def describe(self) -> str:
        parts = [f"HTTP {self.status}" if self.status else "no answer", self.code or "", self.text]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    initial: float
    maximum: float


class RegisterClient:
    """HTTP calls to one register (mutual TLS through `make_client`)."""

    def __init__(self, base_url: str, *, timeout: float, ca_file: Path | None, cert_file: Path | None,
                 key_file: Path | None, retry: RetryPolicy, sleep: Sleep,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = make_client(base_url, timeout=timeout, ca_file=ca_file, cert_file=cert_file,
                                 key_file=key_file, transport=transport, headers={"Accept": "application/xml"})
        self._policy = retry
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post_levering(self, levering_id: str, body: bytes) -> Answer:
        """POST /leveringen, repeating the identical bytes; the final answer.

        After the last attempt the answer is BACK_OFF when nothing can have been stored, UNKNOWN when
        an attempt may have been.
        """
        maybe_stored = False
        last = Answer(Action.UNKNOWN)

        async def attempt() -> Answer:
            nonlocal maybe_stored, last
            try:
                response = await self._http.post("/leveringen", content=body,
                                                  headers={"Content-Type": messages.CONTENT_TYPE})
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
                last = Answer(Action.BACK_OFF, text=f"cannot reach the register ({type(exc).__name__})")
                raise RetriableError(last.describe()) from exc
            except httpx.TransportError as exc:
                maybe_stored = True
                last = Answer(Action.UNKNOWN, text=f"({type(exc).__name__})")
                raise RetriableError(last.describe()) from exc
            last = classify(response, post_action)
            if last.action is Action.SUBMITTED:
                try:
                    received = messages.parse_ontvangen(response.content)
                except MessageError as exc:
                    maybe_stored = True
                    raise RetriableError(f"unreadable answer to delivery {levering_id}: {exc}") from exc
                if received.levering_id != levering_id:
                    maybe_stored = True
                    raise RetriableError(f"the register confirmed delivery {received.levering_id}, not {levering_id}")
            elif last.action in (Action.BACK_OFF, Action.UNKNOWN):
                maybe_stored = maybe_stored or last.action is Action.UNKNOWN
                raise RetriableError(last.describe(), code=last.code, retry_after=last.retry_after)
            return last

        try:
            return await self._retry(attempt)
        except RetriableError:
            return replace(last, action=Action.UNKNOWN if maybe_stored else Action.BACK_OFF)

    async def get(self, path: str) -> Answer:
        """GET `path`: OK or NOT_FOUND, else TargetUnavailable (the work stays queued)."""
        async def attempt() -> Answer:
            try:
                response = await self._http.get(path)
            except httpx.TransportError as exc:
                raise RetriableError(f"no answer from the register ({type(exc).__name__})") from exc
            answer = classify(response, get_action)
            if answer.action in (Action.BACK_OFF, Action.UNKNOWN):
                raise RetriableError(answer.describe(), code=answer.code, retry_after=answer.retry_after)
            return answer

        try:
            answer = await self._retry(attempt)
        except RetriableError as exc:
            raise TargetUnavailable(f"the register does not answer GET {path}: {exc.message}", code=exc.code) from exc
        if answer.action is Action.STOP:
            raise TargetUnavailable(f"the register refused GET {path} ({answer.describe()})", code=answer.code,
                                    hint="check [targets.duo] cert_file and key_file; the work stays queued")
        return answer

    async def _retry(self, attempt: Callable[[], Awaitable[Answer]]) -> Answer:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("the register: %s; trying again", redact(str(exc)))

        p = self._policy
        return await retry_async(attempt, attempts=p.attempts, initial=p.initial, maximum=p.maximum,
                                 sleep=self._sleep, before_sleep=before_sleep)


def classify(response: httpx.Response, rule: Callable[[int, str | None], Action]) -> Answer:
    """An HTTP response as an Answer, by the policy `rule` (post_action or get_action)."""
    fout = messages.parse_fout(response.content) if response.status_code >= 400 else None
    code = fout.code if fout else None
    return Answer(rule(response.status_code, code), response.status_code, code,
                  redact(fout.tekst) if fout else "", parse_retry_after(response.headers.get("Retry-After")),
                  response)
