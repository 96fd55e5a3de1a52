"""Settings precedence: a flag beats env, env beats TOML, TOML beats the default."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from pgwake.settings import Settings, load_settings, parse_host_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PGWAKE_* variable from the outside world leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("PGWAKE_"):
            monkeypatch.delenv(key)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pgwake.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.idle_timeout == 300.0
    assert settings.listen == "127.0.0.1:6432"
    assert settings.listen_address == ("127.0.0.1", 6432)
    assert settings.metrics_address == ("127.0.0.1", 9187)
    assert settings.base_domain is None


def test_toml_beats_default(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'idle_timeout = 42\nlisten = "0.0.0.0:5433"\n')
    settings = load_settings(config)
    assert settings.idle_timeout == 42.0
    assert settings.listen_address == ("0.0.0.0", 5433)
    assert settings.wake_timeout == 30.0  # not in the file: the default


def test_env_beats_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGWAKE_IDLE_TIMEOUT", "7")
    config = write_toml(tmp_path, "idle_timeout = 42\nwake_timeout = 9\n")
    settings = load_settings(config)
    assert settings.idle_timeout == 7.0
    assert settings.wake_timeout == 9.0


def test_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGWAKE_IDLE_TIMEOUT", "7.5")
    assert load_settings().idle_timeout == 7.5


def test_flag_beats_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGWAKE_IDLE_TIMEOUT", "7")
    config = write_toml(tmp_path, "idle_timeout = 42\n")
    assert load_settings(config, idle_timeout=3).idle_timeout == 3.0


def test_unset_flag_does_not_hide_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI passes None for every flag not given.
    monkeypatch.setenv("PGWAKE_IDLE_TIMEOUT", "7")
    assert load_settings(idle_timeout=None).idle_timeout == 7.0


def test_toml_is_forgotten_after_load(tmp_path: Path) -> None:
    load_settings(write_toml(tmp_path, "idle_timeout = 42\n"))
    assert load_settings().idle_timeout == 300.0


@pytest.mark.parametrize("listen", ["nonsense", "6432", ":6432", "host:", "host:99999", "h:p"])
def test_bad_listen_flag(listen: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        load_settings(listen=listen)


def test_bad_listen_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGWAKE_LISTEN", "no-port")
    with pytest.raises(pydantic.ValidationError):
        load_settings()


def test_bad_listen_toml(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError):
        load_settings(write_toml(tmp_path, 'listen = "no-port"\n'))


def test_ipv6_listen() -> None:
    assert load_settings(listen="[::1]:6432").listen_address == ("::1", 6432)
    assert parse_host_port("[::]:0") == ("::", 0)


def test_metrics_off() -> None:
    assert load_settings(metrics_listen="").metrics_address is None


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_duration(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PGWAKE_IDLE_TIMEOUT", value)
    with pytest.raises(pydantic.ValidationError):
        load_settings()


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="idle_timeuot"):
        load_settings(write_toml(tmp_path, "idle_timeuot = 42\n"))


def test_unknown_flag_is_an_error() -> None:
    with pytest.raises(pydantic.ValidationError):
        load_settings(idle_timeuot=42)


def test_bad_log_level(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError):
        load_settings(write_toml(tmp_path, 'log_level = "loud"\n'))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


def test_base_domain_is_normalised() -> None:
    assert load_settings(base_domain="PG.Example.COM.").base_domain == "pg.example.com"
    assert load_settings(base_domain="").base_domain is None


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.idle_timeout = 1.0


def test_every_field_is_documented() -> None:
    # The CLI and docs/configuration.md are generated from these descriptions.
    for name, field in Settings.model_fields.items():
        assert field.description, name
