from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from mcsync.config import find_config, load_config, plugin_settings
from mcsync.errors import ConfigError
from mcsync.http import check_url
from mcsync.targets.base import TargetSettings

BASE = """
[institution]
name = "Hogeschool Zeeland"
brin = "30GB"

[[sources]]
name = "canvas"
adapter = "canvas-csv"
mapping = "mappings/example.toml"

[targets.edubadges]
enabled = true
client_id = "mcsync"
client_secret = "from-file"
"""


class DemoSettings(TargetSettings):
    client_id: str
    client_secret: SecretStr
    cert_file: Path | None = None


def write(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "mcsync.toml"
    path.write_text(text)
    return path


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MCSYNC_TARGETS__EDUBADGES__CLIENT_SECRET", "from-env")
    monkeypatch.setenv("MCSYNC_STATE__PATH", "/var/lib/mcsync/state.db")
    config = load_config(write(tmp_path))
    assert config.settings.targets["edubadges"]["client_secret"] == "from-env"
    assert config.state_path == Path("/var/lib/mcsync/state.db")


def test_relative_paths_are_resolved_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path))
    assert config.state_path == tmp_path / "mcsync.db"
    assert config.resolve(config.settings.sources[0].mapping) == tmp_path / "mappings" / "example.toml"


def test_secret_file_and_credentials_directory(tmp_path, monkeypatch):
    config = load_config(write(tmp_path))
    (tmp_path / "secret.txt").write_text("s3cr3t-value\n")
    settings = plugin_settings(DemoSettings, {"client_id": "x", "client_secret_file": "secret.txt",
                                              "cert_file": "pki/client.pem"}, config=config, key="targets.demo")
    assert settings.client_secret.get_secret_value() == "s3cr3t-value"
    assert settings.cert_file == tmp_path / "pki" / "client.pem"
    assert "s3cr3t" not in repr(settings)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "edubadges-secret").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = plugin_settings(DemoSettings, {"client_id": "x", "client_secret_file": "edubadges-secret"},
                               config=config, key="targets.demo")
    assert settings.client_secret.get_secret_value() == "from-systemd"
    with pytest.raises(ConfigError, match="targets.demo.client_secret_file: secret file 'missing' not found"):
        plugin_settings(DemoSettings, {"client_id": "x", "client_secret_file": "missing"}, config=config,
                        key="targets.demo")


def test_errors_name_key_and_file_but_never_the_value(tmp_path):
    config = load_config(write(tmp_path))
    with pytest.raises(ConfigError) as info:
        plugin_settings(DemoSettings, {"client_secret": "hunter22-secret", "unknown_key": 1}, config=config,
                        key="targets.demo")
    text = str(info.value)
    assert str(tmp_path / "mcsync.toml") in text
    assert "targets.demo.client_id: Field required" in text and "targets.demo.unknown_key" in text
    assert "hunter22" not in text


def test_core_section_errors(tmp_path):
    bad = BASE.replace('brin = "30GB"', 'brin = "30gb"').replace('mapping = "mappings/example.toml"\n', "")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    assert "institution.brin" in str(info.value) and "sources.0.mapping: Field required" in str(info.value)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[institution\n"))


def test_config_location_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MCSYNC_CONFIG", raising=False)
    assert find_config(None) == Path("mcsync.toml")
    monkeypatch.setenv("MCSYNC_CONFIG", "/etc/mcsync/mcsync.toml")
    assert find_config(None) == Path("/etc/mcsync/mcsync.toml")
    assert find_config("x.toml") == Path("x.toml")


@pytest.mark.parametrize("url", ["https://api.edubadges.nl", "http://127.0.0.1:8765/x", "http://localhost/x",
                                 "http://[::1]:80/"])
def test_https_or_loopback_only(url):
    assert check_url(url, key="k")


@pytest.mark.parametrize("url", ["http://api.edubadges.nl", "ftp://x", "http://10.0.0.1/", "api.edubadges.nl"])
def test_plain_http_elsewhere_is_refused(url):
    with pytest.raises(ConfigError, match="not an https:// URL"):
        check_url(url, key="targets.edubadges.api_url")
