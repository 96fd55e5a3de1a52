"""What ``pgwake`` says about itself: bare, and in ``serve --help``."""

from __future__ import annotations

import pytest

from pgwake.cli.main import main
from pgwake.settings import Settings, shown_choices, shown_default
from pgwake.state_dir import default_path


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_bare_pgwake_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: pgwake")
    for command in ("serve", "stop", "status", "endpoint"):
        assert f"    {command} " in out
    assert err == ""


def test_bare_pgwake_endpoint_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoint"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pgwake endpoint")
    assert "    list " in out


def test_serve_help_shows_real_defaults_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    out = " ".join(help_of(capsys, "serve").split())  # argparse wraps lines anywhere
    assert "Undefined" not in out
    assert "--require-tls {true,false}" in out
    assert "--log-level {debug,info,warning,error}" in out
    assert "--compute-backend {local,docker}" in out
    assert "[PGWAKE_TRUSTED_PROXIES; default: none]" in out
    assert "[PGWAKE_REQUIRE_TLS; default: unset]" in out
    assert "[PGWAKE_IDLE_TIMEOUT; default: 300.0]" in out
    # This user's state dir, not a path relative to wherever pgwake runs.
    assert f"[PGWAKE_STATE_DIR; default: {default_path()}]" in out
    assert "--detach" in out


def test_every_default_is_shown_as_a_value() -> None:
    for name in Settings.model_fields:
        for here in (False, True):
            shown = shown_default(name, here=here)
            assert shown
            assert "Undefined" not in shown
            assert "<" not in shown, (name, shown)  # no repr of a factory or an object
    assert shown_default("state_dir") == "per user"
    assert shown_choices("listen") is None
