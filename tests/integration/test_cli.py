"""The ``pgwake`` command: endpoint create/list/delete, settings, help, clear failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from pgwake.settings import Settings
from tests.integration.pgwake_fixture import Pgwake, serve


def test_create_list_delete_from_an_empty_state_dir() -> None:
    """The whole first-run path: no template yet, pgwake makes it with initdb."""
    with serve(fresh=True, start=False) as server:
        created = server.cli(
            "endpoint", "create", "first", "--password", "pw one", "--idle-timeout", "42"
        )
        uri = created.stdout.strip().splitlines()[-1]
        assert uri == (
            f"postgresql://app:pw%20one@127.0.0.1:{server.port}/app?options=endpoint%3Dfirst"
        )
        assert "pw one" not in created.stderr  # the password is only in the URI line
        listing = server.cli("endpoint", "list").stdout
        assert listing.splitlines()[0].split() == [
            "NAME",
            "STATE",
            "BACKEND",
            "IDLE",
            "LAST",
            "ACTIVE",
            "DISK",
        ]
        row = listing.splitlines()[1].split()
        assert row[:4] == ["first", "suspended", "local", "42s"]
        assert row[-1].endswith("MB")

        server.start()
        with psycopg.connect(uri + "&sslmode=require", connect_timeout=60) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert "first    " in server.cli("endpoint", "list").stdout
            assert " running " in server.cli("endpoint", "list").stdout

        duplicate = server.cli("endpoint", "create", "first", check=False)
        assert duplicate.returncode == 1
        assert "already exists" in duplicate.stderr

        assert server.cli("endpoint", "delete", "first").returncode == 0
        assert not server.compute_dir("first").exists()
        assert "first" not in server.cli("endpoint", "list").stdout
        missing = server.cli("endpoint", "delete", "first", check=False)
        assert missing.returncode == 1
        # Nothing stored anywhere holds the plaintext password: the state dir, and the
        # server's log beside it.
        for path in server.state_dir.parent.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert b"pw one" not in path.read_bytes(), path


def test_invalid_endpoint_name_is_refused(pgwake: Pgwake) -> None:
    result = pgwake.cli("endpoint", "create", "Bad_Name", check=False)
    assert result.returncode == 1
    assert "invalid endpoint name" in result.stderr


def test_serve_help_lists_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pgwake.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out
        assert f"PGWAKE_{name.upper()}" in out


def test_bad_setting_is_one_clear_line_and_exit_3(tmp_path: Path) -> None:
    env = {**os.environ, "PGWAKE_LISTEN": "nonsense", "PGWAKE_STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pgwake.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert result.stderr.startswith("pgwake: invalid settings: listen:")
    assert "Traceback" not in result.stderr


def test_config_file_is_read_and_env_beats_it(tmp_path: Path) -> None:
    config = tmp_path / "pgwake.toml"
    config.write_text('listen = "127.0.0.1:1"\nmetrics_listen = ""\n')
    env = {**os.environ, "PGWAKE_STATE_DIR": str(tmp_path / "s")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgwake.cli",
            "endpoint",
            "create",
            "cfg",
            "--config",
            str(config),
            "--password",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "@127.0.0.1:1/app" in result.stdout.splitlines()[-1]
    env["PGWAKE_LISTEN"] = "127.0.0.1:2"
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgwake.cli",
            "endpoint",
            "create",
            "cfg2",
            "--config",
            str(config),
            "--password",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "@127.0.0.1:2/app" in listing.stdout.splitlines()[-1]
    # pytest's tmp dir is private (0700) to root: the computes went to a reachable fallback.
    if os.geteuid() == 0:
        assert not (tmp_path / "s" / "computes" / "endpoints" / "cfg").exists()
    for name in ("cfg", "cfg2"):
        deleted = subprocess.run(
            [
                sys.executable,
                "-m",
                "pgwake.cli",
                "endpoint",
                "delete",
                name,
                "--config",
                str(config),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deleted.returncode == 0, deleted.stderr


def test_second_server_on_the_same_state_dir_is_refused(pgwake: Pgwake) -> None:
    pgwake.start()
    other = Pgwake(pgwake.state_dir)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pgwake.cli", "serve"],
        env=other.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "another pgwake serve is using" in result.stderr
    assert time.monotonic() - started < 30
