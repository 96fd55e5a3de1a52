"""Shared test configuration: every test module starts with a clean environment."""

from __future__ import annotations

import os

#: CI sets it: the docker tests fail instead of skipping when the engine or images are missing.
REQUIRE_DOCKER = os.environ.get("PGWAKE_REQUIRE_DOCKER", "") not in ("", "0")

# Tests never read a developer's PGWAKE_* settings by accident.
for _name in [name for name in os.environ if name.startswith("PGWAKE_")]:
    del os.environ[_name]
