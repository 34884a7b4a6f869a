"""The demo institution as an operator deploys it: a configuration file on disk, and the rest in the
environment the way a systemd unit passes it (`MCSYNC_<SECTION>__<KEY>`), so a subprocess
(`mcsync daemon`) and `main()` in-process read the same configuration. The national systems are a
sandbox on loopback, optionally slowed down so that a delivery is "in hand" long enough to signal."""

from __future__ import annotations

import queue
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcsync.config import Config, load_config
from mcsync.sandbox import Sandbox
from mcsync.state import SqliteStateStore

from .conftest import DEMO

#: Short waits, as in the end-to-end tests: the sandbox makes writes visible after 0.02 s.
FAST = {"RIO": {"POLL_INTERVALS": "[0.05]", "CONFIRM_TIMEOUT": "10"},
        "DUO": {"POLL_INTERVAL": "0.05", "POLL_BUDGET": "10"}}
PASSED = 11          # passed records in the demo exports (each one Edubadges award and one register entry)
UNITS = 3            # microcredentials in the demo mapping (RIO units)


@dataclass
class Deployment:
    folder: Path
    sandbox: Sandbox
    env: dict[str, str]

    @property
    def config_path(self) -> Path:
        return self.folder / "mcsync.toml"

    @property
    def state_path(self) -> Path:
        return self.folder / "state" / "mcsync.db"

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the deployment's environment into this process (for `main()` and `load_config`)."""
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MCSYNC_CONFIG", raising=False)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    def config(self) -> Config:
        """The configuration as a process with `env` sees it (call after `apply`)."""
        return load_config(self.config_path)

    def store(self) -> SqliteStateStore:
        return SqliteStateStore(self.state_path)

    def append_config(self, text: str) -> None:
        with open(self.config_path, "a", encoding="utf-8") as handle:
            handle.write("\n" + text + "\n")


def environment(config: Config, state_path: Path) -> dict[str, str]:
    env = {"MCSYNC_STATE__PATH": str(state_path)}
    for name, table in config.settings.targets.items():
        for key, value in table.items():
            if key.endswith(("_url", "_file")):
                env[f"MCSYNC_TARGETS__{name.upper()}__{key.upper()}"] = str(value)
        for key, value in FAST.get(name.upper(), {}).items():
            env[f"MCSYNC_TARGETS__{name.upper()}__{key}"] = value
    return env


@contextmanager
def deployed(tmp_path: Path, *, latency: float = 0.0, unknown_bsns: set[str] | None = None) -> Iterator[Deployment]:
    folder = tmp_path / "institution"
    shutil.copytree(DEMO, folder)
    config = load_config(folder / "mcsync.toml")
    sandbox = Sandbox.from_config(config, latency=latency, rio_visibility_delay=0.02, duo_processing_delay=0.02,
                                  unknown_bsns=unknown_bsns).start()
    try:
        pointed = sandbox.point_config_here(config, state_path=folder / "state" / "mcsync.db")
        yield Deployment(folder, sandbox, environment(pointed, folder / "state" / "mcsync.db"))
    finally:
        sandbox.close()


class NotifySocket:
    """What systemd does for a Type=notify service: a datagram socket, read all the time (as systemd
    does: a socket nobody reads fills up after a few datagrams), whose messages the test takes in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []      # every message taken so far
        self._inbox: queue.Queue[dict[str, str]] = queue.Queue()
        self._closed = threading.Event()
        self.sock.settimeout(0.05)
        self._reader = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self._inbox.put(dict(line.split("=", 1) for line in data.decode("utf-8").split("\n")))

    def receive(self, timeout: float) -> dict[str, str] | None:
        try:
            message = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        self.messages.append(message)
        return message

    def wait_for(self, key: str, *, within: float, value: str | None = None) -> dict[str, str]:
        """The next message carrying `key` (with `value`, if given), taking the others on the way."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and key in message and (value is None or message[key] == value):
                return message
        raise AssertionError(f"no {key} from the daemon within {within} s; got {self.messages}")

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=2)
        self.sock.close()
