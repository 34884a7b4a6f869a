"""Logging: human text on a terminal, JSON lines for machines, and never a secret or a BSN.

Redaction happens twice, so nothing slips through:
- a log record factory rewrites every record's message as it is created (whatever handler later
  sees it, including test capture), and
- our formatters redact the final text, tracebacks included.

What is redacted: every configured secret value (`register_secret`), bearer tokens and
Authorization headers, PEM private keys, and any 9-digit number that passes the BSN elfproef.
Structured fields (`extra={"record_id": ...}`) are emitted by the JSON formatter; never put a
personal number in them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from .personal_numbers import passes_elfproef

_secrets: set[str] = set()
_lock = threading.Lock()

_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+(\s+[^'\",}\s]+)?")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
# not inside a hex run: about 1 in 200 run ids (uuid4 hex) holds nine digits that pass the elfproef
_NINE_DIGITS = re.compile(r"(?<![0-9A-Fa-f])\d{9}(?![0-9A-Fa-f])")
_FIELDS = ("run_id", "source", "target", "record_id", "event", "reason",
           "phase", "done", "total", "rate", "eta_seconds")   # the last five: progress lines


def register_secret(value: str | None) -> None:
    """Redact this value from every log line from now on (short values are ignored)."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "[secret]")
    text = _PEM.sub("[private key]", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} [secret]", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}[secret]", text)
    return _NINE_DIGITS.sub(lambda m: "[BSN]" if passes_elfproef(m.group(0)) else m.group(0), text)


_base_factory = logging.getLogRecordFactory()


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: keep what we have, redacted
        message = str(record.msg)
    record.msg = redact(message)
    record.args = None
    return record


def install_redaction() -> None:
    """Idempotent: make every log record redacted at creation."""
    if logging.getLogRecordFactory() is not _redacting_factory:
        logging.setLogRecordFactory(_redacting_factory)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in ("source", "target", "record_id")
                           if getattr(record, k, None) is not None)
        return redact(f"{text} [{context}]" if context else text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        summary = getattr(record, "summary", None)
        if summary is not None:
            data["summary"] = summary
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:                      # formatted already (a record from a delivery process)
            data["exception"] = record.exc_text
        return redact(json.dumps(data, ensure_ascii=False, default=str))


def setup(*, fmt: str = "text", verbosity: int = 0) -> None:
    """Configure the root logger: -q → warnings, default → info, -v → debug (still redacted)."""
    install_redaction()
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_mcsync", False):
            root.removeHandler(old)
    handler._mcsync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO with full URLs; keep that for -v only
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING)
    logging.getLogger("zeep").setLevel(logging.WARNING)
