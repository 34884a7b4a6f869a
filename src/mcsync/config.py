"""Configuration: one TOML file, overridable from the environment (interface.md §1).

Where the file is: `--config PATH`, else `$MCSYNC_CONFIG`, else `./mcsync.toml`.
Precedence: environment (`MCSYNC_<SECTION>__<KEY>`, e.g. `MCSYNC_TARGETS__EDUBADGES__CLIENT_SECRET`)
over the file. A secret may be given as `<key>_file = "/path"` (systemd `LoadCredential=`: a relative
path is looked up in `$CREDENTIALS_DIRECTORY` first). Relative paths are resolved against the config
file's folder. Errors name the key and the file. Secrets are `SecretStr` everywhere: printing a
settings object never shows them.

The core validates its own sections; each adapter's `options` and each target's table are validated
by that plugin's own model (`plugin_settings`) once the plugin is loaded, so plugins need no change
here (a closed union of plugin configs would block third-party plugins).
"""

from __future__ import annotations

import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import log
from .errors import ConfigError
from .record import Issuer

DEFAULT_CONFIG = "mcsync.toml"
M = TypeVar("M", bound=BaseModel)


class InstitutionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    country: str = Field(default="NL", pattern=r"^[A-Z]{2}$")
    brin: str = Field(pattern=r"^[0-9]{2}[A-Z]{2}$")
    oin: str | None = Field(default=None, pattern=r"^[0-9A-Z]{20}$")
    onderwijsaanbiedercode: str | None = Field(default=None, pattern=r"^\d{3}A\d{3}$")
    eppn_template: str | None = Field(default=None, description="e.g. '{student_number}@student.hz.nl'")

    @field_validator("eppn_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            value.format(student_number="s1", given_name="g", family_name="f", email="e@x.nl")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"uses an unknown placeholder {exc}; use {{student_number}}") from None
        return value

    def issuer(self) -> Issuer:
        return Issuer(name=self.name, country=self.country, brin=self.brin, oin=self.oin,
                      onderwijsaanbiedercode=self.onderwijsaanbiedercode)


class StateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Path("mcsync.db")


class SourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    adapter: str
    mapping: Path
    enabled: bool = True
    options: dict[str, Any] = {}


class LearnersSettings(BaseModel):
    """A `[[learners]]` entry; options may sit in `options` or directly in the table."""

    model_config = ConfigDict(extra="allow")

    adapter: str = "learners-csv"
    name: str = "learners"
    options: dict[str, Any] = {}

    def all_options(self) -> dict[str, Any]:
        return {**(self.model_extra or {}), **self.options}


class GuardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_withdraw_share: float = Field(
        default=0.2, ge=0, le=1,
        description="refuse to withdraw more than this share of a source's records because they vanished "
                    "from its export in one run (an emptied export is always refused)")
    min_count: int = Field(default=10, ge=1,
                           description="below this many vanished records the share is not checked")


class DaemonSettings(BaseModel):
    """`[daemon]`: how `mcsync daemon` schedules its runs."""

    model_config = ConfigDict(extra="forbid")

    interval: float = Field(default=900.0, gt=0,
                            description="seconds from the start of one sync to the start of the next "
                                        "(a run that takes longer is followed at once)")
    stall_timeout: float = Field(default=3600.0, gt=0,
                                 description="seconds without any sign of life (a log line, an HTTP request, "
                                             "a scheduler tick) after which the systemd watchdog is no longer "
                                             "fed, so systemd restarts the daemon")


class DeliverySettings(BaseModel):
    """`[delivery]`: how many processes deliver side by side (see mcsync.lanes)."""

    model_config = ConfigDict(extra="forbid")

    processes: Literal["auto"] | int = Field(
        default="auto", description="at most this many processes deliver at once, each to its own group of "
                                    "targets (Edubadges | RIO and the DUO register); 1: all in the main "
                                    "process; auto: as many as there are groups and CPU cores")
    min_backlog: int = Field(default=5000, ge=1,
                             description="a group of targets gets a process of its own only with at least "
                                         "this many items due (a process costs about half a second to start)")
    during_planning: bool = Field(
        default=True, description="a process may start while the exports are still being read and planned, "
                                  "delivering what is planned so far; a record that occurs in several rows "
                                  "of one run (a resit) may then reach a target in an earlier version first, "
                                  "corrected later in the same run. false: delivery starts after planning")
    max_backlog: int = Field(
        default=20_000, ge=0,
        description="back-pressure while planning goes on beside delivery processes: planning waits while a "
                    "process has more than this many items pending for one of its targets and is working them "
                    "off, so that a slower target has no long tail after planning; 0: planning never waits")

    @field_validator("processes")
    @classmethod
    def _positive(cls, value: Literal["auto"] | int) -> Literal["auto"] | int:
        if value != "auto" and value < 1:
            raise ValueError("must be at least 1, or \"auto\"")
        return value


class MetricsSettings(BaseModel):
    """`[metrics]`: Prometheus metrics, written after every run and optionally served by the daemon."""

    model_config = ConfigDict(extra="forbid")

    textfile: Path | None = Field(default=None,
                                  description="file for node_exporter's textfile collector (must end in .prom), "
                                              "rewritten atomically after every run")
    listen: str | None = Field(default=None,
                               description="host:port where `mcsync daemon` serves /metrics, "
                                           "e.g. 127.0.0.1:9464 or [::1]:9464")

    @field_validator("textfile")
    @classmethod
    def _prom(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".prom":
            raise ValueError("must end in .prom (node_exporter's textfile collector reads only *.prom files)")
        return value

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value


def listen_address(value: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464' or ':9464' (all addresses) as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9464 or [::1]:9464)")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MCSYNC_", env_nested_delimiter="__", extra="forbid",
                                      case_sensitive=False)

    institution: InstitutionSettings
    state: StateSettings = StateSettings()
    learners: list[LearnersSettings] = []
    sources: list[SourceSettings] = []
    targets: dict[str, dict[str, Any]] = {}
    guard: GuardSettings = GuardSettings()
    daemon: DaemonSettings = DaemonSettings()
    delivery: DeliverySettings = DeliverySettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceSettings]) -> list[SourceSettings]:
        names = [s.name for s in sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source names must be unique; used twice: {', '.join(twice)}")
        return sources


@dataclass(frozen=True)
class Config:
    """The validated configuration and where it came from."""

    settings: Settings
    path: Path
    base_dir: Path

    def resolve(self, path: Path | str) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def state_path(self) -> Path:
        return self.resolve(self.settings.state.path)

    def target_table(self, name: str) -> dict[str, Any] | None:
        return self.settings.targets.get(name)

    def enabled_targets(self) -> list[str]:
        return [name for name, table in self.settings.targets.items()
                if str(table.get("enabled", True)).lower() not in ("false", "0", "no")]


def find_config(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("MCSYNC_CONFIG"):
        return Path(os.environ["MCSYNC_CONFIG"])
    return Path(DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    """Read, merge with the environment, and validate. ConfigError names key and file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("configuration file not found", file=str(path),
                          hint="pass --config FILE, set MCSYNC_CONFIG, or start from config.example.toml") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc), file=str(path)) from None
    return Config(settings=settings, path=path, base_dir=path.resolve().parent)


def describe_validation(exc: ValidationError, prefix: str = "") -> str:
    """'targets.edubadges.client_secret: Field required; ...' — values are never echoed (secrets)."""
    parts = []
    for error in exc.errors():
        key = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
        parts.append(f"{key}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(arg is SecretStr for arg in typing.get_args(annotation))
    return False


def _is_collection(annotation: Any) -> bool:
    origins = {typing.get_origin(a) or a for a in (annotation, *typing.get_args(annotation))}
    return bool(origins & {list, dict, set, tuple})


def _from_environment(value: str, key: str, config: Config) -> Any:
    """A list or table given as text (an environment override) is read as JSON: '[1, 2]'."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ConfigError(f"expects a list or table, written as JSON (e.g. [1.0, 5.0]), got {value!r}",
                          file=str(config.path), key=key) from None


def _read_secret_file(value: str, base_dir: Path, key: str, file: Path) -> str:
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else []
    if not path.is_absolute():
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / path)
        candidates.append(base_dir / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").rstrip("\r\n")
    raise ConfigError(f"secret file {value!r} not found", file=str(file), key=key)


def plugin_settings(model: type[M], raw: dict[str, Any], *, config: Config, key: str) -> M:
    """Validate a plugin's table with its own model: `<secret>_file` read, relative paths resolved."""
    data = dict(raw)
    for name, field in model.model_fields.items():
        if isinstance(data.get(name), str) and _is_collection(field.annotation):
            data[name] = _from_environment(data[name], f"{key}.{name}", config)
        file_key = f"{name}_file"
        if _is_secret(field.annotation) and file_key in data and file_key not in model.model_fields:
            data[name] = _read_secret_file(str(data.pop(file_key)), config.base_dir, f"{key}.{file_key}",
                                           config.path)
    try:
        settings = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc, key), file=str(config.path)) from None
    updates = {}
    for name, field in model.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = config.resolve(value)
    for secret in secret_values(settings):
        log.register_secret(secret)
    return settings.model_copy(update=updates) if updates else settings


def secret_values(settings: BaseModel) -> list[str]:
    """Every SecretStr value inside a settings object (for the log redaction filter)."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            found.extend(secret_values(value))
    return found
