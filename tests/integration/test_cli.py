"""The ``pgwake`` command: endpoint create/list/delete, settings, help, clear failures."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from pgwake.endpoint.passwords import password_problem
from pgwake.settings import Settings
from tests.integration.pgwake_fixture import ADMIN_TOKEN, Pgwake, make_state_dir


def test_create_list_delete_from_an_empty_state_dir() -> None:
    """The whole first-run path: no template yet, pgwake makes it with initdb."""
    state_dir = make_state_dir()
    server = Pgwake(state_dir / "state")
    try:
        created = server.cli(
            "endpoint", "create", "first", "--password", "pass word", "--idle-timeout", "42"
        )
        uri = created.stdout.strip().splitlines()[-1]
        assert uri == f"postgresql://app.first:pass%20word@127.0.0.1:{server.port}/app"
        assert "pass word" not in created.stderr  # the password is only in the URI line
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
        with psycopg.connect(uri, sslmode="require", connect_timeout=60) as conn:
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
        # Nothing stored anywhere holds the plaintext password.
        for path in (state_dir / "state").rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert b"pass word" not in path.read_bytes(), path
    finally:
        leftovers = server.cleanup()
        shutil.rmtree(state_dir, ignore_errors=True)
    assert not leftovers


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
            "x-password",
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
            "x-password",
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


def test_one_password_rule_and_one_message_from_the_cli_and_the_api(pgwake: Pgwake) -> None:
    """README's old example password (6 characters) is refused the same way by the CLI on
    the local catalog, the HTTP API and the CLI through the API."""
    message = password_problem("s3cret")
    assert message is not None
    assert "at least 8 characters" in message

    local = pgwake.cli("endpoint", "create", "short", "--password", "s3cret", check=False)
    assert (local.returncode, local.stderr.strip()) == (1, f"pgwake: {message}")
    assert "short" not in pgwake.cli("endpoint", "list").stdout

    pgwake.start()
    response = httpx.post(
        f"{pgwake.api_url}/v1/endpoints",
        json={"name": "short", "password": "s3cret"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 422
    assert response.json() == {"error": {"code": "invalid_password", "message": message}}

    remote = pgwake.cli("endpoint", "create", "short", "--password", "s3cret", check=False)
    assert (remote.returncode, remote.stderr.strip()) == (1, f"pgwake: {message}")
    pgwake.create("long-enough", password="s3cret-pw")
    changed = pgwake.cli("endpoint", "password", "long-enough", "--password", "s3cret", check=False)
    assert (changed.returncode, changed.stderr.strip()) == (1, f"pgwake: {message}")


def _fields(text: str) -> dict[str, str]:
    """``endpoint get``'s ``name: value`` lines."""
    return {
        name: value.strip()
        for name, _, value in (line.partition(":") for line in text.splitlines())
    }


def _moment(shown: str) -> float:
    """The unix time of ``endpoint get``'s ``<ISO 8601> (<age>)``."""
    iso, _, age = shown.partition(" ")
    assert age.startswith("("), shown
    assert age.endswith(")"), shown
    return datetime.datetime.fromisoformat(iso).timestamp()


def test_list_and_get_read_at_a_glance(pgwake: Pgwake) -> None:
    """The idle timeout in effect (not ``default``), LAST ACTIVE when the last session
    ended (not when the compute was suspended), ISO times, empty lists shown empty."""
    uri = pgwake.create("glance")  # no --idle-timeout: the server's 300 s
    assert pgwake.cli("endpoint", "list").stdout.splitlines()[1].split()[3] == "300s"

    pgwake.start()
    # Measured by the create on the local catalog, before the server ran.
    assert pgwake.cli("endpoint", "list").stdout.splitlines()[1].split()[-1].endswith("MB")
    with psycopg.connect(uri, sslmode="disable", connect_timeout=60) as conn:
        conn.execute("select 1")
    ended = time.time()
    time.sleep(3)
    pgwake.cli("endpoint", "suspend", "glance")
    suspended = time.time()

    row = pgwake.cli("endpoint", "list").stdout.splitlines()[1].split()
    assert row[:4] == ["glance", "suspended", "local", "300s"]
    assert row[5] == "ago"
    assert row[4].endswith("s")
    assert int(row[4][:-1]) >= 2  # the session's end, not the suspend a moment ago

    shown = _fields(pgwake.cli("endpoint", "get", "glance").stdout)
    assert shown["idle_timeout_seconds"] == "300"
    assert ended - 2 <= _moment(shown["last_active"]) <= ended + 1 < suspended - 1
    assert abs(_moment(shown["created_at"]) - ended) < 120
    assert shown["expires_at"] == "-"
    assert shown["allowed_cidrs"] == ""
    assert shown["compute_options"] == ""
    assert shown["sessions"] == "0"
    assert shown["connection_uri"] == f"postgresql://app.glance@127.0.0.1:{pgwake.port}/app"

    api = httpx.get(
        f"{pgwake.api_url}/v1/endpoints/glance",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    ).json()
    assert api["idle_timeout_seconds"] == 300
    assert ended - 1 <= api["last_active"] <= ended + 1


def test_a_branch_can_have_a_ttl(pgwake: Pgwake) -> None:
    """``endpoint branch --ttl``, as the API's ``ttl_seconds``."""
    pgwake.create("trunk")
    pgwake.start()
    before = time.time()
    out = pgwake.cli("endpoint", "branch", "trunk", "twig", "--ttl", "3600").stdout
    assert "created endpoint twig, a branch of trunk" in out
    shown = _fields(pgwake.cli("endpoint", "get", "twig").stdout)["expires_at"]
    assert shown.endswith("(in 59m)") or shown.endswith("(in 1h)"), shown
    expires = _moment(shown)
    assert before + 3600 - 2 <= expires <= time.time() + 3600 + 1
