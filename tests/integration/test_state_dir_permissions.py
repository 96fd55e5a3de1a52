"""A local user on pgwake's host tries to copy the state dir's secrets, and cannot.

The catalog holds every endpoint's SCRAM verifiers and the API tokens' hashes: enough for
an offline dictionary attack. Postgres keeps the same in a superuser-only catalog inside
a 0700 PGDATA; pgwake keeps its state dir that way (see ``pgwake.state_dir``).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest

from pgwake.state_dir import MOCK_SECRET, SECRET_FILES, StateDir
from tests.integration.pgwake_fixture import ADMIN_TOKEN, Pgwake, serve

TIGHTENED = "event=state_dir_permissions_tightened"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secret_files(state: StateDir) -> list[Path]:
    return [state.path / name for name in SECRET_FILES if (state.path / name).exists()]


def _open_to_others(root: Path) -> list[Path]:
    """Files under ``root`` another local user can read: the file is readable by others
    and every directory from ``root`` down to it lets others pass."""
    found = []
    for directory, _, names in os.walk(root):
        path = Path(directory)
        reachable = all(
            mode(step) & stat.S_IXOTH for step in (path, *path.parents) if step.is_relative_to(root)
        )
        if not reachable:
            continue
        for name in names:
            file = path / name
            if file.is_file() and not file.is_symlink() and mode(file) & stat.S_IROTH:
                found.append(file)
    return found


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, user="nobody", capture_output=True, text=True, timeout=30)


def _connects(server: Pgwake, endpoint: str) -> None:
    with psycopg.connect(server.dsn(endpoint), connect_timeout=60) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_local_user_cannot_copy_verifiers_tokens_or_keys(pgwake: Pgwake) -> None:
    pgwake.create("victim")
    pgwake.start()
    _connects(pgwake, "victim")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=pgwake.api_url, headers=headers, timeout=60) as api:
        minted = api.post("/v1/tokens", json={"label": "ci"})
    assert minted.status_code == 201, minted.text
    state = StateDir(pgwake.state_dir)

    # What the attacker is after, and proof that the state dir really holds it.
    needles = {
        "a SCRAM verifier": b"SCRAM-SHA-256$",
        "an API token's hash": hashlib.sha256(minted.json()["token"].encode()).hexdigest().encode(),
        "the management password": state.admin_password.read_bytes().strip(),
        "the SCRAM mock secret": (state.path / MOCK_SECRET).read_bytes(),
        "the TLS key": b"PRIVATE KEY",
    }
    catalog = b"".join(path.read_bytes() for path in state.path.glob("catalog.sqlite3*"))
    assert needles["a SCRAM verifier"] in catalog
    assert needles["an API token's hash"] in catalog
    assert needles["the TLS key"] in state.tls_key.read_bytes()

    # Every secret file is 0600, tls/ 0700; the state dir cannot be listed by others.
    secret_files = _secret_files(state)
    assert {
        state.catalog,
        state.admin_password,
        state.path / MOCK_SECRET,
        state.tls_key,
        state.tls_cert,
    } <= set(secret_files)
    assert {path: mode(path) for path in secret_files} == dict.fromkeys(secret_files, 0o600)
    assert mode(state.tls_dir) == 0o700
    assert mode(state.path) & 0o066 == 0, oct(mode(state.path))  # no listing, no writing

    # Whatever others can read holds none of it (the compute's own files included).
    for path in _open_to_others(state.path):
        data = path.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{path} holds {what} and others can read it"

    # And for real, as an unprivileged user.
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' to attack with")
    listing = _as_nobody("ls", str(state.path))
    assert listing.returncode != 0
    assert "Permission denied" in listing.stderr
    for path in secret_files:
        copy = _as_nobody("cat", str(path))
        assert copy.returncode != 0, path
        assert copy.stdout == "", path


class _GeneratedAdminToken(Pgwake):
    """A server without ``PGWAKE_ADMIN_TOKEN``: it makes its own into the state dir."""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        del env["PGWAKE_ADMIN_TOKEN"]
        return env


def test_a_state_dir_pgwake_creates_is_private_from_the_start() -> None:
    with serve(fresh=True, server=_GeneratedAdminToken) as server:
        state = StateDir(server.state_dir)
        server.create("first")  # through the API, with the token read from its file
        _connects(server, "first")
        assert mode(state.path) == state.mode
        assert state.admin_token.exists()
        for path in _secret_files(state):
            assert mode(path) == 0o600, path
        assert mode(state.tls_dir) == 0o700
        assert TIGHTENED not in server.log_text()


def _loosen(state: StateDir) -> list[Path]:
    """Open the state dir up the way older pgwake versions left it; return its secrets."""
    state.path.chmod(0o755)
    state.tls_dir.chmod(0o755)
    files = _secret_files(state)
    for path in files:
        path.chmod(0o644)
    return files


def test_an_open_state_dir_is_tightened_at_startup_with_a_warning(pgwake: Pgwake) -> None:
    pgwake.create("kept")
    pgwake.start()
    _connects(pgwake, "kept")
    assert pgwake.stop() == 0
    assert TIGHTENED not in pgwake.log_text()  # the fixture's layout is pgwake's own
    state = StateDir(pgwake.state_dir.resolve())

    # The CLI working on the catalog itself owns the state dir too.
    loosened = _loosen(state)
    listing = pgwake.cli("endpoint", "list")
    assert "kept" in listing.stdout
    assert f"{TIGHTENED} path={state.path} mode=0755 now=0711" in listing.stderr
    for path in loosened:
        assert f"{TIGHTENED} path={path} mode=0644 now=0600" in listing.stderr

    loosened = _loosen(state)
    offset = len(pgwake.log_text())
    pgwake.start()
    log = pgwake.log_text()[offset:]
    assert f"{TIGHTENED} path={state.path} mode=0755 now=0711" in log
    assert f"{TIGHTENED} path={state.tls_dir} mode=0755 now=0700" in log
    assert {state.catalog, state.admin_password, state.tls_key} <= set(loosened)
    for path in loosened:
        assert f"{TIGHTENED} path={path} mode=0644 now=0600" in log
        assert mode(path) == 0o600, path
    assert mode(state.path) == 0o711
    assert mode(state.tls_dir) == 0o700
    _connects(pgwake, "kept")
