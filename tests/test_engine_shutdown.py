"""A shutdown request stops a run between deliveries and during waits, keeping the work queued."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mcsync.engine import EXIT_UNAVAILABLE, Engine
from mcsync.errors import ShutdownRequested

from .e2e_helpers import institution


def test_interruptible_sleep_ends_at_once_when_stopped(tmp_path, store):
    with institution(tmp_path) as inst:
        stop = threading.Event()
        engine = Engine(inst.config, store, stop=stop)
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(ShutdownRequested):
            asyncio.run(engine.sleep(30))
        assert time.monotonic() - started < 1.0


def test_a_stopped_run_keeps_its_work_queued_and_the_next_finishes_it(tmp_path):
    with institution(tmp_path) as inst:
        stop = threading.Event()
        stop.set()
        store = inst.store()
        try:
            report = Engine(inst.config, store, stop=stop).run()
            assert report.exit_code == EXIT_UNAVAILABLE and report.interrupted
            assert inst.sandbox.write_requests() == 0
            assert sum(c.get("pending", 0) for c in store.counts().values()) == 3 + 11 + 11
        finally:
            store.close()
        again = inst.run()
        assert again.exit_code == 0 and again.targets["edubadges"].confirmed == 11
