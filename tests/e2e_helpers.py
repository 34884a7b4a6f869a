"""An institution on disk (the demo exports, copied) wired to an in-process sandbox on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mcsync.config import Config, load_config
from mcsync.engine import Engine, RunReport
from mcsync.sandbox import Sandbox
from mcsync.state import SqliteStateStore

from .conftest import DEMO

FAST = {"rio": {"poll_intervals": [0.05], "confirm_timeout": 10},
        "duo": {"poll_interval": 0.05, "poll_budget": 10}}


@dataclass
class Institution:
    folder: Path
    sandbox: Sandbox
    config: Config

    def run(self, **kwargs) -> RunReport:
        store = SqliteStateStore(self.config.state_path)
        try:
            return Engine(self.config, store).run(**kwargs)
        finally:
            store.close()

    def store(self) -> SqliteStateStore:
        return SqliteStateStore(self.config.state_path)

    def reload(self) -> None:
        """Re-read the configuration from disk (after a test edited files), keeping the sandbox."""
        self.config = _pointed(self.sandbox, load_config(self.folder / "mcsync.toml"), self.folder)

    def write(self, relative: str, text: str) -> Path:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def append(self, relative: str, text: str) -> None:
        with open(self.folder / relative, "a", encoding="utf-8") as handle:
            handle.write(text)


def _pointed(sandbox: Sandbox, config: Config, folder: Path) -> Config:
    config = sandbox.point_config_here(config, state_path=folder / "state" / "mcsync.db")
    targets = {name: {**table, **FAST.get(name, {})} for name, table in config.settings.targets.items()}
    return Config(settings=config.settings.model_copy(update={"targets": targets}), path=config.path,
                  base_dir=config.base_dir)


@contextmanager
def institution(tmp_path: Path) -> Iterator[Institution]:
    folder = tmp_path / "institution"
    shutil.copytree(DEMO, folder)
    config = load_config(folder / "mcsync.toml")
    sandbox = Sandbox.from_config(config, rio_visibility_delay=0.02, duo_processing_delay=0.02).start()
    try:
        yield Institution(folder, sandbox, _pointed(sandbox, config, folder))
    finally:
        sandbox.close()
