"""Every error mcsync raises, and what the engine does with it.

The class of an error *is* the policy (the Singer SDK's idea): the engine never inspects
messages or status codes to decide what to do, it looks at the class.

    McsyncError
    ├── ConfigError            exit 2: the configuration or a mapping file is wrong
    ├── LockHeld               exit 3: another mcsync run holds the lock
    ├── InputProblem           one row, file or field of an export is wrong: parked, run goes on
    └── DeliveryError          a remote call went wrong; subclasses say what happens next
        ├── PermanentError     park the item for a person (`mcsync failures`); never retried alone
        ├── RetriableError     wait and try again (honouring `retry_after`), later runs too
        │   └── AuthError      renew the credentials once, then try again
        ├── TargetUnavailable  stop this target for this run, keep its work queued (exit 75)
        └── UnknownOutcome     the call may have been applied: reconcile before sending again

`ShutdownRequested` stands apart (a BaseException): a signal asked us to stop; work in hand
finishes or stays in_flight, the rest stays queued.

Every error carries the context a person needs (file, line, field; target, key, remote code)
and a `hint` that says what to do. Error texts never contain secrets or BSNs: callers put
personal data in structured fields, not in messages.
"""

from __future__ import annotations

from dataclasses import dataclass


class McsyncError(Exception):
    """Base class. `hint` tells the operator what to do about it."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(McsyncError):
    """The configuration, a mapping file or a plugin's options are invalid. Exit code 2."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 hint: str | None = None) -> None:
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.key = key


class LockHeld(McsyncError):
    """Another mcsync process holds the run lock. Exit code 3."""

    hint = "wait for it to finish, or stop it; two runs never overlap"


@dataclass(frozen=True)
class Location:
    """Where a piece of input came from. `line` is 1-based and counts physical lines."""

    source: str
    file: str
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        text = self.file
        if self.line is not None:
            text += f":{self.line}"
        if self.field:
            text += f" [{self.field}]"
        return text


class InputProblem(McsyncError):
    """A row, file or field of an export cannot be used. It is parked and the run goes on."""

    def __init__(self, reason: str, location: Location, *, hint: str | None = None) -> None:
        super().__init__(f"{location}: {reason}", hint=hint)
        self.reason = reason
        self.location = location


class DeliveryError(McsyncError):
    """A remote call failed. `code` is the remote's own error code where it has one."""

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class PermanentError(DeliveryError):
    """Sending the same content again gives the same answer: park it for a person."""

    hint = "fix the data or the configuration, then `mcsync retry`"


class RetriableError(DeliveryError):
    """A temporary failure; safe to try again. `retry_after` is the remote's wish in seconds."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, code=code, hint=hint)
        self.retry_after = retry_after


class AuthError(RetriableError):
    """The credentials were refused; renew them once and try again."""


class TargetUnavailable(DeliveryError):
    """The target is down or refuses service: stop it for this run, keep its work queued."""

    hint = "the work stays queued and goes out on the next run"


class ShutdownRequested(BaseException):
    """A signal asked mcsync to stop: finish what is in hand, keep the rest queued (exit 75).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` in a target swallows it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownOutcome(DeliveryError):
    """The call may or may not have been applied (timeout, dropped connection, crash).

    The items stay `in_flight`; the next delivery of them starts with a lookup on the remote.
    """
