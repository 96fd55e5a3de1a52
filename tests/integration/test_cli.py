"""The ``pgwake`` command: endpoint create/list/delete, settings, help, clear failures, one
state dir per user, serve --detach/stop/status, a prompt stop."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from pgwake.endpoint.passwords import password_problem
from pgwake.settings import Settings
from pgwake.state_dir import StateDir
from tests.integration.pgwake_fixture import (
    ADMIN_TOKEN,
    Pgwake,
    free_port,
    make_state_dir,
    postgres_pids_under,
    serve,
    wait_for,
)


def test_create_list_delete_from_an_empty_state_dir() -> None:
    """The whole first-run path: no template yet, pgwake makes it with initdb."""
    with serve(fresh=True, start=False) as server:
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
        # Nothing stored anywhere holds the plaintext password: the state dir, and the
        # server's log beside it.
        for path in server.state_dir.parent.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert b"pass word" not in path.read_bytes(), path


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


# -- one state dir per user, whatever the current directory --------------------------------


def fresh_user() -> tuple[Path, dict[str, str], Path]:
    """A base dir with an empty HOME, free ports and no PGWAKE_* state dir; the env; and
    the default state dir that env gives."""
    base = make_state_dir("pgwake-user-")
    (base / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGWAKE_", "XDG_"))}
    env["HOME"] = str(base / "home")
    if os.geteuid() == 0:  # root's default, /var/lib/pgwake, belongs to the machine
        env["XDG_DATA_HOME"] = str(base / "home" / ".local" / "share")
    env["PGWAKE_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["PGWAKE_METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["PGWAKE_API_LISTEN"] = f"127.0.0.1:{free_port()}"
    return base, env, base / "home" / ".local" / "share" / "pgwake"


def run_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgwake.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_reading_commands_create_no_state_dir_and_name_the_one_they_wanted() -> None:
    base, env, state_dir = fresh_user()
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    try:
        for args in (["endpoint", "list"], ["endpoint", "get", "x"], ["endpoint", "delete", "x"]):
            result = run_in(elsewhere, env, *args)
            assert result.returncode == 1, result
            assert result.stderr.startswith(f"pgwake: no pgwake state dir at {state_dir}:")
            assert "Traceback" not in result.stderr
        status = run_in(elsewhere, env, "status")
        assert status.returncode == 4
        assert status.stdout == f"state dir: {state_dir} (none yet)\n"
        assert not state_dir.exists()
        assert list(elsewhere.iterdir()) == []  # no ./.pgwake either
        # A state dir of an earlier version, ./.pgwake, is pointed at, not taken.
        (elsewhere / ".pgwake").mkdir()
        (elsewhere / ".pgwake" / "catalog.sqlite3").write_bytes(b"")
        hinted = run_in(elsewhere, env, "endpoint", "list")
        assert hinted.returncode == 1
        assert "--state-dir .pgwake" in hinted.stderr
        assert not state_dir.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_every_command_finds_the_one_state_dir_from_any_directory() -> None:
    base, env, state_dir = fresh_user()
    here, there = base / "here", base / "there"
    here.mkdir()
    there.mkdir()
    try:
        created = run_in(here, env, "endpoint", "create", "anywhere", "--password", "pw-12345")
        assert created.returncode == 0, created.stderr
        assert (state_dir / "catalog.sqlite3").exists()
        listing = run_in(there, env, "endpoint", "list")
        assert listing.stdout.splitlines()[1].split()[:2] == ["anywhere", "suspended"]
        missing = run_in(there, env, "endpoint", "get", "nope")
        assert missing.returncode == 1
        assert missing.stderr.splitlines() == [
            'pgwake: endpoint "nope" does not exist',
            f"pgwake: looked in the catalog of {state_dir}",
        ]

        detached = run_in(here, env, "serve", "--detach")
        assert detached.returncode == 0, detached.stderr
        said = re.fullmatch(r"pgwake serve \(pid (\d+)\) listens on .*\n", detached.stdout)
        assert said is not None, detached.stdout
        pid = int(said[1])
        assert StateDir(state_dir).server_pid() == pid
        status = run_in(there, env, "status")
        assert (status.returncode, status.stdout) == (
            0,
            f"state dir: {state_dir}\nserver: running (pid {pid})\n",
        )
        assert "anywhere " in run_in(there, env, "endpoint", "list").stdout  # through the API
        missing = run_in(there, env, "endpoint", "get", "nope")
        assert missing.returncode == 1
        assert missing.stderr.splitlines()[-1] == (
            f"pgwake: asked pgwake serve (pid {pid}) on {state_dir} through its API on "
            f"{env['PGWAKE_API_LISTEN']} (token: {state_dir / 'admin-token'})"
        )
        again = run_in(there, env, "serve", "--detach")
        assert again.returncode == 3
        assert f"pgwake serve (pid {pid}) already runs on {state_dir}" in again.stderr

        stopped = run_in(there, env, "stop")
        assert stopped.stdout == f"stopped pgwake serve (pid {pid}) on {state_dir}\n"
        assert run_in(there, env, "status").returncode == 3
        assert run_in(there, env, "stop").returncode == 1
        assert "event=stopped" in (state_dir / "serve.log").read_text()
        assert [p.name for p in there.iterdir()] == []
    finally:
        run_in(base, env, "stop")
        leftovers = postgres_pids_under(base)
        shutil.rmtree(base, ignore_errors=True)
    assert not leftovers


def test_serve_detach_shows_why_it_did_not_start() -> None:
    base, env, state_dir = fresh_user()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["PGWAKE_LISTEN"] = f"127.0.0.1:{taken.getsockname()[1]}"
        try:
            started = time.monotonic()
            result = run_in(base, env, "serve", "--detach")
            assert time.monotonic() - started < 60
            assert result.returncode == 3
            assert f"pgwake: cannot listen on {env['PGWAKE_LISTEN']}" in result.stderr
            assert f"its log: {state_dir / 'serve.log'}" in result.stderr
            assert result.stdout == ""
            assert not StateDir(state_dir).server_running()
        finally:
            shutil.rmtree(base, ignore_errors=True)


# -- stopping -------------------------------------------------------------------------------


def test_sigint_stops_an_idle_server_with_a_running_compute_promptly(pgwake: Pgwake) -> None:
    """Nothing to drain, one compute to suspend: no timer should hold the exit up."""
    pgwake.create("prompt")
    pgwake.start()
    with psycopg.connect(pgwake.dsn("prompt"), connect_timeout=60) as conn:
        conn.execute("select 1")
    pgwake.wait_state("prompt", "running")
    wait_for(lambda: pgwake.metric("pgwake_client_connections_active", endpoint="prompt") == 0)
    process = pgwake.process
    assert process is not None
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=1.5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running 1.5 s after SIGINT:\n{pgwake.log_text()}") from None
    elapsed = time.monotonic() - started
    assert process.returncode == 0, pgwake.log_text()
    assert "to=suspended trigger=stopped" in pgwake.log_text()
    assert pgwake.postgres_pids() == [], f"stopped in {elapsed:.2f} s, computes left"
    # A copy of the template the server was making is stopped, not waited for, and gone.
    spares = pgwake.state_dir / "computes" / "spares"
    assert [p.name for p in spares.iterdir() if p.name.startswith(".")] == []


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
    assert shown["sessions"] == "0 (0 active, 0 idle, 0 parked, 0 pinned)"
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


def test_session_settings_at_create_and_update_locally_and_through_the_server(
    pgwake: Pgwake,
) -> None:
    """``--park-sessions``/``--pinned-session-timeout`` on the catalog, then ``endpoint
    update`` through the server's API, which changes only the flags given."""
    pgwake.cli(
        "endpoint", "create", "held", "--park-sessions", "false", "--pinned-session-timeout", "60"
    )
    shown = _fields(pgwake.cli("endpoint", "get", "held").stdout)
    assert (shown["park_sessions"], shown["pinned_session_timeout_seconds"]) == ("false", "60")
    assert shown["compute_other_sessions"] == "-"

    pgwake.start()
    pgwake.cli("endpoint", "update", "held", "--park-sessions", "true", "--idle-timeout", "5")
    api = httpx.get(
        f"{pgwake.api_url}/v1/endpoints/held",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    ).json()
    assert (api["park_sessions"], api["pinned_session_timeout_seconds"]) == (True, 60)
    assert api["idle_timeout_seconds"] == 5
    assert api["session_states"] == {"active": 0, "idle": 0, "parked": 0, "pinned": 0}
    assert api["pinned_sessions"] == []
    out = pgwake.cli("endpoint", "update", "held", "--pinned-session-timeout", "never").stdout
    assert _fields(out)["pinned_session_timeout_seconds"] == "-"
    nothing = pgwake.cli("endpoint", "update", "held", check=False)
    assert nothing.returncode == 1
    assert "nothing to change" in nothing.stderr
