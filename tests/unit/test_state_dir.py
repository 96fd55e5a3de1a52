"""The state dir's permissions: secrets 0600 whatever the umask, loose layouts tightened."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwake.api import client
from pgwake.catalog import Catalog
from pgwake.cli.endpoint_remote import settings_admin_token
from pgwake.edge.tls import ensure_self_signed
from pgwake.server import Server, StartupFailure
from pgwake.settings import load_settings
from pgwake.state_dir import (
    ADMIN_PASSWORD,
    ADMIN_TOKEN,
    MOCK_SECRET,
    SECRET_FILES,
    SYSTEM_STATE_DIR,
    StateDir,
    UnsafeStateDir,
    configured_path,
    create_private,
    default_path,
    private_dir,
    write_private,
)

#: What pgwake gives a state dir it creates: the compute user passes through as root.
NEW_DIR_MODE = 0o711 if os.geteuid() == 0 else 0o700


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run under a usual and a wide-open umask: the modes must not depend on it."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


# -- where it is ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "euid", "expected"),
    [
        ({"HOME": "/home/ann"}, 1000, "/home/ann/.local/share/pgwake"),
        ({"HOME": "/home/ann", "XDG_DATA_HOME": "/data/ann"}, 1000, "/data/ann/pgwake"),
        # The XDG spec: an empty or relative XDG_DATA_HOME is ignored.
        ({"HOME": "/home/ann", "XDG_DATA_HOME": ""}, 1000, "/home/ann/.local/share/pgwake"),
        ({"HOME": "/home/ann", "XDG_DATA_HOME": "data"}, 1000, "/home/ann/.local/share/pgwake"),
        ({"HOME": "/root"}, 0, str(SYSTEM_STATE_DIR)),
        ({"HOME": "/root", "XDG_DATA_HOME": "/data/root"}, 0, "/data/root/pgwake"),
    ],
)
def test_the_default_state_dir_is_per_user(
    environ: dict[str, str], euid: int, expected: str
) -> None:
    assert default_path(environ, euid) == Path(expected)


def test_the_default_state_dir_does_not_depend_on_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGWAKE_STATE_DIR", raising=False)
    assert default_path().is_absolute()
    assert load_settings().state_dir == default_path() == configured_path()
    monkeypatch.setenv("PGWAKE_STATE_DIR", "/elsewhere")
    assert load_settings().state_dir == configured_path() == Path("/elsewhere")
    assert load_settings(state_dir="/flag").state_dir == Path("/flag")
    assert list(tmp_path.iterdir()) == []


# -- a new state dir ---------------------------------------------------------------------


def test_a_new_state_dir_is_not_readable_by_others(tmp_path: Path, umask: int) -> None:
    state = StateDir(tmp_path / "a" / "state")
    assert not state.path.exists()  # building one touches nothing
    assert state.ensure() == []
    assert mode(state.path) == NEW_DIR_MODE
    assert state.check() == []


def test_secrets_are_made_once_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    state = StateDir(tmp_path)
    made: list[Path] = []
    first = state.secret(ADMIN_PASSWORD, lambda: b"first", on_create=made.append)
    again = state.secret(ADMIN_PASSWORD, lambda: b"second", on_create=made.append)
    assert first == again == b"first"
    assert made == [state.admin_password]
    assert mode(state.admin_password) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADMIN_PASSWORD]  # no temp files


def test_racing_creators_all_read_the_one_winner(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    start = threading.Barrier(16)
    results: list[bytes] = []
    winners: list[Path] = []

    def create(n: int) -> None:
        start.wait()
        results.append(state.secret(MOCK_SECRET, lambda: b"%d" % n, on_create=winners.append))

    threads = [threading.Thread(target=create, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(set(results)) == 1
    assert results[0] == state.path.joinpath(MOCK_SECRET).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [MOCK_SECRET]


def test_create_private_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "file"
    assert create_private(path, b"one")
    assert not create_private(path, b"two")
    assert path.read_bytes() == b"one"


def test_write_private_replaces_a_readable_file(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600


def test_private_dir_is_0700(tmp_path: Path, umask: int) -> None:
    assert mode(private_dir(tmp_path / "a" / "b")) == 0o700


def test_the_catalog_and_its_wal_files_are_0600(tmp_path: Path, umask: int) -> None:
    state = StateDir(tmp_path)
    catalog = Catalog(state.catalog)
    try:
        catalog.add_endpoint("e", "local", None, "app", "SCRAM-SHA-256$4096:c2FsdA==$a:b")
        files = sorted(tmp_path.iterdir())
        assert [p.name for p in files] == [
            "catalog.sqlite3",
            "catalog.sqlite3-shm",
            "catalog.sqlite3-wal",
        ]
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        catalog.close()


def test_the_self_signed_pair_is_private(tmp_path: Path, umask: int) -> None:
    state = StateDir(tmp_path)
    cert, key = ensure_self_signed(state)
    assert (cert, key) == (state.tls_cert, state.tls_key)
    assert mode(state.tls_dir) == 0o700
    assert mode(cert) == mode(key) == 0o600
    assert ensure_self_signed(state) == (cert, key)


# -- an existing, loose state dir -----------------------------------------------------------


def _loose_layout(root: Path) -> StateDir:
    """A state dir as older pgwake versions left it: 0755 directories, 0644 files."""
    state = StateDir(root)
    root.mkdir(exist_ok=True)
    root.chmod(0o755)
    state.tls_dir.mkdir()
    state.tls_dir.chmod(0o755)
    for name in SECRET_FILES:
        (root / name).write_bytes(b"secret")
        (root / name).chmod(0o644)
    (root / "serve.log").write_text("not a secret")
    (root / "serve.log").chmod(0o644)
    return state


def test_check_names_every_loose_path_and_changes_nothing(tmp_path: Path) -> None:
    state = _loose_layout(tmp_path / "state")
    loose = {problem.path: (problem.mode, problem.wanted) for problem in state.check()}
    assert loose == {
        state.path: (0o755, 0o711),
        state.tls_dir: (0o755, 0o700),
        **{state.path / name: (0o644, 0o600) for name in SECRET_FILES},
    }
    assert mode(state.path) == 0o755
    assert mode(state.catalog) == 0o644


def test_ensure_tightens_a_loose_state_dir_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _loose_layout(tmp_path / "state")
    with caplog.at_level(logging.WARNING, logger="pgwake.state_dir"):
        fixed = state.ensure()
    assert len(fixed) == 2 + len(SECRET_FILES)
    assert mode(state.path) == 0o711  # others may still pass through, never list
    assert mode(state.tls_dir) == 0o700
    for name in SECRET_FILES:
        assert mode(state.path / name) == 0o600, name
    assert mode(state.path / "serve.log") == 0o644  # not pgwake's secret
    assert state.check() == []
    assert state.ensure() == []  # nothing left to do: no second warning
    lines = [r.getMessage() for r in caplog.records]
    assert f"event=state_dir_permissions_tightened path={state.catalog} mode=0644 now=0600" in lines
    assert f"event=state_dir_permissions_tightened path={state.path} mode=0755 now=0711" in lines
    assert len(lines) == len(fixed)


def test_ensure_never_widens(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.path.mkdir(mode=0o700)
    state.path.chmod(0o700)
    create_private(state.path / ADMIN_TOKEN, b"token")
    (state.path / ADMIN_TOKEN).chmod(0o400)
    assert state.ensure() == []
    assert mode(state.path) == 0o700
    assert mode(state.path / ADMIN_TOKEN) == 0o400


def _refuse_chmod(path: Path, mode: int) -> None:
    """``chmod`` of a file another user owns, for a pgwake that is not root."""
    raise PermissionError(1, "Operation not permitted")


def test_a_mode_that_cannot_be_fixed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _loose_layout(tmp_path / "state")
    monkeypatch.setattr(Path, "chmod", _refuse_chmod)
    with pytest.raises(UnsafeStateDir) as refused:
        state.ensure()
    message = str(refused.value)
    assert message.startswith("UNPROTECTED STATE DIR: ")
    assert f"{state.path} has mode 0755" in message
    assert "Operation not permitted" in message


def test_serve_refuses_to_start_on_an_unfixable_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _loose_layout(tmp_path / "state")
    monkeypatch.setattr(Path, "chmod", _refuse_chmod)
    server = Server(load_settings(state_dir=str(state.path), listen="127.0.0.1:0"))
    with pytest.raises(StartupFailure, match="UNPROTECTED STATE DIR"):
        asyncio.run(server.serve())
    assert not state.lock_file.exists()  # refused before taking the lock


def test_a_state_dir_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(UnsafeStateDir, match="not a directory"):
        StateDir(tmp_path / "state").ensure()


# -- readers create nothing ---------------------------------------------------------------


def test_readers_create_no_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    state = StateDir(missing)
    assert state.read_secret(ADMIN_TOKEN) is None
    assert not state.server_running()
    assert settings_admin_token(load_settings(state_dir=str(missing))) is None
    monkeypatch.setenv("PGWAKE_STATE_DIR", str(missing))
    monkeypatch.delenv("PGWAKE_TOKEN", raising=False)
    monkeypatch.delenv("PGWAKE_ADMIN_TOKEN", raising=False)
    assert client.PgwakeClient()._token is None
    assert not missing.exists()


def test_the_client_says_where_it_looked_for_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGWAKE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("PGWAKE_TOKEN", raising=False)
    monkeypatch.delenv("PGWAKE_ADMIN_TOKEN", raising=False)
    token, source = client.default_token()
    assert token is None
    assert str(tmp_path / ADMIN_TOKEN) in source
    assert "PGWAKE_TOKEN" in source
    assert "PGWAKE_ADMIN_TOKEN" in source
    StateDir(tmp_path).secret(ADMIN_TOKEN, lambda: b"pgwa_file\n")
    assert client.default_token() == ("pgwa_file", str(tmp_path / ADMIN_TOKEN))
    monkeypatch.setenv("PGWAKE_ADMIN_TOKEN", "pgwa_env")
    assert client.default_token() == ("pgwa_env", "PGWAKE_ADMIN_TOKEN")
    assert client.PgwakeClient().token_source == "PGWAKE_ADMIN_TOKEN"


def test_the_client_reads_the_generated_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path)
    state.secret(ADMIN_TOKEN, lambda: b"pgwa_generated\n")
    monkeypatch.setenv("PGWAKE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("PGWAKE_TOKEN", raising=False)
    monkeypatch.delenv("PGWAKE_ADMIN_TOKEN", raising=False)
    assert client.PgwakeClient()._token == "pgwa_generated"
    assert state.read_secret(ADMIN_TOKEN) == "pgwa_generated"


def test_an_empty_secret_reads_as_none(tmp_path: Path) -> None:
    create_private(tmp_path / ADMIN_TOKEN, b"\n")
    assert StateDir(tmp_path).read_secret(ADMIN_TOKEN) is None


def test_the_server_lock(tmp_path: Path, umask: int) -> None:
    state = StateDir(tmp_path)
    assert not state.server_running()
    assert not state.lock_file.exists()  # asking creates nothing
    lock = state.lock()
    assert lock is not None
    try:
        assert mode(state.lock_file) == 0o600
        assert state.server_running()
        assert state.server_pid() == os.getpid()  # the lock file is the server's pid file
        assert state.lock() is None
        assert state.server_pid() == os.getpid()  # a refused lock leaves the pid alone
    finally:
        lock.close()
    assert not state.server_running()
    assert state.server_pid() is None  # a pid nobody holds the lock for is no server's
    assert state.lock_file.read_text() == f"{os.getpid()}\n"
