"""README's shell examples, copied from README.md and run with bash as a new user would.

The one-minute tour runs from an empty directory, under a fresh HOME whose default state
dir does not exist yet: once as it is, and once after ``pgwake serve --demo`` (the command
at the top of README) has run there and been stopped with Ctrl-C. Every line's comment
says what its output shows, and the output must show it: after the comment's last ``: ``,
``…`` stands for anything, a run of spaces for any whitespace, and the default ports are
this test's own (free) ones. The SNI example runs the same way, its ``port=`` changed;
the three lines of Python run from another directory than the server's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgwake.state_dir import ADMIN_TOKEN, StateDir
from tests.integration.pgwake_fixture import free_port, make_state_dir, postgres_pids_under

ROOT = Path(__file__).resolve().parents[2]
#: The ports README's examples show, the defaults of listen, metrics_listen and api_listen.
DEFAULT_PORTS = (6432, 9187, 8080)
_STEP = re.compile(r"\n?@@step (\d+) rc=(\d+)\n")


def readme_block(*markers: str, language: str = "sh") -> list[str]:
    """The lines of the first ``language`` block after each of ``markers`` in turn in
    README.md."""
    readme = (ROOT / "README.md").read_text()
    start = 0
    for marker in markers:
        start = readme.index(marker, start)
    fence = f"```{language}\n"
    start = readme.index(fence, start) + len(fence)
    return readme[start : readme.index("```", start)].splitlines()


@dataclass
class NewUser:
    """A user with a fresh HOME and an empty working directory, and nothing else."""

    base: Path
    env: dict[str, str]
    #: README's port -> this user's.
    ports: dict[int, int]

    @property
    def cwd(self) -> Path:
        return self.base / "work"

    @property
    def state_dir(self) -> Path:
        """The default state dir this user's commands must all find."""
        return self.base / "home" / ".local" / "share" / "pgwake"

    def pgwake(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pgwake", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def new_user() -> NewUser:
    # Under /tmp with pgwake's own mode: as root, the compute user passes through it.
    base = make_state_dir("pgwake-readme-")
    (base / "home").mkdir()
    (base / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "XDG_"))}
    env["HOME"] = str(base / "home")
    if os.geteuid() == 0:
        # Root's default is /var/lib/pgwake, which belongs to the machine; XDG_DATA_HOME
        # moves it where any other user's default is: under the fresh HOME.
        env["XDG_DATA_HOME"] = str(base / "home" / ".local" / "share")
    # The `pgwake` of this checkout, as the install README's top command makes.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ports = {port: free_port() for port in DEFAULT_PORTS}
    for name, port in zip(("LISTEN", "METRICS_LISTEN", "API_LISTEN"), DEFAULT_PORTS, strict=True):
        env[f"PGWAKE_{name}"] = f"127.0.0.1:{ports[port]}"
    return NewUser(base, env, ports)


def cleanup(user: NewUser) -> list[int]:
    """Stop a server the example left running and kill leftover computes; return their
    pids (none, if the example cleaned up after itself)."""
    user.pgwake("stop")
    leftovers = postgres_pids_under(user.base)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(user.base, ignore_errors=True)
    return leftovers


@dataclass(frozen=True)
class Step:
    line: str
    output: str
    returncode: int

    @property
    def shows(self) -> str | None:
        """What the line's comment says its output shows (after its last ``: ``)."""
        match = re.match(r".*?\s+# (.*)$", self.line)
        return match.group(1).rpartition(": ")[2] if match else None


def run_lines(user: NewUser, lines: list[str], replace: dict[str, str] | None = None) -> list[Step]:
    """Run ``lines`` with bash as one script, as if pasted, and split the output by line.

    Between two lines the script only prints a marker with the status of the line
    before; ``replace`` changes text in the lines (nothing else does)."""
    script = ["exec 2>&1"]
    for number, line in enumerate(lines):
        for old, new in (replace or {}).items():
            line = line.replace(old, new)  # noqa: PLW2901 (the line as run)
        script += [line, f"printf '\\n@@step {number} rc=%d\\n' $?"]
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=user.cwd,
        env=user.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        timeout=240,
        check=False,
    )
    parts = _STEP.split(result.stdout)
    steps = []
    for index, line in enumerate(lines):
        output, marked, status = parts[3 * index : 3 * index + 3]
        assert int(marked) == index, result.stdout
        steps.append(Step(line, output, int(status)))
    return steps


def pattern(shows: str, ports: dict[int, int]) -> re.Pattern[str]:
    """A comment's words as a pattern for one line of output (see the module docstring)."""
    for default, port in ports.items():
        shows = shows.replace(f":{default}", f":{port}")
    parts = []
    for token in re.split(r"(…| +)", shows):
        if token == "…":
            parts.append(".*")
        elif token and not token.strip():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def check_steps(steps: list[Step], ports: dict[int, int]) -> None:
    for step in steps:
        assert step.returncode == 0, f"{step.line!r} failed:\n{step.output}"
        if step.shows is None:
            continue
        wanted = pattern(step.shows, ports)
        lines = [line.strip() for line in step.output.splitlines()]
        assert any(wanted.fullmatch(line) for line in lines), (
            f"{step.line!r} should show {step.shows!r}; it printed:\n{step.output}"
        )


def serve_demo_then_ctrl_c(user: NewUser) -> None:
    """README's first command, ``pgwake serve --demo``, stopped as Ctrl-C stops it."""
    process = subprocess.Popen(
        ["pgwake", "serve", "--demo"],
        cwd=user.cwd,
        env=user.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "event=listening" in line:
                break
        else:
            raise AssertionError("pgwake serve --demo did not start")
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "postgresql://app.demo:" in stdout


@pytest.mark.parametrize("before", ["fresh", "after serve --demo"])
def test_the_one_minute_tour_runs_as_pasted(before: str) -> None:
    lines = readme_block("## One-minute tour")
    assert any(line.startswith("pgwake stop") for line in lines), "the tour stops its server"
    user = new_user()
    try:
        if before == "after serve --demo":
            serve_demo_then_ctrl_c(user)
        else:
            assert not user.state_dir.exists()
        steps = run_lines(user, lines)
        check_steps(steps, user.ports)
        # The suspend the tour shows was the idle timer's, and the state dir the default.
        log = (user.state_dir / "serve.log").read_text()
        idle_suspend = r"event=transition endpoint=tour from=running .*reason=idle( |$)"
        assert re.search(idle_suspend, log, re.M)
        assert "Traceback" not in log
        assert list(user.cwd.iterdir()) == []  # no ./.pgwake, nothing else
        # `pgwake stop` returned once the server was gone, its computes suspended.
        assert user.pgwake("status").returncode == 3
        assert postgres_pids_under(user.base) == []
    finally:
        leftovers = cleanup(user)
    assert leftovers == []


def test_the_sni_example_routes_by_server_name() -> None:
    lines = readme_block("## Naming the endpoint", "**Trying SNI on one machine.**")
    assert any("sslmode=require" in line and line.startswith("psql") for line in lines)
    user = new_user()
    try:
        steps = run_lines(user, lines, replace={"port=6432": f"port={user.ports[6432]}"})
        check_steps(steps, user.ports)
        psql = next(step for step in steps if step.line.startswith("psql"))
        assert "(1 row)" in psql.output
        # Nothing but the TLS server name named the endpoint: no options, a plain user.
        log = (user.state_dir / "serve.log").read_text()
        assert re.search(r"event=routed .*endpoint=sni via=sni tls=True", log), log
    finally:
        leftovers = cleanup(user)
    assert leftovers == []


def test_the_three_lines_of_python_work_from_any_directory() -> None:
    """No token and no state dir given: the client finds the token the server made in the
    default state dir, from wherever it runs; a wrong one gets a 401 naming its file."""
    code = "\n".join(readme_block("From Python, creating a database", language="python"))
    user = new_user()
    elsewhere = user.base / "elsewhere"
    elsewhere.mkdir()
    env = {**user.env, "PGWAKE_API_URL": f"http://127.0.0.1:{user.ports[8080]}"}
    try:
        served = user.pgwake("serve", "--detach")
        assert served.returncode == 0, served.stdout + served.stderr
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert re.match(r"postgresql://app\.[a-z0-9-]+:", result.stdout), result.stdout

        other = StateDir(user.base / "other-state")
        other.ensure()
        other.secret(ADMIN_TOKEN, lambda: b"pgwa_not-this-servers-token\n")
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=elsewhere,
            env={**env, "PGWAKE_STATE_DIR": str(other.path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1
        assert "ApiError: 401 unauthorized: " in result.stderr
        assert f"(token: {other.admin_token})" in result.stderr
    finally:
        leftovers = cleanup(user)
    assert leftovers == []
