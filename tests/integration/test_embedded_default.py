"""README's first command, and the pip-installable Postgres bundle fallback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psycopg

from pgwake.api.client import PgwakeClient
from pgwake.compute.binaries import _from_pgserver_wheel
from tests.integration.pgwake_fixture import free_port, make_state_dir, serve


def test_serve_demo_prints_a_working_connection_string() -> None:
    """As a new user runs it: no settings, a fresh HOME, the default state dir."""
    base = make_state_dir("pgwake-demo-")
    home, workdir = base / "home", base / "work"
    home.mkdir()
    workdir.mkdir()
    port, metrics_port, api_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("XDG_")},
        "HOME": str(home),
        "PGWAKE_LISTEN": f"127.0.0.1:{port}",
        "PGWAKE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PGWAKE_API_LISTEN": f"127.0.0.1:{api_port}",
    }
    if os.geteuid() == 0:  # root's default, /var/lib/pgwake, belongs to the machine
        env["XDG_DATA_HOME"] = str(home / ".local" / "share")
    state_dir = home / ".local" / "share" / "pgwake"
    process = subprocess.Popen(
        [sys.executable, "-m", "pgwake.cli", "serve", "--demo"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        uri = lines[1].strip()
        assert uri.startswith("postgresql://app.demo:")
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(uri, connect_timeout=30) as conn:
                    assert conn.execute("select current_user").fetchone() == ("app",)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert (state_dir / "catalog.sqlite3").exists()
        assert list(workdir.iterdir()) == []  # nothing in the current directory
        # The demo's storage was measured at create, as every endpoint's is.
        token = (state_dir / "admin-token").read_text().strip()
        client = PgwakeClient(f"http://127.0.0.1:{api_port}", token)
        assert client.get_endpoint("demo").disk_bytes
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        shutil.rmtree(base, ignore_errors=True)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if " WARNING " in line] == []


def test_pgserver_wheel_binaries_run_computes() -> None:
    """On a machine without Postgres, pip's pgserver wheel supplies PostgreSQL 16."""
    bindir = _from_pgserver_wheel()
    assert bindir is not None, "pgserver is a dependency of pgwake on Linux"
    with serve(["bundled"], fresh=True, pg_bindir=str(bindir)) as server:
        with psycopg.connect(server.dsn("bundled"), connect_timeout=60) as conn:
            row = conn.execute("select current_setting('server_version_num')::int").fetchone()
        assert row is not None
        assert row[0] // 10000 == 16
