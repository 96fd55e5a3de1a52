"""Facts read from a data directory (postmaster.pid) and from a failed start's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgwake.compute.pgdata import PostmasterPid, read_postmaster_pid, start_failure_reason


def write_pid_file(data_dir: Path, status: str = "ready   ") -> None:
    # pidfile.h: pid, data dir, start time, port, socket dir, listen address, shmem key,
    # status (padded with spaces by the postmaster).
    lines = [
        "12345",
        str(data_dir),
        "1714550400",
        "54321",
        "/tmp/pgwake-sockets",
        "127.0.0.1",
        "  5432001   2",
        status,
    ]
    (data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_read_postmaster_pid(tmp_path: Path) -> None:
    write_pid_file(tmp_path)
    assert read_postmaster_pid(tmp_path) == PostmasterPid(
        pid=12345, socket_dir="/tmp/pgwake-sockets", port=54321, status="ready"
    )


@pytest.mark.parametrize("status", ["starting", "stopping", "standby"])
def test_read_postmaster_pid_status(tmp_path: Path, status: str) -> None:
    write_pid_file(tmp_path, status)
    pid_file = read_postmaster_pid(tmp_path)
    assert pid_file is not None
    assert pid_file.status == status


def test_missing_pid_file(tmp_path: Path) -> None:
    assert read_postmaster_pid(tmp_path) is None
    assert read_postmaster_pid(tmp_path / "no-such-dir") is None


def test_pid_file_not_written_yet(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text("")
    assert read_postmaster_pid(tmp_path) is None


def test_pid_file_half_written(tmp_path: Path) -> None:
    # The postmaster writes the first lines before it listens: no port or status yet.
    (tmp_path / "postmaster.pid").write_text(f"12345\n{tmp_path}\n1714550400\n")
    assert read_postmaster_pid(tmp_path) == PostmasterPid(
        pid=12345, socket_dir=None, port=None, status=None
    )


def test_pid_file_garbage(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text("not a pid\n")
    assert read_postmaster_pid(tmp_path) is None


def test_start_failure_reason_for_a_config_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "endpoints" / "demo" / "data"
    conf = data_dir / "postgresql.conf"
    log = (
        f'2024-05-01 10:00:00.000 UTC [4711] LOG:  syntax error in file "{conf}" line 3, '
        'near token "x"\n'
        f'2024-05-01 10:00:00.001 UTC [4711] FATAL:  configuration file "{conf}" '
        "contains errors\n"
    )
    assert start_failure_reason(log, data_dir) == (
        'configuration file "<data>/postgresql.conf" contains errors '
        '(syntax error in file "<data>/postgresql.conf" line 3, near token "x")'
    )


def test_start_failure_reason_for_a_port_in_use(tmp_path: Path) -> None:
    log = (
        '2024-05-01 10:00:00.000 UTC [4711] LOG:  could not bind IPv4 address "127.0.0.1": '
        "Address already in use\n"
        "2024-05-01 10:00:00.000 UTC [4711] HINT:  Is another postmaster already running on "
        "port 5432? If not, wait a few seconds and retry.\n"
        '2024-05-01 10:00:00.000 UTC [4711] WARNING:  could not create listen socket for "x"\n'
        "2024-05-01 10:00:00.000 UTC [4711] FATAL:  could not create any TCP/IP sockets\n"
        "2024-05-01 10:00:00.001 UTC [4711] LOG:  database system is shut down\n"
    )
    # The line just before the FATAL is a HINT/WARNING, so the FATAL stands alone.
    assert start_failure_reason(log, tmp_path) == "could not create any TCP/IP sockets"


def test_start_failure_reason_without_fatal(tmp_path: Path) -> None:
    log = "2024-05-01 10:00:00.000 UTC [4711] LOG:  starting PostgreSQL 16.2\n"
    assert start_failure_reason(log, tmp_path) == (
        "postgres exited during start without a FATAL message"
    )


def test_start_failure_reason_is_bounded(tmp_path: Path) -> None:
    log = "FATAL:  " + "x" * 5000 + "\n"
    assert len(start_failure_reason(log, tmp_path)) <= 400
