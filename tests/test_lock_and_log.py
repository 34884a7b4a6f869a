from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from mcsync import log as logs
from mcsync.errors import LockHeld
from mcsync.lock import RunLock
from mcsync.personal_numbers import passes_elfproef


def test_second_run_is_refused_and_lock_dies_with_the_process(tmp_path):
    state = tmp_path / "mcsync.db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from mcsync.lock import RunLock\n"
        f"RunLock(Path({str(state)!r})).acquire(); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            RunLock(state).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(state):   # the kernel released it with the dead process
        pass


@pytest.mark.parametrize("text", [
    "token Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig expired",
    "headers {'Authorization': 'Basic bWNzeW5jOnNlY3JldA=='}",
    "bsn 123456782 failed",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
])
def test_redaction(text):
    out = logs.redact(text)
    for secret in ("eyJhbGci", "bWNzeW5j", "123456782", "MIIEvQ"):
        assert secret not in out


def test_nine_digit_numbers_that_are_not_bsns_stay():
    assert logs.redact("onderwijsnummer-like 123456789 stays") == "onderwijsnummer-like 123456789 stays"
    assert passes_elfproef("123456782") and not passes_elfproef("123456789")


def test_registered_secrets_never_reach_any_handler(caplog):
    logs.install_redaction()
    logs.register_secret("demo-client-secret-value")
    with caplog.at_level(logging.INFO):
        logging.getLogger("mcsync.test").info("posting with %s for bsn %s", "demo-client-secret-value", "111222333")
    assert "demo-client-secret-value" not in caplog.text and "111222333" not in caplog.text
    assert "[secret]" in caplog.text and "[BSN]" in caplog.text
