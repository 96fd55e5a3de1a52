"""``bench/install.sh`` installs PgBouncer without leaving it on pgwake's port 6432.

The script runs for real with stand-ins for apt-get, systemctl, service, update-rc.d and
python3 first on ``PATH``; each records how it was called. The stand-in apt-get runs the
policy-rc.d in place at install time, as invoke-rc.d does before starting a service.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "bench" / "install.sh"

_RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >>"$CALLS"
"""
# invoke-rc.d asks policy-rc.d before a postinst starts a service: 101 means "forbidden".
_APT_GET = """#!/bin/sh
echo "apt-get $*" >>"$CALLS"
if [ "$1" = install ]; then
    if [ -x "$POLICY_RC_D" ]; then
        "$POLICY_RC_D" pgbouncer start; echo "policy-rc.d pgbouncer start: $?" >>"$CALLS"
    else
        echo "policy-rc.d: none" >>"$CALLS"
    fi
fi
"""


def _run(tmp_path: Path, policy: Path) -> list[str]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in ("systemctl", "service", "update-rc.d", "python3"):
        (fake_bin / name).write_text(_RECORDER)
    (fake_bin / "apt-get").write_text(_APT_GET)
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "POLICY_RC_D": str(policy),
    }
    subprocess.run(["sh", str(SCRIPT)], env=env, check=True, timeout=60, capture_output=True)
    return calls.read_text().splitlines()


@pytest.mark.parametrize("existing", [None, "#!/bin/sh\nexit 0\n"])
def test_no_service_starts_while_packages_install(tmp_path: Path, existing: str | None) -> None:
    policy = tmp_path / "policy-rc.d"
    if existing is not None:
        policy.write_text(existing)
        policy.chmod(0o755)
    calls = _run(tmp_path, policy)
    install = calls.index(next(c for c in calls if c.startswith("apt-get install")))
    assert "pgbouncer" in calls[install].split()
    assert calls[install + 1] == "policy-rc.d pgbouncer start: 101"
    # PgBouncer is stopped and disabled for good, whatever the init system.
    if Path("/run/systemd/system").is_dir():
        assert "systemctl disable --now pgbouncer.service" in calls
    else:
        assert "service pgbouncer stop" in calls
        assert "update-rc.d pgbouncer disable" in calls
    assert calls[-1].startswith("python3 -m pip install -e .[bench]")
    # The machine's own policy (or none) is back.
    if existing is None:
        assert not policy.exists()
    else:
        assert policy.read_text() == existing
        assert stat.S_IMODE(policy.stat().st_mode) == 0o755
    assert not Path(f"{policy}.pgwake-bench").exists()
