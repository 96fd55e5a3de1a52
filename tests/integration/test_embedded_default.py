"""README's first command, and the pip-installable Postgres bundle fallback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psycopg

from pgwake.compute.binaries import _from_pgserver_wheel
from tests.integration.pgwake_fixture import Pgwake, free_port, make_state_dir


def test_serve_demo_prints_a_working_connection_string() -> None:
    workdir = make_state_dir("pgwake-demo-")
    port, metrics_port, api_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PGWAKE_LISTEN": f"127.0.0.1:{port}",
        "PGWAKE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PGWAKE_API_LISTEN": f"127.0.0.1:{api_port}",
    }
    # Default state dir: ./.pgwake in the working directory, as a user would run it.
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
        assert (workdir / ".pgwake" / "catalog.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_pgserver_wheel_binaries_run_computes() -> None:
    """On a machine without Postgres, pip's pgserver wheel supplies PostgreSQL 16."""
    bindir = _from_pgserver_wheel()
    assert bindir is not None, "pgserver is a dependency of pgwake on Linux"
    server = Pgwake(make_state_dir(), pg_bindir=str(bindir))
    try:
        server.create("bundled")
        server.start()
        with psycopg.connect(server.dsn("bundled"), connect_timeout=60) as conn:
            row = conn.execute("select current_setting('server_version_num')::int").fetchone()
        assert row is not None
        assert row[0] // 10000 == 16
    finally:
        leftovers = server.cleanup()
        shutil.rmtree(server.state_dir, ignore_errors=True)
    assert not leftovers
